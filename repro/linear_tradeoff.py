"""Reproduction: robustness vs risk of linear classifiers (Fawzi, Fawzi & Frossard, "Analysis of classifiers'
robustness to adversarial perturbations", Machine Learning 2018), every point exact.

1. Two isotropic Gaussians N(±μ, σ²I) (‖μ‖ = 1, σ = 1, d = 100): the closed-form risk and ρ_adv of linear
   classifiers at every angle to μ, with and without bias, and the closed-form frontier of the bias-free family
   (:func:`georobust.geometry.tradeoff.gaussian_frontier`); a Monte-Carlo sample checks three of them, and DeepFool
   on the affine model checks the distances.
2. Fashion-MNIST class pairs: logistic regression at several weight decays, the Fisher direction interpolated
   with the mean-difference direction, and the mean difference mixed with random directions — risk and ρ_adv
   (``|w·x + b|/‖w‖`` averaged over the test pair) of each, with the bound of
   :func:`georobust.geometry.tradeoff.linear_bound` (distinguishability + 2·(M + |β|)·risk), and DeepFool's
   distances on the affine models compared with the exact ones.

Writes repro/results/linear_tradeoff.json (every number), .md and .png; ``--replot`` redraws the figure and the
table from the JSON without computing anything.

    python repro/linear_tradeoff.py            # 3 pairs, the whole train/test pairs (about a minute)
    python repro/linear_tradeoff.py --quick    # 1 pair, 400 train / 300 test images of the test split (seconds)
    python repro/linear_tradeoff.py --replot   # the figure and table from linear_tradeoff.json
"""

from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F
from _common import parser

from georobust import data, plots
from georobust.attacks.deepfool import STEP_EPS, deepfool_batch
from georobust.geometry.tradeoff import (
    affine_classifier,
    distinguishability,
    evaluate_linear,
    gaussian_frontier,
    gaussian_point,
    linear_bound,
    linear_distances,
    linear_risk_rho,
)

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def deepfool_gap(w, b, x) -> float:
    """max |‖r_DeepFool‖ − 1e-4 − |w·x + b|/‖w‖| over ``x`` (float64, unclipped DeepFool on the affine model)."""
    clf = affine_classifier(w.double(), float(b), bounds=(-1e6, 1e6))
    out = deepfool_batch(clf, x.double(), clip=False, overshoot=0.02, max_iter=5)
    got = out.r_tot.flatten(1).norm(dim=1) - STEP_EPS
    return float((got - linear_distances(w, b, x)).abs().max())


def gaussians(seed: int, n_mc: int) -> dict:
    mu_norm, sigma, d = 1.0, 1.0, 100
    thetas = torch.linspace(0, math.pi / 2, 19, dtype=torch.float64)
    a = mu_norm * thetas.cos()
    points = {}
    for b in (0.0, 0.5, 1.0):
        r, rho = gaussian_point(a, b, sigma)
        points[f"bias {b:g}σ"] = [(float(x), float(y)) for x, y in zip(r, rho)]
    bayes = float(torch.special.ndtr(torch.tensor(-mu_norm / sigma, dtype=torch.float64)))
    rs = torch.linspace(bayes, 0.5, 200, dtype=torch.float64)
    frontier = [(float(r), float(v)) for r, v in zip(rs, gaussian_frontier(rs, mu_norm, sigma))]
    # Monte Carlo and DeepFool on three classifiers
    g = torch.Generator().manual_seed(seed)
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = mu_norm
    y = torch.arange(n_mc) % 2
    x = (2.0 * y[:, None] - 1) * mu + sigma * torch.randn(n_mc, d, generator=g, dtype=torch.float64)
    checks = []
    for th, b in ((0.0, 0.0), (math.pi / 3, 0.0), (math.pi / 4, 0.5)):
        w = torch.zeros(d, dtype=torch.float64)
        w[0], w[1] = math.cos(th), math.sin(th)
        r_mc, rho_mc = linear_risk_rho(w, b, x, y)
        r_cf, rho_cf = gaussian_point(mu_norm * math.cos(th), b, sigma)
        checks.append({"theta": th, "bias": b, "risk_closed": float(r_cf), "rho_closed": float(rho_cf),
                       "risk_mc": r_mc, "rho_mc": rho_mc, "deepfool_gap": deepfool_gap(w, b, x[:2000])})
    return {"title": f"two Gaussians N(±μ, σ²I), ‖μ‖={mu_norm:g}, σ={sigma:g}, d={d}",
            "points": points, "curves": {"bias-free frontier (closed form)": frontier}, "checks": checks,
            "mean_input_norm": float(x.norm(dim=1).mean()), "n_mc": n_mc}


