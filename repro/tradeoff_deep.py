"""Robustness vs accuracy on a deep net (Tsipras, Santurkar, Engstrom, Turner & Madry, "Robustness may be at
odds with accuracy", ICLR 2019): clean accuracy against robust accuracy for one LeNet on Fashion-MNIST trained
with a standard objective, PGD adversarial training (Madry et al., ICLR 2018) at several ε and CURE
(Moosavi-Dezfooli et al., CVPR 2019) at several γ, with the shipped models (``lenet-fmnist``,
``lenet-fmnist-at``, ``lenet-fmnist-cure``) on the same plot.

Every swept model is fine-tuned from ``zoo:lenet-fmnist`` (as the shipped AT and CURE models were) with the
same short schedule: ``--epochs`` epoch(s) on the first ``--train`` training images, Adam, constant lr, seed 0;
PGD-AT's inner maximisation has ``--at-steps`` steps. Each run checkpoints (``fit``'s checkpoints in
``--work``) and is skipped when its weights exist; each model's evaluation is saved next to its weights and
skipped when present, so a killed sweep resumes and the figure re-plots from saved results (``--plot-only``)
without training or attacking anything.

Measured per model: clean accuracy on the whole test split; robust accuracy from the evaluation suite
(``georobust.evaluate`` with PGD, L∞, at ``--eps``) on the first ``--eval`` test images; with ``--cascade``
N > 0, the standard cascade (APGD-CE, APGD-T, FAB-T, Square) at ε = ``--cascade-eps`` on the first N.

    python repro/tradeoff_deep.py              # full (what fits a shared 2-core CPU): writes
                                               # repro/results/tradeoff_deep.md, tradeoff_deep.png and
                                               # repro/results/tradeoff_deep/*.safetensors/.json
    python repro/tradeoff_deep.py --plot-only  # re-plot from repro/results/tradeoff_deep/ (no training)
    python repro/tradeoff_deep.py --quick --out /tmp/x   # seconds: 2 tiny runs, 20 images
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, parser

from georobust import data, evaluate, fit, plots, pretrained
from georobust.evaluation.cascade import cascade
from georobust.models.io import load_weights, save_weights
from georobust.storage import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("lenet-fmnist", "lenet-fmnist-at", "lenet-fmnist-cure")
SHIPPED_LABEL = {"lenet-fmnist": "shipped standard", "lenet-fmnist-at": "shipped PGD-AT (ε 0.1)",
                 "lenet-fmnist-cure": "shipped CURE (γ 4)"}
FAMILY = {"standard": "standard", "adversarial": "PGD-AT (ε)", "cure": "CURE (γ)"}


def sweep(a) -> list[dict]:
    """The runs: ``{"name", "objective", "strength", "options"}``; the name is the file stem."""
    runs = [{"name": "standard", "objective": "standard", "strength": 0.0, "options": {}}]
    runs += [{"name": f"at-eps{e:g}", "objective": "adversarial", "strength": e,
              "options": {"eps": e, "steps": a.at_steps}} for e in a.at_eps]
    runs += [{"name": f"cure-gamma{g:g}", "objective": "cure", "strength": g,
              "options": {"gamma": g, "h": a.cure_h, "h_warmup": 0.5}} for g in a.cure_gammas]
    return runs


def _bad(msg: str):
    raise SystemExit(f"tradeoff_deep: {msg}")


def check_args(a) -> None:
    """Clear errors before any work."""
    if a.train < 1 or a.eval < 1 or a.epochs < 1 or a.at_steps < 1:
        _bad("--train, --eval, --epochs and --at-steps must be positive integers")
    if a.cascade < 0:
        _bad("--cascade must be >= 0 (0: no cascade)")
    if a.cascade_steps < 1 or a.square_queries < 1:
        _bad("--cascade-steps and --square-queries must be positive integers")
    if not a.eps or any(not 0 < e < 1 for e in a.eps):
        _bad(f"--eps must be one or more budgets in (0, 1) for images in [0, 1], got {a.eps}")
    if any(not 0 < e < 1 for e in a.at_eps):
        _bad(f"--at-eps must be in (0, 1), got {a.at_eps}")
    if any(g <= 0 for g in a.cure_gammas):
        _bad(f"--cure-gammas must be > 0, got {a.cure_gammas}")
    if a.cascade and not 0 < a.cascade_eps < 1:
        _bad(f"--cascade-eps must be in (0, 1), got {a.cascade_eps}")
    if a.only is not None:
        known = list(SHIPPED) + [r["name"] for r in sweep(a)]
        unknown = sorted(set(a.only) - set(known))
        if unknown:
            _bad(f"--only: unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if a.plot_only and not (a.out / "tradeoff_deep").is_dir():
        _bad(f"--plot-only: no saved results in {a.out / 'tradeoff_deep'}; run the sweep first")


def train_run(run: dict, base, train, a, wdir: Path) -> tuple[object, bool]:
    """The run's model: loaded when its weights exist (``False``), else fine-tuned from ``base`` with
    checkpoints in ``--work`` (resumed when one is there) and saved (``True``)."""
    path = wdir / f"{run['name']}.safetensors"
    if path.exists():
        return load_weights(path), False
    model = copy.deepcopy(base).train()
    ck = a.work / run["name"]
    resume = (ck / "checkpoint.json").exists()
    hist = fit(model, train, run["objective"], objective_options=run["options"], epochs=a.epochs, lr=a.lr,
               schedule="constant", batch_size=a.batch_size, seed=a.seed, checkpoint_dir=ck, resume=resume,
               overwrite=not resume)
    model.eval()
    side = {"arch": "lenet", "data": "fashion-mnist", "init": "zoo:lenet-fmnist", "objective": run["objective"],
            "objective_options": run["options"], "epochs": a.epochs, "n_train": a.train, "lr": a.lr,
            "schedule": "constant", "batch_size": a.batch_size, "seed": a.seed,
            "train_seconds": hist.train_seconds, "history": hist.epochs, "torch": torch.__version__,
            "command": _command(a)}
    save_weights(model, path, arch="lenet", input_shape=(1, 28, 28), num_classes=10, sidecar=side)
    return model, True


def clean_accuracy(model, x, y) -> float:
    with torch.inference_mode():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float(pred.eq(y).double().mean())


def evaluate_model(model, test, a) -> dict:
    """Clean accuracy (whole split) and the suite's PGD robust accuracy at ``--eps``."""
    t0 = time.perf_counter()
    xe, ye = test[0][:a.eval], test[1][:a.eval]
    ev, _ = evaluate(model, xe, ye, attacks=["pgd"], eps=a.eps, norm="inf", keep_results=False,
                     options={"pgd": {"steps": a.pgd_steps, "restarts": a.restarts, "seed": a.seed}})
    return {"clean": clean_accuracy(model, *test), "clean_eval": ev.clean_accuracy,
            "pgd": {f"{e:g}": float(v) for e, v in zip(ev.eps, ev.worst_case)},
            "eval_seconds": time.perf_counter() - t0}


