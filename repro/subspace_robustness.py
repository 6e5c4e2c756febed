"""Reproduction: robustness in random subspaces and to random noise (Fawzi, Moosavi-Dezfooli & Frossard,
"Robustness of classifiers: from adversarial to random noise", NIPS 2016, Table 1 and §4).

β = √(m/d)·‖r*_S‖/‖r*‖ for m/d ∈ {1/4, 1/16, 1/49, 1/100} (paper: β ≈ 1 for LeNet and other deep nets), and
random-noise robustness (m = 1) against √d·‖r*‖. Writes repro/results/subspace_robustness.md + .png.

    python repro/subspace_robustness.py          # lenet-fmnist and fc500-150-10-fmnist, 100 test images
    python repro/subspace_robustness.py --quick  # mlp-digits, 10 images, seconds
"""

from __future__ import annotations

import math
import time

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.geometry.subspace import noise_robustness, subspace_robustness


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--models", default="lenet-fmnist,fc500-150-10-fmnist")
    ap.add_argument("--directions", type=int, default=5, help="random directions per image (noise)")
    a = ap.parse_args(argv)
    ratios = (1 / 4, 1 / 16, 1 / 49, 1 / 100)
    if a.quick:
        a.models, a.n, a.directions, ratios = "mlp-digits", 10, 2, (1 / 4, 1 / 16)
    torch.set_num_threads(a.threads)
    lines = ["# Random-subspace and random-noise robustness (NIPS 2016)", "",
             f"{a.n} test images per model, one independent random subspace per image and ratio (seed {a.seed}); "
             "DeepFool unconstrained (no clipping), gradients projected on S at every step. "
             "β = √(m/d)·‖r*_S‖/‖r*‖ (paper: β ≈ 1).", "",
             "| model | d | m/d | m | mean β | median β | mean ‖r*_S‖/‖r*‖ | √(d/m) | converged | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    noise_lines = ["", "## Random noise (m = 1)", "",
                   f"{a.directions} random directions per image; the label change is searched along ±v up to where "
                   "the line leaves the box [0, 1]^d (bounded) or up to the box's diameter √d (unbounded).", "",
                   "| model | search | never crosses | median ‖r_noise‖ | median ‖r_noise‖ / (√d·‖r*‖) |",
                   "|---|---|---|---|---|"]
    results, out = {}, {}
    for name in a.models.split(","):
        clf = pretrained(name)
        dset = dataset_of(name)
        x, _ = data.load(dset, "test", limit=a.n)
        t0 = time.perf_counter()
        res = subspace_robustness(clf, x, ratios=ratios, seed=a.seed)
        sec = time.perf_counter() - t0
        results[name] = res
        for row in res.table()[1:]:
            lines.append(f"| {name} | {res.d} | " + " | ".join(row[:-1]) + f" | {row[-1]} | {sec:.1f} |")
        ref = res.r_norm.repeat_interleave(a.directions) * math.sqrt(res.d)
        for bounded in (True, False):
            nr = noise_robustness(clf, x, directions=a.directions, seed=a.seed, bounded=bounded)
            c = nr.crossed & (ref > 0)
            med = float(nr.r_noise[c].median()) if bool(c.any()) else float("nan")
            rel = float((nr.r_noise[c] / ref[c]).median()) if bool(c.any()) else float("nan")
            noise_lines.append(f"| {name} | {'bounded' if bounded else 'unbounded'} | {nr.never_crossed:.3f} | "
                               f"{med:.4g} | {rel:.3f} |")
            out[(name, bounded)] = (nr.never_crossed, rel)
        out[name] = res.beta
    a.out.mkdir(parents=True, exist_ok=True)
    png = plots.subspace_ratios(results, a.out / "subspace_robustness.png")
    lines += noise_lines + ["", f"![‖r*_S‖/‖r*‖ against m/d]({png.name})", ""]
    text = "\n".join(lines)
    (a.out / "subspace_robustness.md").write_text(text)
    print(text)
    return out


if __name__ == "__main__":
    main()
