"""Reproduction: SparseFool (Modas, Moosavi-Dezfooli & Frossard, CVPR 2019, Table 1 at small scale): success
rate, median % of pixels changed and time per image for λ ∈ {1, 2, 3} and δ ∈ {full box, 0.2}, on LeNet and
FC-500-150-10 (Fashion-MNIST) and the digits MLP; a figure of sparse adversarial examples. The paper reports
≈ 100 % success with a few % of the pixels on MNIST-size data. Writes repro/results/sparsefool.md + .png.

    python repro/sparsefool.py          # 3 models, 100 test images each
    python repro/sparsefool.py --quick  # mlp-digits, 10 images, λ = 3
"""

from __future__ import annotations

import time

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.attacks.sparsefool import changed_pixels, sparsefool


def main(argv=None) -> dict:
    ap = parser(__doc__, seed=False)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--models", default="lenet-fmnist,fc500-150-10-fmnist,mlp-digits")
    ap.add_argument("--lambdas", default="1,2,3")
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.n, a.lambdas = "mlp-digits", 10, "3"
    torch.set_num_threads(a.threads)
    rows, lines = [], ["| model | λ | δ | success | median % pixels | median L0 | median L1 | ms / image |",
                       "|---|---|---|---|---|---|---|---|"]
    example = None
    for name in a.models.split(","):
        clf = pretrained(name)
        x, y = data.load(dataset_of(name), "test", limit=a.n)
        for lam in [float(v) for v in a.lambdas.split(",")]:
            for delta in (None, 0.2):
                t0 = time.perf_counter()
                r = sparsefool(clf, x, y, lambda_=lam, delta=delta)
                ms = 1000 * (time.perf_counter() - t0) / x.shape[0]
                ok = r.success & (r.label_clean == r.y)
                px = 100 * float(changed_pixels(r.x, r.x_adv)[ok].median()) if ok.any() else float("nan")
                row = {"model": name, "lambda": lam, "delta": delta, "success": r.success_rate, "pixels_pct": px,
                       "l0": float(r.l0[ok].median()), "l1": float(r.l1[ok].median()), "ms": ms}
                rows.append(row)
                lines.append(f"| {name} | {lam:g} | {'box' if delta is None else delta} | {r.success_rate:.3f} | "
                             f"{px:.2f} | {row['l0']:.0f} | {row['l1']:.2f} | {ms:.1f} |")
                if example is None or (lam == 3.0 and delta is None and "lenet" in name):
                    example = r
    a.out.mkdir(parents=True, exist_ok=True)
    png = plots.adversarial_examples(example, a.out / "sparsefool_examples.png", n=6)
    text = "\n".join(["# SparseFool (CVPR 2019), small-scale reproduction", "",
                      f"{a.n} test images per model; success counts already-misclassified images (zero perturbation); "
                      "pixels = positions changed in any channel over H·W, medians over fooled, correctly classified "
                      "images.", "", *lines, "", f"![examples]({png.name})", ""])
    (a.out / "sparsefool.md").write_text(text)
    print(text)
    return {"rows": rows, "png": png}


if __name__ == "__main__":
    main()
