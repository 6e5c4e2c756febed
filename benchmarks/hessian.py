"""Benchmark: top-10 eigenvalues of the input Hessian of the loss, batched Lanczos vs dense Hessians.

For ``n`` Fashion-MNIST test images on ``lenet-fmnist`` (issue 4): georobust's batched Lanczos over HVPs
(:func:`georobust.geometry.hessian.hessian_eigs`) against ``torch.autograd.functional.hessian`` per image
followed by ``torch.linalg.eigvalsh``. Prints seconds, the ratio and the largest relative eigenvalue error
(on the top eigenvalue, and on all top-10 eigenvalues above 1e-6 of the top one).

    python benchmarks/hessian.py            # 100 images
    python benchmarks/hessian.py --quick    # 4 images on mlp-digits, seconds
"""

from __future__ import annotations

import argparse
import time

import torch

from georobust import data, pretrained
from georobust.geometry.hessian import dense_hessian, hessian_eigs, loss_fn


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lenet-fmnist")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None, help="Lanczos steps (default: the library's)")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                    help="both methods run in this precision (float32 Hessians of saturated softmaxes are "
                         "below round-off: the dense reference itself is noise there)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4 images on mlp-digits")
    a = ap.parse_args(argv)
    if a.quick:
        a.model, a.data, a.n = "mlp-digits", "digits", 4
    torch.set_num_threads(a.threads)
    clf = pretrained(a.model)
    x, y = data.load(a.data, "test", limit=a.n)
    if a.dtype == "float64":
        clf, x = clf.double(), x.double()
    fn = loss_fn(clf, y)

    t0 = time.perf_counter()
    eig = hessian_eigs(fn, x, k=a.k, steps=a.steps, seed=0)
    t_lanczos = time.perf_counter() - t0

    t0 = time.perf_counter()
    h = dense_hessian(fn, x)
    ref = torch.linalg.eigvalsh(h.double()).flip(1)[:, : a.k]
    t_dense = time.perf_counter() - t0

    got = eig.values.double()
    top_err = ((got[:, 0] - ref[:, 0]).abs() / ref[:, 0].abs().clamp_min(1e-30)).max().item()
    big = ref.abs() > 1e-4 * ref[:, :1].abs()
    all_err = ((got - ref).abs() / ref.abs().clamp_min(1e-30))[big].max().item()
    abs_err = ((got - ref).abs() / ref[:, :1].abs().clamp_min(1e-30)).max().item()
    out = {"model": a.model, "n": a.n, "k": a.k, "d": x[0].numel(), "lanczos_s": t_lanczos, "dense_s": t_dense,
           "speedup": t_dense / t_lanczos, "top_rel_err": top_err, "topk_rel_err": all_err,
           "topk_err_rel_to_top": abs_err, "matvecs": eig.matvecs, "dtype": str(x.dtype).removeprefix("torch.")}
    print(f"input Hessian of the CE loss, top-{a.k} eigenvalues, {a.model}, n={a.n}, d={out['d']}, "
          f"{out['dtype']}, {a.threads} threads")
    print("| method | seconds | ratio | max rel. err top eigenvalue | max rel. err top-k (λ > 1e-4 λ₁) |"
          " max |err|/λ₁ top-k |")
    print("|---|---|---|---|---|---|")
    print(f"| georobust batched Lanczos ({eig.matvecs} HVPs) | {t_lanczos:.3f} | {out['speedup']:.1f}× | "
          f"{top_err:.2e} | {all_err:.2e} | {abs_err:.2e} |")
    print(f"| dense autograd.functional.hessian + eigvalsh | {t_dense:.3f} | 1× | (reference) | | |")
    return out


if __name__ == "__main__":
    main()
