"""The seed's validity check of CURE (Moosavi-Dezfooli, Fawzi, Uesato & Frossard, CVPR 2019, Sec. 5), after
Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial risk and the dangers of evaluating against weak attacks"
(ICML 2018): a defence that only masks gradients looks robust to PGD but not to a gradient-free attack.

For the shipped ``lenet-fmnist-cure`` and ``lenet-fmnist-at`` (and the standard ``lenet-fmnist`` as a reference),
robust accuracy at L∞ ε under PGD (40 steps, 2.5·ε/40, random start, 2 restarts), the standard cascade
(APGD-CE → APGD-T → FAB-T → Square, per-sample worst case) and SPSA (gradient-free, marginal loss), side by side on
the same images (200 by default; SPSA with 64 samples per step, 100 steps, lr 0.01); the last column is the
per-sample worst case over all three. Uesato's point: when SPSA and the
cascade find no more than PGD, the robustness is not a gradient-masking artefact. The cascade's alarms are
reported too.

    python repro/cure_validity.py            # full: writes repro/results/cure_validity.md (minutes, 2 cores)
    python repro/cure_validity.py --quick    # seconds: mlp-digits, 20 images, few iterations
"""

from __future__ import annotations

import sys
import time

import torch
from _common import dataset_of, parser

import georobust as gr
from georobust import registry
from georobust.evaluation.cascade import cascade

MODELS = ("lenet-fmnist-cure", "lenet-fmnist-at", "lenet-fmnist")


def evaluate_model(name: str, n: int, eps: float, seed: int, quick: bool) -> dict:
    clf = gr.pretrained(name)
    x, y = gr.data.load(dataset_of(name), "test", limit=n)
    correct = gr.predict(clf, x) == y
    t = time.perf_counter()
    steps = 5 if quick else 40
    r_pgd = gr.pgd(clf, x, y, eps=eps, norm="inf", steps=steps, restarts=1 if quick else 2, seed=seed)
    t_pgd = time.perf_counter() - t
    t = time.perf_counter()
    opts = ({"apgd-ce": {"steps": 3}, "apgd-t": {"steps": 3}, "fab-t": {"steps": 3}, "square": {"max_queries": 50}}
            if quick else None)
    c = cascade(clf, x, y, eps=eps, norm="inf", preset="standard", options=opts, seed=seed, model_name=name)
    t_casc = time.perf_counter() - t
    t = time.perf_counter()
    spsa = registry.attacks.get("spsa").fn
    r_spsa = spsa(clf, x, y, eps=eps, norm="inf", seed=seed,
                  **({"steps": 5, "samples": 16} if quick else {"steps": 100, "samples": 64}))
    t_spsa = time.perf_counter() - t
    rob_pgd = correct & ~r_pgd.success
    rob_spsa = correct & ~r_spsa.success
    worst = rob_pgd & rob_spsa & c.robust
    return {"model": name, "n": int(x.shape[0]), "eps": eps, "clean": float(correct.double().mean()),
            "pgd": float(rob_pgd.double().mean()), "cascade": c.robust_accuracy, "spsa": float(rob_spsa.double().mean()),
            "worst": float(worst.double().mean()), "seconds": {"pgd": t_pgd, "cascade": t_casc, "spsa": t_spsa},
            "alarms": [a["name"] for a in c.alarms if a.get("fired")],
            "broken_only_by_spsa": int((rob_pgd & c.robust & ~rob_spsa).sum())}


def table(rows: list[dict]) -> str:
    out = ["| model | ε | clean | PGD-40 ×2 | standard cascade | SPSA | worst case of the three | only SPSA broke | "
           "alarms | seconds (PGD / cascade / SPSA) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        out.append(f"| {r['model']} | {r['eps']:g} | {r['clean']:.3f} | {r['pgd']:.3f} | {r['cascade']:.3f} | "
                   f"{r['spsa']:.3f} | {r['worst']:.3f} | {r['broken_only_by_spsa']} | "
                   f"{', '.join(r['alarms']) or 'none'} | {s['pgd']:.0f} / {s['cascade']:.0f} / {s['spsa']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=None, help="test images per model (default 200; quick 20)")
    ap.add_argument("--eps", type=float, default=None, help="L∞ budget (default 0.1; quick 0.05)")
    ap.add_argument("--models", nargs="+", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    models = a.models or (["mlp-digits"] if a.quick else list(MODELS))
    n = a.n or (20 if a.quick else 200)
    eps = a.eps or (0.05 if a.quick else 0.1)
    rows = [evaluate_model(m, n, eps, a.seed, a.quick) for m in models]
    text = table(rows)
    print(text)
    if not a.quick:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "cure_validity.md").write_text(
            "# CURE validity: PGD vs the standard cascade vs SPSA\n\n" + text + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
