"""Reproduction: correlations of the decision-boundary normals (Moosavi-Dezfooli et al., "Universal adversarial
perturbations", CVPR 2017 §4, and ICLR 2018 §3): singular values of the matrix of unit normals at N points
against N random unit vectors, and the "flat model" — random vectors from the span of the top-m singular
vectors fool far more points than isotropic random vectors of the same norm. Writes
repro/results/normals_spectrum.md + .png.

    python repro/normals_spectrum.py          # lenet-fmnist and fc500-150-10-fmnist, 500 normals, 500 eval
    python repro/normals_spectrum.py --quick  # mlp-digits, 60 + 60 images
"""

from __future__ import annotations

import time

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.geometry.normals import normal_spectrum


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=500, help="points whose normals are used")
    ap.add_argument("--n-eval", type=int, default=500, help="other points on which fooling rates are measured")
    ap.add_argument("--models", default="lenet-fmnist,fc500-150-10-fmnist")
    ap.add_argument("--dims", default="1,5,10,25,50,100,200")
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.n, a.n_eval, a.dims = "mlp-digits", 60, 60, "1,5,10"
    torch.set_num_threads(a.threads)
    dims = [int(v) for v in a.dims.split(",")]
    sv_rows = ["| model | N | σ₂/σ₁ | σ₁₀/σ₁ | σ₅₀/σ₁ (normals) | σ₂/σ₁ | σ₁₀/σ₁ | σ₅₀/σ₁ (random) | seconds |",
               "|---|---|---|---|---|---|---|---|---|"]
    fr_rows = ["| model | ‖v‖₂ | isotropic | " + " | ".join(f"top-{m}" for m in dims) + " |",
               "|---|---|---|" + "---|" * len(dims)]
    results = {}
    for name in a.models.split(","):
        clf = pretrained(name)
        dset = dataset_of(name)
        x, _ = data.load(dset, "test", limit=a.n + a.n_eval)
        t0 = time.perf_counter()
        ns = normal_spectrum(clf, x[: a.n], x_eval=x[a.n:], dims=dims, seed=a.seed)  # ‖v‖ = 2 × median ‖r*‖
        sec = time.perf_counter() - t0
        results[name] = ns
        s, r = ns.singular_values, ns.random_singular_values

        def rel(t, i):
            return f"{float(t[i] / t[0]):.3f}" if i < t.numel() else "-"
        sv_rows.append(f"| {name} | {ns.n_normals} | {rel(s, 1)} | {rel(s, 9)} | {rel(s, 49)} | {rel(r, 1)} | "
                       f"{rel(r, 9)} | {rel(r, 49)} | {sec:.1f} |")
        fr = {m: f for m, f in zip(ns.dims, ns.fooling_subspace)}
        fr_rows.append(f"| {name} | {ns.eps:.3g} | {ns.fooling_isotropic:.3f} | "
                       + " | ".join(f"{fr[m]:.3f}" if m in fr else "-" for m in dims) + " |")
    a.out.mkdir(parents=True, exist_ok=True)
    png = plots.normal_spectrum(results, a.out / "normals_spectrum.png")
    text = "\n".join(["# Correlations of boundary normals (the flat model)", "",
                      f"Unit normals to the boundary at the DeepFool boundary points of {a.n} test images; fooling "
                      f"rates on {a.n_eval} other test images, random vectors of L2 norm 2 × the median "
                      "‖r*‖, clipped into [0, 1].", "", "## Singular values", "", *sv_rows, "",
                      "## Fooling rates: random vectors in the span of the top-m right singular vectors vs isotropic",
                      "", *fr_rows, "", f"![normal spectrum]({png.name})", ""])
    (a.out / "normals_spectrum.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
