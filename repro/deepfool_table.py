"""Reproduce the shape of DeepFool's Tables 1 and 2 (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016) at small
scale: for each model, the test error, the average robustness ``ρ_adv = mean ‖r‖₂/‖x‖₂`` (Table 1) and
``ρ∞ = mean ‖r‖∞/‖x‖∞`` (Table 2), and the time per sample of DeepFool, the minimal fast gradient sign
method (the smallest FGSM ``eps`` that fools, per sample, as the paper did) and L-BFGS (Szegedy et al.);
plus DeepFool's mean number of iterations.

Models: ``lenet-fmnist`` and ``fc500-150-10-fmnist`` on the first 1,000 Fashion-MNIST test images, and
``mlp-digits`` on all 540 test digits. Every attack targets the model's *predicted* label (the paper's
convention for ρ over a whole test set); ρ is the mean over the samples the attack fooled (all of them,
unless the table says otherwise). L-BFGS is slow, so it runs on the first ``--lbfgs-n`` images of each set.
The paper's MNIST LeNet row: ρ_adv 0.20 (DeepFool) / 1.0 (FGSM) / 0.25 (L-BFGS).

    python repro/deepfool_table.py            # full: writes repro/results/deepfool_table.md and .png
    python repro/deepfool_table.py --quick    # seconds: 30 images per model, nothing written unless --out
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import georobust as gr
from georobust import plots
from georobust.attacks.deepfool import deepfool
from georobust.attacks.fgsm import fgsm
from georobust.attacks.lbfgs import lbfgs

MODELS = (("lenet-fmnist", "fashion-mnist"), ("fc500-150-10-fmnist", "fashion-mnist"), ("mlp-digits", "digits"))
RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn):
    t = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t


def run_model(model: str, data: str, n: int, lbfgs_n: int) -> tuple[dict, dict]:
    clf = gr.pretrained(model)
    x, y = gr.data.load(data, "test", limit=n)
    pred = gr.predict(clf, x)
    deepfool(clf, x[:4])  # warm-up
    row = {"model": model, "data": data, "n": len(x), "test_error": float((pred != y).double().mean())}
    results = {}
    res, sec = _timed(lambda: deepfool(clf, x, norm=2))
    results["DeepFool"] = res
    row["deepfool"] = {**res.summary(), "sec_per_sample": sec / len(x)}
    res, sec = _timed(lambda: fgsm(clf, x, eps=None, norm="inf"))
    results["FGSM (minimal)"] = res
    row["fgsm"] = {**res.summary(), "sec_per_sample": sec / len(x)}
    if lbfgs_n > 0:
        xs = x[:lbfgs_n]
        res, sec = _timed(lambda: lbfgs(clf, xs))
        results["L-BFGS"] = res
        row["lbfgs"] = {**res.summary(), "sec_per_sample": sec / len(xs)}
    res, sec = _timed(lambda: deepfool(clf, x, norm="inf"))
    row["deepfool_inf"] = {**res.summary(), "sec_per_sample": sec / len(x)}
    results_inf = {"DeepFool L∞": res, "FGSM (minimal)": results["FGSM (minimal)"]}
    return row, {"l2": results, "inf": results_inf}


def _cell(s: dict | None, key: str) -> str:
    if s is None:
        return "–"
    v = f"{s[key]:.4f}"
    return v if s["success_rate"] == 1.0 else f"{v} ({s['success_rate']:.1%} fooled)"


def _ms(s: dict | None) -> str:
    return "–" if s is None else f"{1000 * s['sec_per_sample']:.2f} ms"


def tables(rows: list[dict]) -> str:
    out = ["### Table 1 analogue: L2 (ρ_adv = mean ‖r‖₂/‖x‖₂ over fooled samples)", "",
           "| model | n | test error | ρ_adv DeepFool | time DeepFool | DeepFool mean iterations | ρ_adv FGSM | "
           "time FGSM | ρ_adv L-BFGS (n) | time L-BFGS | ρ L-BFGS / ρ DeepFool (same n) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        df, fg, lb = r["deepfool"], r["fgsm"], r.get("lbfgs")
        lbn = f"{_cell(lb, 'rho')} ({lb['n']})" if lb else "–"
        same = f"{r['lbfgs_vs_deepfool']:.3f}" if "lbfgs_vs_deepfool" in r else "–"
        out.append(f"| {r['model']} | {r['n']} | {r['test_error']:.4f} | {_cell(df, 'rho')} | {_ms(df)} | "
                   f"{df['mean_iterations']:.2f} | {_cell(fg, 'rho')} | {_ms(fg)} | {lbn} | {_ms(lb)} | {same} |")
    out += ["", "### Table 2 analogue: L∞ (ρ∞ = mean ‖r‖∞/‖x‖∞ over fooled samples)", "",
            "| model | n | ρ∞ DeepFool L∞ | time DeepFool L∞ | DeepFool L∞ mean iterations | ρ∞ FGSM | time FGSM |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        di, fg = r["deepfool_inf"], r["fgsm"]
        out.append(f"| {r['model']} | {r['n']} | {_cell(di, 'rho_inf')} | {_ms(di)} | {di['mean_iterations']:.2f} | "
                   f"{_cell(fg, 'rho_inf')} | {_ms(fg)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="30 images per model, L-BFGS on 8")
    ap.add_argument("-n", type=int, default=1000, help="test images per model (digits has 540)")
    ap.add_argument("--lbfgs-n", type=int, default=1000, help="images per model given to L-BFGS")
    ap.add_argument("--models", default=",".join(m for m, _ in MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="results folder (full mode: repro/results)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    n, lbfgs_n = (30, 8) if a.quick else (a.n, a.lbfgs_n)
    out = a.out if a.out is not None else (None if a.quick else RESULTS)
    wanted = [m.strip() for m in a.models.split(",") if m.strip()]
    rows, figs_l2, figs_inf = [], {}, {}
    for model, data in MODELS:
        if model not in wanted:
            continue
        if data == "fashion-mnist" and not gr.data.info(data).available:
            print(f"{model}: {data} is not installed here, skipped")
            continue
        row, res = run_model(model, data, n, lbfgs_n)
        if "L-BFGS" in res["l2"]:  # compare L-BFGS and DeepFool on the same images
            lb, df = res["l2"]["L-BFGS"], res["l2"]["DeepFool"]
            k = lb.x.shape[0]
            ok = lb.success & df.success[:k]
            row["lbfgs_vs_deepfool"] = float(lb.rho[ok].mean() / df.rho[:k][ok].mean())
        rows.append(row)
        figs_l2[model], figs_inf[model] = res["l2"], res["inf"]
        print(f"{model}: done ({row['n']} images)", flush=True)
    text = tables(rows)
    header = ("# DeepFool Tables 1–2, reproduced at small scale\n\n"
              f"Command: `python repro/deepfool_table.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
              f"({a.threads} CPU threads, shared machine: times are indicative). Paper (MNIST LeNet): "
              "ρ_adv 0.20 (DeepFool) / 1.0 (FGSM) / 0.25 (L-BFGS); DeepFool 10–100× faster than L-BFGS.\n\n")
    print(text)
    if out is not None and rows:
        out.mkdir(parents=True, exist_ok=True)
        (out / "deepfool_table.md").write_text(header + text + "\n")
        plots.minimal_perturbations(figs_l2, out / "deepfool_table.png", norm="2")
        plots.minimal_perturbations(figs_inf, out / "deepfool_table_linf.png", norm="inf")
        print(f"wrote {out / 'deepfool_table.md'} and the figures")
    return rows


if __name__ == "__main__":
    main()
