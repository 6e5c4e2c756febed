"""Reproduction: curvature profiles of the loss and principal curvatures of the decision boundary of the
shipped models (Moosavi-Dezfooli et al., CVPR 2019, Fig. 2; Fawzi et al., NIPS 2016; ICLR 2018).

Per model: the mean top-10/bottom-10 eigenvalues of ∇²ₓ loss (Lanczos); the principal curvatures at the
DeepFool boundary point (zero for the piecewise-linear ReLU/max-pool models, measured also on a
Softplus(β)-smoothed copy); the curvature along random tangent directions, ``uᵀ∇²φ u/‖∇φ‖``, relative to
``1/‖r*‖`` — "almost flat along random directions". Writes repro/results/curvature_profiles.md + .png.

    python repro/curvature_profiles.py          # mlp-digits, lenet-fmnist, fc500-150-10-fmnist; 100 images
    python repro/curvature_profiles.py --quick  # mlp-digits, 8 images
"""

from __future__ import annotations

import time

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.geometry.curvature import boundary_curvature, curvature_profile, smoothed
from georobust.geometry.hessian import HVP, logit_diff_fn
from georobust.geometry.normals import boundary_points


def random_tangent_curvature(model, bp, *, directions: int, seed: int) -> torch.Tensor:
    """``|uᵀ∇²φ u|/‖∇φ‖ · ‖r*‖`` for ``directions`` random unit tangent vectors ``u`` per boundary point."""
    h = HVP(logit_diff_fn(model, bp.orig, bp.other), bp.point)
    g = h.grad.flatten(1)
    gn = g.norm(dim=1)
    nvec = g / gn.clamp_min(1e-30)[:, None]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(directions):
        u = torch.randn(g.shape, generator=gen).to(g)
        u = u - (u * nvec).sum(1, keepdim=True) * nvec
        u = u / u.norm(dim=1, keepdim=True)
        out.append((h.flat(u) * u).sum(1).abs() / gn.clamp_min(1e-30) * bp.r_norm)
    return torch.stack(out, 1)


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--models", default="mlp-digits,lenet-fmnist,fc500-150-10-fmnist")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--beta", type=float, default=10.0, help="Softplus β of the smoothed copies")
    ap.add_argument("--directions", type=int, default=20)
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.n, a.k, a.directions = "mlp-digits", 8, 4, 4
    torch.set_num_threads(a.threads)
    prof_rows = ["| model | mean λ₁ | median λ₁ | mean λ₂ | mean λ₁₀ | min λ (mean) | seconds |", "|---|---|---|---|---|---|---|"]
    bnd_rows = ["| model | boundary of | converged | median ‖r*‖ | median κ_max | median κ_min | "
                "median max|κ|·‖r*‖ | median |κ(random u)|·‖r*‖ |", "|---|---|---|---|---|---|---|---|"]
    profiles, curvs, out = {}, {}, {}
    for name in a.models.split(","):
        clf = pretrained(name)
        dset = dataset_of(name)
        x, y = data.load(dset, "test", limit=a.n)
        t0 = time.perf_counter()
        p = curvature_profile(clf, x, y, k=a.k, seed=a.seed)
        sec = time.perf_counter() - t0
        profiles[name] = p
        v = p.values
        prof_rows.append(f"| {name} | {float(v[:, 0].mean()):.4g} | {float(v[:, 0].median()):.4g} | "
                         f"{float(v[:, 1].mean()):.4g} | {float(v[:, min(9, a.k - 1)].mean()):.4g} | "
                         f"{float(v[:, -1].mean()):.3g} | {sec:.1f} |")
        for label, beta in (("ReLU model", None), (f"Softplus β={a.beta:g} copy", a.beta)):
            bc = boundary_curvature(clf, x, k=a.k, seed=a.seed, softplus_beta=beta)
            m = clf if beta is None else smoothed(clf, beta)
            bp = boundary_points(m, x)
            rnd = random_tangent_curvature(m, bp, directions=a.directions, seed=a.seed)
            s = bc.summary()
            c = bp.converged
            rmed = float(rnd[c].median()) if bool(c.any()) else float("nan")
            bnd_rows.append(f"| {name} | {label} | {s['converged']}/{s['n']} | {s['median_r']:.4g} | "
                            f"{s['median_kappa_max']:.4g} | {s['median_kappa_min']:.4g} | "
                            f"{s['median_abs_kappa_r']:.4g} | {rmed:.4g} |")
            curvs[f"{name} ({label})"] = bc
            out[(name, beta)] = (s["median_abs_kappa_r"], rmed)
    a.out.mkdir(parents=True, exist_ok=True)
    png1 = plots.loss_curvature_profiles(profiles, a.out / "curvature_profiles.png")
    png2 = plots.boundary_curvatures({k: v for k, v in curvs.items() if "Softplus" in k},
                                     a.out / "boundary_curvatures.png")
    text = "\n".join([
        "# Curvature profiles and boundary curvatures", "",
        f"{a.n} test images per model. Loss: top-{a.k} and bottom-{a.k} eigenvalues of the input Hessian of the "
        "cross-entropy at the true label (batched Lanczos over HVPs).", "", *prof_rows, "",
        "## Principal curvatures of the decision boundary at the DeepFool point", "",
        "κ: eigenvalues of the Hessian of f_k̂ − f_l on the tangent space over the gradient norm (negative: the "
        "boundary bends around x). ReLU/max-pool models are piecewise linear, so their κ is exactly 0; the "
        "smoothed copies show the curvature a smooth network of the same weights has. The last column is the "
        "curvature along random tangent directions: ≪ 1 means the boundary is almost flat along random "
        "directions on the scale of ‖r*‖, while the extreme principal curvatures are larger.", "", *bnd_rows, "",
        f"![curvature profiles]({png1.name})", "", f"![boundary curvatures]({png2.name})", ""])
    (a.out / "curvature_profiles.md").write_text(text)
    print(text)
    return out


if __name__ == "__main__":
    main()
