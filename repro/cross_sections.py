"""Reproduction: a gallery of normal cross-sections of the decision boundary (Fawzi et al., NIPS 2016 Fig. 6;
Moosavi-Dezfooli et al., ICLR 2018 Fig. 2): decision regions on the plane of the DeepFool normal r*/‖r*‖ and a
random direction (at two scales), or the direction of largest principal curvature (of a Softplus-smoothed
copy, since ReLU boundaries have zero curvature). Writes repro/results/cross_sections.md + PNGs.

    python repro/cross_sections.py          # lenet-fmnist, 6 images, 151×151 grids
    python repro/cross_sections.py --quick  # mlp-digits, 3 images, 21×21
"""

from __future__ import annotations

import time

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.geometry.cross_section import cross_section


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=6)
    ap.add_argument("--model", default="lenet-fmnist")
    ap.add_argument("--resolution", type=int, default=151)
    ap.add_argument("--beta", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.quick:
        a.model, a.n, a.resolution = "mlp-digits", 3, 21
    torch.set_num_threads(a.threads)
    clf = pretrained(a.model)
    dset = dataset_of(a.model)
    x, _ = data.load(dset, "test", limit=a.n)
    classes = data.info(dset).classes
    a.out.mkdir(parents=True, exist_ok=True)
    rows = ["| section | second direction | axes (× ‖r*‖) | images whose section shows only 2 classes | "
            "seconds | figure |", "|---|---|---|---|---|---|"]
    out = {}
    for tag, second, scale, beta in (("random", "random", (2.0, 2.0), None),
                                     ("random-wide", "random", (2.0, 20.0), None),
                                     ("curvature", "curvature", (2.0, 2.0), a.beta)):
        t0 = time.perf_counter()
        cs = cross_section(clf, x, second=second, resolution=a.resolution, scale=scale, seed=a.seed,
                           softplus_beta=beta)
        sec = time.perf_counter() - t0
        png = plots.cross_sections(cs, a.out / f"cross_sections_{tag}.png", n=a.n, classes=classes,
                                   title=f"{a.model}: normal × {cs.second_kind}")
        two = sum(int(cs.labels[i].unique().numel() <= 2) for i in range(cs.labels.shape[0]))
        rows.append(f"| {tag} | {cs.second_kind} | {scale[0]:g} × {scale[1]:g} | {two}/{cs.labels.shape[0]} | "
                    f"{sec:.1f} | ![{tag}]({png.name}) |")
        out[tag] = cs
    text = "\n".join(["# Normal cross-sections", "",
                      f"{a.model}, {a.n} test images, {a.resolution}×{a.resolution} grids centred at x (★); vertical "
                      "axis: the DeepFool normal (the dotted line is ‖r*‖), horizontal: the second direction. "
                      "Points are not clipped into [0, 1]. The third column counts the sections in which only "
                      "the class of x and one other class appear.", "", *rows, ""])
    (a.out / "cross_sections.md").write_text(text)
    print(text)
    return out


if __name__ == "__main__":
    main()
