"""SparseFool: georobust (batched, closed-form greedy solver) vs torchattacks 3.5.1 ``SparseFool`` (per image,
Python loop over coordinates) on the same LeNet / Fashion-MNIST test images, same λ and steps.

Target (issue 6): ≥ 5× faster at equal or higher success and equal or fewer changed pixels.

    python benchmarks/sparsefool.py           # full: 100 images, 2 threads
    python benchmarks/sparsefool.py --quick   # 5 images, seconds
"""

from __future__ import annotations

import argparse
import time

import torch

from georobust import data, pretrained
from georobust.attacks.sparsefool import changed_pixels, sparsefool
from georobust.models import manifest


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 images")
    ap.add_argument("-n", type=int, default=100, help="images (full mode)")
    ap.add_argument("--model", default="lenet-fmnist")
    ap.add_argument("--lam", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torchattacks

    n = 5 if args.quick else args.n
    clf = pretrained(args.model)
    x, y = data.load(manifest()[args.model]["data"], "test", limit=n)
    with torch.inference_mode():
        correct = clf(x).argmax(1) == y

    t0 = time.perf_counter()
    res = sparsefool(clf, x, y, lambda_=args.lam, max_iter=args.steps, epsilon=0.02)
    t_ours = time.perf_counter() - t0

    atk = torchattacks.SparseFool(clf, steps=args.steps, lam=args.lam, overshoot=0.02)
    t0 = time.perf_counter()
    xa = atk(x, y)
    t_ta = time.perf_counter() - t0
    with torch.inference_mode():
        ta_success = (clf(xa).argmax(1) != y) | ~correct
    xa = torch.where(correct.view(-1, 1, 1, 1), xa, x)

    def row(name, secs, success, x_adv):
        ok = success & correct
        px = changed_pixels(x, x_adv)[ok]
        l0 = (x_adv - x).flatten(1).ne(0).sum(1).double()[ok]
        l1 = (x_adv - x).flatten(1).abs().sum(1).double()[ok]
        return {"name": name, "seconds": secs, "success": float(success.double().mean()),
                "median_pixels_pct": 100 * float(px.median()) if ok.any() else float("nan"),
                "median_l0": float(l0.median()) if ok.any() else float("nan"),
                "median_l1": float(l1.median()) if ok.any() else float("nan")}

    rows = [row("georobust", t_ours, res.success, res.x_adv), row("torchattacks 3.5.1", t_ta, ta_success, xa)]
    print(f"SparseFool on {args.model}, {n} test images (λ={args.lam}, steps={args.steps}, {args.threads} threads; "
          f"shared CPU, seconds are noisy, the ratio is measured in one process)")
    print(f"| {'attack':20s} | seconds | success | median % pixels | median L0 | median L1 |")
    print("|" + "-" * 22 + "|---------|---------|-----------------|-----------|-----------|")
    for r in rows:
        print(f"| {r['name']:20s} | {r['seconds']:7.2f} | {r['success']:7.3f} | {r['median_pixels_pct']:15.2f} "
              f"| {r['median_l0']:9.1f} | {r['median_l1']:9.3f} |")
    speed = t_ta / max(t_ours, 1e-9)
    print(f"speed-up: {speed:.1f}x (target >= 5x at equal or higher success and equal or fewer pixels)")
    return {"rows": rows, "speedup": speed, "n": n}


if __name__ == "__main__":
    main()
