"""Reproduction: universal adversarial perturbations (Moosavi-Dezfooli et al., CVPR 2017) and why they exist
(ICLR 2018), at small scale on the shipped Fashion-MNIST models.

For lenet-fmnist and fc500-150-10-fmnist: L∞ and L2 UAPs computed on training images for several ξ, their
fooling rates on held-out test images next to random noise of the same norm; the sequential (exactly
Algorithm 1) against the batched mode at one ξ; the cross-model transfer matrix (with random-noise cells);
and the four-way comparison at equal L2 norm (random / flat model / curved model / UAP). Writes
repro/results/universal.md and universal_*.png.

    python repro/universal.py           # full: 1,000 train / 2,000 test images, ≤ 3 passes (≈ 10 min, 2 threads)
    python repro/universal.py --quick   # seconds: fc500-150-10-fmnist, 100 / 200 images, 1 pass
"""

from __future__ import annotations

import time

import torch
from _common import parser

from georobust import data, plots, pretrained
from georobust.attacks.universal import transfer_matrix, universal_perturbation
from georobust.evaluation.metrics import perturbed_labels
from georobust.geometry.universal_geometry import universal_geometry


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--models", default="lenet-fmnist,fc500-150-10-fmnist")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--xi-inf", default="0.1,0.2,0.3")
    ap.add_argument("--xi-2", default="2,3,4")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=32, help="batched-mode chunk")
    ap.add_argument("--geometry-points", type=int, default=300)
    ap.add_argument("--m", type=int, default=10, help="flat/curved subspace dimension")
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.n_train, a.n_test, a.passes = "fc500-150-10-fmnist", 100, 200, 1
        a.xi_inf, a.xi_2, a.geometry_points = "0.2", "3", 60
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    models = {m: pretrained(m) for m in a.models.split(",")}
    x, _ = data.load("fashion-mnist", "train", limit=a.n_train)
    xt, _ = data.load("fashion-mnist", "test", limit=a.n_test)
    classes = data.info("fashion-mnist").classes
    xis = {"inf": [float(v) for v in a.xi_inf.split(",")], "2": [float(v) for v in a.xi_2.split(",")]}
    a.out.mkdir(parents=True, exist_ok=True)
    md = ["# Universal adversarial perturbations (CVPR 2017) and the flat/curved models (ICLR 2018)", "",
          f"Training set X: the first {a.n_train} Fashion-MNIST training images; held-out: the first {a.n_test} "
          f"test images. Inner DeepFool: L2 step, 10 iterations, overshoot 0.02, 10 classes; δ = 0.2, at most "
          f"{a.passes} passes, x + v clipped to [0, 1]. Fooling = the *predicted* label changes. Random noise: "
          "random signs × ξ (L∞) or a Gaussian direction rescaled to ξ (L2), one draw per image.", ""]
    # 1. fooling rate vs ξ (batched mode)
    md += ["## Fooling rate versus ξ (batched mode)", "",
           "| model | norm | ξ | passes | fooling X | held-out | random noise (held-out) | dominant label (share) "
           "| seconds |", "|---|---|---|---|---|---|---|---|---|"]
    curves, base, uaps, out = {}, {}, {}, {}
    for name, clf in models.items():
        for norm in ("inf", "2"):
            key = f"{name} L{'∞' if norm == 'inf' else '2'}"
            curves[key], base[key] = [], []
            for xi in xis[norm]:
                r = universal_perturbation(clf, x, xi=xi, norm=norm, x_eval=xt, max_passes=a.passes,
                                           mode="batched", chunk=a.chunk, seed=a.seed)
                tm = transfer_matrix({name: clf}, {name: r}, xt, seed=a.seed)
                s = r.summary()
                dom = "—" if s["dominant_label"] is None else f"{classes[s['dominant_label']]} ({s['dominant_share']:.2f})"
                md.append(f"| {name} | L{norm} | {xi:g} | {r.passes} | {r.fooling_rate_train:.3f} | "
                          f"{r.fooling_rate:.3f} | {float(tm.random[0, 0]):.3f} | {dom} | {r.elapsed:.1f} |")
                curves[key].append((xi, r.fooling_rate))
                base[key].append((xi, float(tm.random[0, 0])))
                uaps[(name, norm, xi)] = r
                print(md[-1], flush=True)
    out["fooling_vs_xi"] = dict(curves)
    for norm in ("inf", "2"):
        plots.fooling_vs_xi({k: v for k, v in curves.items() if k.endswith("∞" if norm == "inf" else "2")},
                            a.out / f"universal_fooling_vs_xi_{norm}.png", norm=norm,
                            baseline={k: v for k, v in base.items() if k.endswith("∞" if norm == "inf" else "2")})
    # 2. sequential (Algorithm 1) vs batched, at the middle L∞ ξ
    xi_s = xis["inf"][len(xis["inf"]) // 2]
    md += ["", f"## Sequential (exactly Algorithm 1) versus batched mode, L∞ ξ = {xi_s:g}", "",
           "| model | mode | passes | fooling X per pass | held-out per pass | seconds |", "|---|---|---|---|---|---|"]
    for name, clf in models.items():
        rb = uaps[(name, "inf", xi_s)]
        rs = universal_perturbation(clf, x, xi=xi_s, norm="inf", x_eval=xt, max_passes=a.passes,
                                    mode="sequential", seed=a.seed)
        for mode, r in (("sequential", rs), (f"batched (chunk {a.chunk})", rb)):
            md.append(f"| {name} | {mode} | {r.passes} | {', '.join(f'{v:.3f}' for v in r.fooling_train)} | "
                      f"{', '.join(f'{v:.3f}' for v in r.fooling_eval)} | {r.elapsed:.1f} |")
            print(md[-1], flush=True)
    # 3. transfer matrix
    for norm in ("inf", "2"):
        xi_t = xis[norm][len(xis[norm]) // 2]
        tm = transfer_matrix(models, {n: uaps[(n, norm, xi_t)] for n in models}, xt, seed=a.seed)
        rows = tm.table()
        md += ["", f"## Transfer, L{norm} ξ = {xi_t:g}: held-out fooling rate of the UAP of the row model on the "
               "column model (random noise of the same norm in brackets)", "",
               "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        out[f"transfer_{norm}"] = tm.fooling.tolist()
    # 4. why: random / flat / curved / UAP at equal L2 norm
    xi_g = xis["2"][len(xis["2"]) // 2]
    md += ["", f"## Why they exist: fooling rates at equal L2 norm ξ = {xi_g:g} (held-out)", "",
           f"Flat model: span of the top {a.m} right singular vectors of the unit normals at the DeepFool boundary "
           f"points of {a.geometry_points} training images; curved model: span of the top {a.m} eigenvectors of the "
           "averaged Hessian of f_l − f_k̂ at the same points (HVPs of a Softplus(β=10) copy — the ReLU networks' "
           "own Hessian is zero a.e. — and Lanczos); UAP: the L2 UAP above rescaled to ξ. Paper (ImageNet): "
           "13% < 38% < 67% < 85%.", "",
           "| model | random | flat | curved | UAP | top Hessian eigenvalues | seconds |", "|---|---|---|---|---|---|---|"]
    bars, geometry = {}, {}
    for name, clf in models.items():
        gm = universal_geometry(clf, x[: a.geometry_points], uap=uaps[(name, "2", xi_g)], xi=xi_g, x_eval=xt,
                                m_flat=a.m, m_curved=a.m, seed=a.seed)
        f = gm.fooling
        bars[name] = f
        geometry[name] = gm
        ev = ", ".join(f"{float(e):.3g}" for e in gm.hessian_eigenvalues[:3])
        md.append(f"| {name} | {f['random']:.3f} | {f['flat']:.3f} | {f['curved']:.3f} | {f['uap']:.3f} | {ev} | "
                  f"{gm.elapsed:.1f} |")
        print(md[-1], flush=True)
    out["geometry"] = bars
    out["geometry_results"] = geometry  # the UniversalGeometry objects (bases, eigenvalues), for checks
    out["uaps"] = uaps
    plots.universal_comparison(bars, a.out / "universal_comparison.png", title=f"equal L2 norm ξ = {xi_g:g}")
    # figures of the perturbations
    for name, clf in models.items():
        r = uaps[(name, "inf", xi_s)]
        plots.universal_perturbation(r.v, a.out / f"universal_v_{name}.png", title=f"{name}: L∞ ξ={xi_s:g}")
        lc, la = perturbed_labels(clf, xt[:64], r.v)
        plots.universal_examples(xt[:64], r.v, lc, la, a.out / f"universal_examples_{name}.png", classes=classes)
    md += ["", "Figures: `universal_fooling_vs_xi_inf.png`, `universal_fooling_vs_xi_2.png`, "
           "`universal_comparison.png`, `universal_v_<model>.png`, `universal_examples_<model>.png`.", "",
           f"Total {time.perf_counter() - t_all:.0f} s with {a.threads} threads (shared CPU).", "",
           "Command: `python repro/universal.py" + (" --quick" if a.quick else "") + "`"]
    (a.out / "universal.md").write_text("\n".join(md) + "\n")
    print(f"wrote {a.out / 'universal.md'}")
    return out


if __name__ == "__main__":
    main()
