"""Benchmark: georobust PGD vs torchattacks PGD / PGDL2 on the same model, inputs and settings.

Default (full): lenet-fmnist, the first 1,000 Fashion-MNIST test images, L∞ eps=0.1 and L2 eps=1.0, 10 and
40 steps, α = 2.5·eps/steps, random start, one restart, 2 CPU threads, all in one process. For each setting
it prints seconds, robust accuracy and the speed ratio (torchattacks seconds / georobust seconds), for
georobust with its default early stop and with ``early_stop=False`` (every sample runs every step, the
same work as torchattacks). torchattacks returns its last iterate; georobust the per-sample worst
iterate, so its robust accuracy can only be equal or lower.

    python benchmarks/pgd.py            # full
    python benchmarks/pgd.py --quick    # seconds: 100 images, 5 steps
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import georobust as gr
from georobust.attacks.pgd import pgd


def _load(model: str, data: str, n: int):
    clf = gr.load_model(model)
    x, y = gr.data.load(data, "test", limit=n)
    return clf, x, y


def run(clf, x, y, *, norm: str, eps: float, steps: int, seed: int = 0) -> list[dict]:
    """Time georobust (early stop on and off) and torchattacks on one setting; return one row per method."""
    import torchattacks

    alpha = 2.5 * eps / steps
    rows = []
    for label, early in (("georobust", True), ("georobust (no early stop)", False)):
        t = time.perf_counter()
        r = pgd(clf, x, y, eps=eps, norm=norm, steps=steps, step_size=alpha, seed=seed, early_stop=early)
        sec = time.perf_counter() - t
        rows.append({"method": label, "seconds": sec, "robust_accuracy": float((~r.success).double().mean())})
    if norm == "inf":
        atk = torchattacks.PGD(clf, eps=eps, alpha=alpha, steps=steps, random_start=True)
    else:
        atk = torchattacks.PGDL2(clf, eps=eps, alpha=alpha, steps=steps, random_start=True)
    torch.manual_seed(seed)
    t = time.perf_counter()
    xa = atk(x, y)
    sec = time.perf_counter() - t
    acc = float((gr.predict(clf, xa) == y).double().mean())
    rows.append({"method": "torchattacks " + ("PGD" if norm == "inf" else "PGDL2"), "seconds": sec,
                 "robust_accuracy": acc})
    base = rows[0]["seconds"]
    for row in rows:
        row.update(norm=norm, eps=eps, steps=steps, alpha=alpha, ratio=row["seconds"] / base)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| norm | eps | steps | method | seconds | robust accuracy | time / georobust |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| L{'∞' if r['norm'] == 'inf' else '2'} | {r['eps']:g} | {r['steps']} | {r['method']} | "
                   f"{r['seconds']:.2f} | {r['robust_accuracy']:.3f} | {r['ratio']:.2f}× |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100 images, 5 steps (seconds)")
    p.add_argument("--model", default="zoo:lenet-fmnist")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("-n", type=int, default=None, help="number of test images (default 1000, quick 100)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="default 10 40 (quick: 5)")
    p.add_argument("--eps-inf", type=float, default=0.1)
    p.add_argument("--eps-2", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    n = a.n or (100 if a.quick else 1000)
    steps = a.steps or ([5] if a.quick else [10, 40])
    clf, x, y = _load(a.model, a.data, n)
    print(f"PGD benchmark: {a.model} on {a.data}, n={x.shape[0]}, {a.threads} threads, torch {torch.__version__}, "
          f"clean accuracy {float((gr.predict(clf, x) == y).double().mean()):.3f}")
    rows = []
    for norm, eps in (("inf", a.eps_inf), ("2", a.eps_2)):
        for s in steps:
            rows += run(clf, x, y, norm=norm, eps=eps, steps=s, seed=a.seed)
    text = table(rows)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