def cascade_model(model, test, a) -> dict:
    """The standard cascade at ``--cascade-eps`` on the first ``--cascade`` test images, and the suite's PGD on
    the same images (what the cascade adds over PGD)."""
    t0 = time.perf_counter()
    xc, yc = test[0][:a.cascade], test[1][:a.cascade]
    steps = {"steps": a.cascade_steps}
    res = cascade(model, xc, yc, eps=a.cascade_eps, norm="inf", seed=a.seed, alarms=False,
                  options={"apgd-ce": steps, "apgd-t": steps, "fab-t": steps,
                           "square": {"max_queries": a.square_queries}})
    ev, _ = evaluate(model, xc, yc, attacks=["pgd"], eps=[a.cascade_eps], norm="inf", keep_results=False,
                     options={"pgd": {"steps": a.pgd_steps, "restarts": a.restarts, "seed": a.seed}})
    return {"eps": a.cascade_eps, "n": a.cascade, "robust": float(res.robust.double().mean()),
            "clean": res.clean_accuracy, "pgd_same_images": float(ev.worst_case[0]),
            "steps": a.cascade_steps, "square_queries": a.square_queries,
            "per_attack": [dict(p) for p in res.per_attack], "seconds": time.perf_counter() - t0}


def _command(a) -> str:
    return "python repro/tradeoff_deep.py " + " ".join(a.argv)


def load_rows(wdir: Path) -> list[dict]:
    """Every saved evaluation (``*.eval.json``) in ``wdir``."""
    return [json.loads(p.read_text()) for p in sorted(wdir.glob("*.eval.json"))]


