"""CURE vs adversarial training at small scale (Moosavi-Dezfooli, Fawzi, Uesato & Frossard, "Robustness via
curvature regularization, and vice versa", CVPR 2019, Table 1 / Fig. 5 and the training-cost claim).

Every model is fine-tuned from the shipped standard ``zoo:lenet-fmnist`` on the same Fashion-MNIST images for
the same epochs (as the paper fine-tunes): standard (more cross-entropy), PGD-AT (L∞, eps 0.1, 10 steps,
Madry et al. 2018), fast-AT (FGSM + random init, Wong et al. 2020), CURE, LLR (Qin et al. 2019). For each:
clean accuracy (whole test split); robust accuracy under PGD-50 with restarts at eps 0.05 / 0.1 / 0.15;
DeepFool median L2 and mean ρ_adv; the curvature profile (top eigenvalues of the input Hessian of the loss,
batched Lanczos); wall-clock seconds per training epoch, all measured in this one run. Then the trade-off:
clean vs robust accuracy over eps (AT) and γ (CURE).

    python repro/cure_vs_at.py            # full: writes repro/results/cure_vs_at.md + PNGs (≈ 10-15 min, 2 cores)
    python repro/cure_vs_at.py --quick    # seconds: tiny sizes, prints the table only
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from georobust import data, fit, plots, pretrained
from georobust.attacks.deepfool import deepfool
from georobust.attacks.pgd import pgd
from georobust.geometry.hessian import hessian_eigs, loss_fn

ROOT = Path(__file__).resolve().parents[1]

EPS_LIST = (0.05, 0.1, 0.15)


def objectives(args) -> dict[str, tuple[str, dict]]:
    return {
        "standard": ("standard", {}),
        "PGD-AT": ("adversarial", {"eps": 0.1, "steps": 10}),
        "fast-AT": ("fast-adversarial", {"eps": 0.1}),
        "CURE": ("cure", {"gamma": args.gamma, "h": args.h, "h_warmup": 0.25}),
        "LLR": ("llr", {"eps": 0.1}),
    }


def finetune(base, train, name, opts, args):
    model = copy.deepcopy(base)
    hist = fit(model, train, name, objective_options=opts, epochs=args.epochs, lr=args.lr, schedule="constant",
               batch_size=args.batch_size, seed=args.seed)
    return model, [e["seconds"] for e in hist.epochs]


def clean_accuracy(model, x, y):
    with torch.inference_mode():
        return float(torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).eq(y).float().mean())


def evaluate(model, test, ev, args) -> dict:
    xe, ye = ev
    row = {"clean": clean_accuracy(model, *test)}
    for eps in EPS_LIST:
        r = pgd(model, xe, ye, eps=eps, norm="inf", steps=args.pgd_steps, restarts=args.restarts, seed=args.seed)
        row[f"pgd@{eps:g}"] = r.robust_accuracy([eps], "inf")[0]
    r = deepfool(model, xe, None)
    ok = r.success
    row["df_l2"] = float(r.l2[ok].median()) if ok.any() else float("nan")
    row["df_rho"] = float(r.rho[ok].mean()) if ok.any() else float("nan")
    xh, yh = xe[:args.hessian_n], ye[:args.hessian_n]
    vals = hessian_eigs(loss_fn(model, yh), xh, k=args.hessian_k, seed=args.seed).values  # (N, k)
    prof = vals.abs().sort(1, descending=True).values.mean(0)  # mean over samples, per rank
    row["profile"] = [float(v) for v in prof]
    row["lam_max"] = float(prof[0])
    return row


def tradeoff(base, train, ev, args, trained: dict) -> dict:
    """Clean and PGD robust accuracy (eps 0.1) over AT's eps and CURE's γ, same training budget for each;
    ``trained[(label, strength)]`` are models already trained above (reused, not retrained)."""
    xe, ye = ev
    curves: dict[str, list] = {"PGD-AT (eps)": [], "CURE (γ)": []}
    for label, name, key, values, extra in (
        ("PGD-AT (eps)", "adversarial", "eps", args.at_eps, {"steps": 10}),
        ("CURE (γ)", "cure", "gamma", args.cure_gammas, {"h": args.h, "h_warmup": 0.25}),
    ):
        for v in values:
            model = trained.get((label, v)) or finetune(base, train, name, {key: v, **extra}, args)[0]
            r = pgd(model, xe, ye, eps=0.1, norm="inf", steps=args.pgd_steps, restarts=1, seed=args.seed)
            curves[label].append((v, clean_accuracy(model, xe, ye), r.robust_accuracy([0.1], "inf")[0]))
    return curves


def table(rows: dict, secs: dict) -> str:
    at = min(secs["PGD-AT"])
    head = ["objective", "clean acc"] + [f"PGD-50 acc @{e:g}" for e in EPS_LIST] + \
        ["DeepFool median L2", "DeepFool ρ", "λ_max (mean)", "s/epoch", "AT cost ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        s = min(secs[name])
        cells = [name, f"{r['clean']:.4f}"] + [f"{r[f'pgd@{e:g}']:.3f}" for e in EPS_LIST] + [
            f"{r.get('df_l2', float('nan')):.3f}", f"{r.get('df_rho', float('nan')):.4f}",
            f"{r.get('lam_max', float('nan')):.3g}", f"{s:.1f}", f"{at / s:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds; no files written")
    p.add_argument("--train", type=int, default=8000, help="training images (first N of the train split)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eval", type=int, default=250, help="test samples attacked")
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--hessian-n", type=int, default=100)
    p.add_argument("--hessian-k", type=int, default=5)
    p.add_argument("--gamma", type=float, default=4.0)
    p.add_argument("--h", type=float, default=3.0)
    p.add_argument("--at-eps", type=float, nargs="*", default=[0.05, 0.1, 0.15])
    p.add_argument("--cure-gammas", type=float, nargs="*", default=[0.01, 0.1, 1.0, 4.0])
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "repro" / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.eval, args.pgd_steps, args.restarts = 128, 20, 3, 1
        args.hessian_n, args.hessian_k, args.at_eps, args.cure_gammas = 2, 2, [0.1], [4.0]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    base = pretrained("lenet-fmnist")
    train = data.load("fashion-mnist", "train", limit=args.train)
    test = data.load("fashion-mnist", "test", limit=1000 if args.quick else None)
    ev = (test[0][:args.eval], test[1][:args.eval])

    rows, secs, trained = {}, {}, {}
    for label, (name, opts) in objectives(args).items():
        model, secs[label] = finetune(base, train, name, opts, args)
        if label == "PGD-AT":
            trained[("PGD-AT (eps)", 0.1)] = model
        if label == "CURE":
            trained[("CURE (γ)", args.gamma)] = model
        rows[label] = evaluate(model, test, ev, args)
        print(f"{label}: {rows[label]} ({min(secs[label]):.1f} s/epoch)", flush=True)
    curves = tradeoff(base, train, ev, args, trained)
    tab = table(rows, secs)
    print(tab)
    print("trade-off (strength, clean acc on the attacked subset, PGD robust acc @0.1):")
    for k, v in curves.items():
        print(f"  {k}: " + ", ".join(f"({s:g}: {c:.3f}, {r:.3f})" for s, c, r in v))
    elapsed = time.perf_counter() - t_start
    print(f"total {elapsed:.0f} s")
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        prof_png = plots.curvature_profiles({k: r["profile"] for k, r in rows.items() if "profile" in r},
                                            args.out / "cure_vs_at_curvature.png")
        trade_png = plots.tradeoff(curves, args.out / "cure_vs_at_tradeoff.png")
        cmd = "python repro/cure_vs_at.py " + " ".join(argv if argv is not None else sys.argv[1:])
        md = [
            "# CURE vs adversarial training (Fashion-MNIST, LeNet)", "",
            f"Command: `{cmd.strip()}` — {args.threads} threads on a shared 2-core CPU, {elapsed:.0f} s in all.",
            f"Each model fine-tuned from `zoo:lenet-fmnist` for {args.epochs} epoch(s) on the first {args.train} "
            f"training images (Adam, lr {args.lr:g}, batch {args.batch_size}, seed {args.seed}). Clean accuracy on "
            f"the whole test split; PGD-{args.pgd_steps} (L∞, {args.restarts} restarts) and DeepFool (L2) on the "
            f"first {args.eval} test images; curvature: mean over {args.hessian_n} test images of the "
            f"largest |eigenvalue| of the input Hessian of the loss (Lanczos). CURE: γ={args.gamma:g}, "
            f"h={args.h:g} (ramped up over the first quarter epoch); LLR: eps 0.1, 2 steps, λ=4, μ=3.", "",
            tab, "",
            "## Trade-off (clean vs PGD robust accuracy at eps 0.1 on the attacked subset)", "",
            "| objective | strength | clean acc | robust acc @0.1 |", "|---|---|---|---|",
            *[f"| {k} | {s:g} | {c:.3f} | {r:.3f} |" for k, v in curves.items() for s, c, r in v], "",
            f"![curvature]({prof_png.name})", f"![trade-off]({trade_png.name})", "",
        ]
        (args.out / "cure_vs_at.md").write_text("\n".join(md))
        print(f"wrote {args.out / 'cure_vs_at.md'}")
    return {"rows": rows, "seconds": secs, "curves": curves}


if __name__ == "__main__":
    main()
