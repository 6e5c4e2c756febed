"""Benchmark: georobust's standard cascade vs torchattacks' ``AutoAttack(version="standard")`` on the same model,
images and budget (Croce & Hein, ICML 2020: APGD-CE → APGD-T → FAB-T → Square).

Default (full): ``lenet-fmnist-at`` and ``lenet-fmnist-cure``, the first 1,000 Fashion-MNIST test images, L∞
ε = 0.1, 2 CPU threads, all in one process. For each model it prints the robust accuracy and wall time of:

* georobust's cascade with the reference settings (APGD 100 iterations, FAB 100, Square 5,000 queries);
* georobust's cascade with torchattacks' settings (torchattacks' ``AutoAttack`` builds APGD, APGD-T and FAB with
  their default ``steps=10``), the same work as the peer;
* torchattacks ``AutoAttack(version="standard")``;

and the per-attack seconds of both. Robust accuracy is the per-sample worst case for all of them (torchattacks'
``MultiAttack`` also attacks only what the previous attacks left). The goal: ours ≤ theirs + 0.2 points, and
faster (early stopping per sample, batching).

    python benchmarks/autoattack.py            # full (minutes)
    python benchmarks/autoattack.py --quick    # seconds: mlp-digits, 20 images, few iterations
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import georobust as gr
from georobust.evaluation.cascade import cascade


def _peer(clf, x, y, *, eps: float, n_classes: int, seed: int, quick: bool) -> dict:
    import torchattacks

    atk = torchattacks.AutoAttack(clf, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed)
    if quick:  # shrink the peer's work as ours is shrunk
        for a in atk._autoattack.attacks:
            if hasattr(a, "steps"):
                a.steps = 3
            if hasattr(a, "n_queries"):
                a.n_queries = 50
    per: dict[str, float] = {}
    names = {"APGD": "apgd-ce", "APGDT": "apgd-t", "FAB": "fab-t", "Square": "square"}
    for a in atk._autoattack.attacks:   # time each member attack (the peer reports no per-attack timings)
        a.forward = _timed(a.forward, per, names.get(type(a).__name__, type(a).__name__))
    t = time.perf_counter()
    xa = atk(x, y)
    sec = time.perf_counter() - t
    return {"method": "torchattacks AutoAttack", "seconds": sec, "per_attack": per,
            "robust_accuracy": float((gr.predict(clf, xa) == y).double().mean())}


def _timed(fn, per: dict, name: str):
    def wrapped(*args, **kw):
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            per[name] = per.get(name, 0.0) + time.perf_counter() - t
    return wrapped


def run(model: str, data: str, n: int, *, eps: float, seed: int, quick: bool) -> list[dict]:
    clf = gr.load_model(model)
    x, y = gr.data.load(data, "test", limit=n)
    k = int(clf(x[:1]).shape[1])
    rows = []
    settings = [("georobust cascade (reference: 100 it., 5000 queries)", None),
                ("georobust cascade (torchattacks' settings: 10 it.)",
                 {"apgd-ce": {"steps": 10}, "apgd-t": {"steps": 10}, "fab-t": {"steps": 10}})]
    if quick:
        settings = [("georobust cascade (quick)", {"apgd-ce": {"steps": 3}, "apgd-t": {"steps": 3},
                                                   "fab-t": {"steps": 3}, "square": {"max_queries": 50}})]
    for label, opts in settings:
        t = time.perf_counter()
        c = cascade(clf, x, y, eps=eps, norm="inf", preset="standard", options=opts, seed=seed, model_name=model)
        rows.append({"method": label, "seconds": time.perf_counter() - t, "robust_accuracy": c.robust_accuracy,
                     "per_attack": {a["attack"]: a["seconds"] for a in c.per_attack}})
    rows.append(_peer(clf, x, y, eps=eps, n_classes=k, seed=seed, quick=quick))
    peer = rows[-1]["seconds"]
    for r in rows:
        r.update(model=model, n=int(x.shape[0]), eps=eps, speedup=peer / r["seconds"])
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | method | robust accuracy | seconds | speed-up vs torchattacks | per attack (s) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{a} {s:.1f}" for a, s in r.get("per_attack", {}).items()) or "—"
        out.append(f"| {r['model']} | {r['method']} | {r['robust_accuracy']:.3f} | {r['seconds']:.1f} | "
                   f"{r['speedup']:.2f}× | {per} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="mlp-digits, 20 images, few iterations (seconds)")
    p.add_argument("--models", nargs="+", default=None, help="default zoo:lenet-fmnist-at zoo:lenet-fmnist-cure")
    p.add_argument("-n", type=int, default=None, help="number of test images (default 1000, quick 20)")
    p.add_argument("--eps", type=float, default=None, help="L∞ budget (default 0.1; quick 0.05)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    models = a.models or (["zoo:mlp-digits"] if a.quick else ["zoo:lenet-fmnist-at", "zoo:lenet-fmnist-cure"])
    n = a.n or (20 if a.quick else 1000)
    eps = a.eps or (0.05 if a.quick else 0.1)
    head = f"AutoAttack benchmark: n={n}, L∞ eps={eps:g}, {a.threads} threads, torch {torch.__version__}"
    rows = []
    for m in models:
        data = gr.models.manifest()[m.removeprefix("zoo:")]["data"]
        rows += run(m, data, n, eps=eps, seed=a.seed, quick=a.quick)
        text = table(rows)
        if a.out:   # after each model: a long run that is stopped keeps the models it finished
            with open(a.out, "w") as f:
                f.write(head + "\n" + text + "\n")
    print(head)
    print(text)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