def render(rows: list[dict], a, wdir: Path, elapsed: float | None) -> dict:
    """The table and the figure, from saved rows only."""
    if not rows:
        _bad(f"no saved evaluations (*.eval.json) in {wdir}")
    eps_keys = sorted({k for r in rows for k in r["pgd"]}, key=float)
    plot_eps = f"{a.plot_eps:g}"
    if plot_eps not in eps_keys:
        _bad(f"--plot-eps {a.plot_eps:g} was not evaluated (saved budgets: {', '.join(eps_keys)})")
    curves: dict[str, list] = {}
    points: dict[str, tuple[float, float]] = {}
    casc_curves: dict[str, list] = {}
    for r in rows:
        fam = SHIPPED_LABEL.get(r["name"], r["name"]) if r["kind"] == "shipped" else FAMILY[r["objective"]]
        if "cascade" in r:  # the cascade's robust accuracy (its own images, at its own eps) beside PGD's
            c = r["cascade"]
            casc_curves.setdefault(f"{fam} cascade @{c['eps']:g}", []).append((r["strength"], r["clean"], c["robust"]))
        if r["kind"] == "shipped":
            points[fam] = (r["pgd"][plot_eps], r["clean"])
            continue
        curves.setdefault(fam, []).append((r["strength"], r["clean"], r["pgd"][plot_eps]))
    std = curves.pop("standard", [])
    for s in std:  # the standard fine-tune is strength 0 of both families
        points["standard fine-tune"] = (s[2], s[1])
    png = plots.tradeoff_deep(curves, points, a.out / "tradeoff_deep.png",
                              robust_label=f"robust accuracy (PGD, L∞ ε={plot_eps})",
                              cascade=casc_curves or None)
    head = ["model", "objective", "strength", "clean acc (test)"] + [f"PGD acc @{e}" for e in eps_keys]
    has_casc = any("cascade" in r for r in rows)
    if has_casc:
        ce = next(r["cascade"] for r in rows if "cascade" in r)
        head += [f"PGD @{ce['eps']:g} on the cascade's images", f"cascade @{ce['eps']:g} (n images)"]
    head += ["train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {"shipped": 0, "standard": 1, "adversarial": 2, "cure": 3}
    for r in sorted(rows, key=lambda r: (order[r["kind"] if r["kind"] == "shipped" else r["objective"]],
                                         r["strength"])):
        cells = [r["name"], r["objective"], f"{r['strength']:g}", f"{r['clean']:.4f}"]
        cells += [f"{r['pgd'][e]:.3f}" if e in r["pgd"] else "—" for e in eps_keys]
        if has_casc:
            c = r.get("cascade")
            cells += [f"{c['pgd_same_images']:.3f}", f"{c['robust']:.3f} ({c['n']})"] if c else ["—", "—"]
        ts = r.get("train_seconds")
        cells += [f"{ts:.0f}" if ts is not None else "—", f"{r['eval_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    tab = "\n".join(lines)
    return {"table": tab, "figure": png, "curves": curves, "points": points, "cascade": casc_curves,
            "elapsed": elapsed}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--train", type=int, default=10000, help="training images (first N of the train split)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--at-eps", type=float, nargs="*", default=[0.025, 0.05, 0.1, 0.15])
    ap.add_argument("--at-steps", type=int, default=5, help="PGD steps of adversarial training")
    ap.add_argument("--cure-gammas", type=float, nargs="*", default=[0.5, 2.0, 4.0, 8.0])
    ap.add_argument("--cure-h", type=float, default=3.0)
    ap.add_argument("--eval", type=int, default=500, help="test images attacked by the suite's PGD")
    ap.add_argument("--eps", type=float, nargs="*", default=[0.05, 0.1, 0.15], help="L∞ budgets")
    ap.add_argument("--pgd-steps", type=int, default=50)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--cascade", type=int, default=200, help="test images for the cascade (0: none)")
    ap.add_argument("--cascade-eps", type=float, default=0.1)
    ap.add_argument("--cascade-steps", type=int, default=100, help="steps of APGD-CE, APGD-T, FAB-T in the cascade")
    ap.add_argument("--square-queries", type=int, default=1000, help="Square's query budget in the cascade")
    ap.add_argument("--plot-eps", type=float, default=0.1, help="the budget on the figure's x-axis")
    ap.add_argument("--work", type=Path, default=ROOT / "results" / "tradeoff_deep_ckpt",
                    help="fit checkpoints (not committed)")
    ap.add_argument("--no-shipped", action="store_true", help="leave the shipped models out")
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME",
                    help="process only these models (file stems, e.g. lenet-fmnist-at at-eps0.1); others are "
                         "still plotted from their saved results")
    ap.add_argument("--plot-only", action="store_true", help="re-plot from saved results; no training")
    a = ap.parse_args(argv)
    a.argv = list(argv if argv is not None else sys.argv[1:])
    if a.quick:
        a.train, a.eval, a.pgd_steps, a.restarts, a.cascade, a.cascade_steps = 128, 20, 3, 1, 8, 3
        a.at_eps, a.cure_gammas, a.at_steps, a.square_queries = [0.1], [4.0], 2, 20
        a.eps, a.plot_eps = [0.1], 0.1
        if a.out == RESULTS:
            _bad("--quick writes into --out: give a scratch folder (--out /tmp/...), not repro/results")
        a.work = a.out / "ckpt"
    check_args(a)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    wdir = a.out / "tradeoff_deep"
    trained: list[str] = []
    evaluated: list[str] = []
    if not a.plot_only:
        wdir.mkdir(parents=True, exist_ok=True)
        base = pretrained("lenet-fmnist")
        train = data.load("fashion-mnist", "train", limit=a.train)
        test = data.load("fashion-mnist", "test", limit=1000 if a.quick else None)
        shipped = () if a.no_shipped else SHIPPED[:1] if a.quick else SHIPPED
        todo = [("shipped", n, None) for n in shipped]
        todo += [("swept", r["name"], r) for r in sweep(a)]
        if a.only is not None:
            todo = [t for t in todo if t[1] in a.only]
        for kind, name, run in todo:
            ev_path = wdir / f"{name}.eval.json"
            row = json.loads(ev_path.read_text()) if ev_path.exists() else None
            need_casc = bool(a.cascade) and (row is None or row.get("cascade", {}).get("n") != a.cascade)
            if row is not None and not need_casc and (kind == "shipped" or (wdir / f"{name}.safetensors").exists()):
                continue
            if kind == "shipped":
                model, secs = pretrained(name), None
            else:
                model, new = train_run(run, base, train, a, wdir)
                if new:
                    trained.append(name)
                    row = None  # a new model: its old evaluation (if any) is not its own
                secs = json.loads((wdir / f"{name}.json").read_text())["train_seconds"]
            if row is None:
                row = {"name": name, "kind": kind, "objective": "shipped" if run is None else run["objective"],
                       "strength": 0.0 if run is None else run["strength"],
                       "options": {} if run is None else run["options"], "train_seconds": secs,
                       "settings": {"eval": a.eval, "pgd_steps": a.pgd_steps, "restarts": a.restarts,
                                    "command": _command(a)}}
                row.update(evaluate_model(model, test, a))
                atomic_write_text(ev_path, json.dumps(row, indent=2))
            if a.cascade and row.get("cascade", {}).get("n") != a.cascade:
                row["cascade"] = cascade_model(model, test, a)
                atomic_write_text(ev_path, json.dumps(row, indent=2))
            evaluated.append(name)
            print(f"{name}: clean {row['clean']:.4f} pgd {row['pgd']}"
                  + (f" cascade {row['cascade']['robust']:.3f}" if "cascade" in row else "")
                  + f" (train {secs or 0:.0f} s, eval {row['eval_seconds']:.0f} s)", flush=True)
    elapsed = time.perf_counter() - t0
    out = render(load_rows(wdir), a, wdir, elapsed)
    out.update({"trained": trained, "evaluated": evaluated, "rows": load_rows(wdir)})
    print(out["table"])
    if not a.quick:
        cmds = sorted({r.get("settings", {}).get("command", "").strip() for r in out["rows"]} - {""})
        md = [
            "# Robustness vs accuracy on a deep net (Tsipras et al., ICLR 2019), Fashion-MNIST LeNet", "",
            "Commands (each model's evaluation records the call that made it; the cascade was added by calls "
            "with `--cascade N --only NAME`): " + "; ".join(f"`{c}`" for c in cmds) + f". This file: "
            f"`{_command(a).strip()}`. {a.threads} thread(s) each on a shared 2-core CPU (several calls in "
            "parallel, 8 sessions sharing the machine): the seconds in the table are wall-clock under contention.",
            f"Swept models: fine-tuned from `zoo:lenet-fmnist` for {a.epochs} epoch(s) on the first {a.train} "
            f"training images (Adam, lr {a.lr:g} constant, batch {a.batch_size}, seed {a.seed}); PGD-AT: L∞, "
            f"{a.at_steps} steps; CURE: h={a.cure_h:g} (warm-up over half the run). Shipped models: as their "
            "weights' JSON says (AT and CURE: 3 epochs × 30k images, PGD-10). Clean accuracy on the whole test "
            f"split; PGD (the suite, PGD-{a.pgd_steps}, {a.restarts} restarts) on the first {a.eval} test images; "
            f"where affordable, the cascade (APGD-CE, APGD-T, FAB-T with {a.cascade_steps} steps, Square with "
            f"{a.square_queries} queries) at ε = {a.cascade_eps:g} on the first n test images (n in the cell), "
            "beside the suite's PGD on the same images.", "",
            out["table"], "", f"![trade-off]({out['figure'].name})", ""]
        atomic_write_text(a.out / "tradeoff_deep.md", "\n".join(md))
        print(f"wrote {a.out / 'tradeoff_deep.md'}")
    return out


if __name__ == "__main__":
    main()