def logistic(x, s, wd: float, iters: int = 200):
    """L2-regularised logistic regression by full-batch L-BFGS in float64: mean softplus(−s f) + wd/2 ‖w‖²."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.softplus(-s * (x @ w + b)).mean() + 0.5 * wd * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), float(b.detach())


def pair(c0: int, c1: int, n_train: int | None, n_test: int | None, seed: int, wds, ts, kappas,
         quick: bool = False) -> dict:
    if quick:  # the test split only: its first 3000 images for training, the rest for testing
        x, y = data.load("fashion-mnist", "test")
        xs, ys, xt, yt = x[:3000], y[:3000], x[3000:], y[3000:]
    else:
        xs, ys = data.load("fashion-mnist", "train")
        xt, yt = data.load("fashion-mnist", "test")

    def select(x, y, n):
        keep = (y == c0) | (y == c1)
        x, y = x[keep].flatten(1).double(), (y[keep] == c1).long()
        return (x, y) if n is None else (x[:n], y[:n])

    xs, ys = select(xs, ys, n_train)
    xt, yt = select(xt, yt, n_test)
    delta, radius, gap, c = distinguishability(xt, yt)
    s = 2.0 * ys.double() - 1
    m0, m1 = xs[ys == 0].mean(0), xs[ys == 1].mean(0)
    md = m1 - m0
    cov = torch.cov(xs.T)
    shrink = 1e-2 * float(cov.diagonal().mean())
    fisher = torch.linalg.solve(cov + shrink * torch.eye(cov.shape[0], dtype=torch.float64), md)
    mid = 0.5 * (m0 + m1)
    pts: dict[str, list] = {"logistic regression (weight decay)": [], "Fisher ↔ mean difference": [],
                            "mean difference + noise": []}
    gaps = []

    def add(fam, name, w, b):
        p = evaluate_linear(name, w, b, xt, yt, delta=delta, radius=radius, prior_gap=gap, centre=c)
        pts[fam].append(p.as_dict())
        gaps.append(deepfool_gap(w, b, xt))

    for wd in wds:
        w, b = logistic(xs, s, wd)
        add("logistic regression (weight decay)", f"wd={wd:g}", w, b)
    for t in ts:
        w = (1 - t) * fisher / fisher.norm() + t * md / md.norm()
        add("Fisher ↔ mean difference", f"t={t:g}", w, -float(w @ mid))
    g = torch.Generator().manual_seed(seed)
    for k in kappas:
        noise = torch.randn(md.shape[0], generator=g, dtype=torch.float64)
        w = md / md.norm() + k * noise / noise.norm()
        add("mean difference + noise", f"κ={k:g}", w, -float(w @ mid))
    rs = torch.linspace(0, 0.5, 101, dtype=torch.float64)
    betas = [abs(p["beta"]) for f in pts.values() for p in f]
    curves = {"bound, β=0": [(float(r), float(linear_bound(r, delta, radius))) for r in rs],
              f"bound, |β|={max(betas):.2f}": [(float(r), float(linear_bound(r, delta, radius, beta=max(betas),
                                                                                prior_gap=gap))) for r in rs]}
    return {"title": f"Fashion-MNIST {CLASSES[c0]} vs {CLASSES[c1]}", "pair": [c0, c1], "delta": delta,
            "radius": radius, "prior_gap": gap, "n_train": int(xs.shape[0]), "n_test": int(xt.shape[0]),
            "points_full": pts, "points": {f: [(p["risk"], p["rho"]) for p in ps] for f, ps in pts.items()},
            "curves": curves, "deepfool_gap": max(gaps)}


def write(res: dict, out) -> dict:
    png = plots.linear_tradeoff({p["title"]: p for p in res["panels"]}, out / "linear_tradeoff.png")
    g = res["panels"][0]
    lines = ["# Robustness vs risk of linear classifiers (Fawzi, Fawzi & Frossard 2018)", "",
             "Every number is exact (closed form, or |w·x + b|/‖w‖ averaged over the test set); ρ_adv is the mean L2 "
             "distance to the boundary over all test points, unconstrained by the pixel box.", "",
             f"## {g['title']}", "",
             "Monte-Carlo check of the closed forms on " + f"{g['n_mc']} samples (mean ‖x‖ = "
             f"{g['mean_input_norm']:.2f}, so ρ_adv ≤ ‖μ‖ + 0.8σ is a small fraction of the inputs' size):", "",
             "| angle to μ | bias | risk (closed) | risk (MC) | ρ_adv (closed) | ρ_adv (MC) | max DeepFool − exact |",
             "|---|---|---|---|---|---|---|"]
    for c in g["checks"]:
        lines.append(f"| {math.degrees(c['theta']):.0f}° | {c['bias']:g} | {c['risk_closed']:.4f} | {c['risk_mc']:.4f} "
                     f"| {c['rho_closed']:.4f} | {c['rho_mc']:.4f} | {c['deepfool_gap']:.1e} |")
    for p in res["panels"][1:]:
        lines += ["", f"## {p['title']}", "",
                  f"{p['n_train']} training / {p['n_test']} test images; distinguishability δ = {p['delta']:.3f}, "
                  f"support radius M = {p['radius']:.2f} (centre: the test mean); DeepFool on the affine models "
                  f"matches the exact distances to {p['deepfool_gap']:.1e}.", "",
                  "| family | classifier | risk | ρ_adv | β | bound δ + 2(M+\\|β\\|)R |", "|---|---|---|---|---|---|"]
        for fam, ps in p["points_full"].items():
            for q in ps:
                lines.append(f"| {fam} | {q['name']} | {q['risk']:.4f} | {q['rho']:.3f} | {q['beta']:.3f} "
                             f"| {q['bound']:.3f} |")
    lines += ["", f"![trade-off]({png.name})", "", f"({res['seconds']:.0f} s, {res['mode']})", ""]
    text = "\n".join(lines)
    (out / "linear_tradeoff.md").write_text(text)
    return {"png": png, "text": text}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--replot", action="store_true", help="redraw the figure and table from the saved JSON")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    jpath = a.out / "linear_tradeoff.json"
    if a.replot:
        res = json.loads(jpath.read_text())
        return {**write(res, a.out), "result": res}
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.quick:
        panels = [gaussians(a.seed, 4000), pair(0, 6, 400, 300, a.seed, (1e-2, 1.0), (0.0, 1.0), (2.0,), quick=True)]
    else:
        wds, ts, ks = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0), (0.0, 0.25, 0.5, 0.75, 1.0), (0.5, 1.0, 2.0, 4.0, 8.0)
        panels = [gaussians(a.seed, 200_000)] + [pair(c0, c1, None, None, a.seed, wds, ts, ks)
                                                  for c0, c1 in ((0, 6), (2, 4), (1, 8))]
    res = {"panels": panels, "seconds": time.perf_counter() - t0, "mode": "quick" if a.quick else "full"}
    jpath.write_text(json.dumps(res, indent=1))
    w = write(res, a.out)
    print(w["text"])
    return {**w, "result": res}


if __name__ == "__main__":
    main()
