"""Reproduction: rotations and translations suffice (Engstrom, Tran, Tsipras, Schmidt & Mądry, "Exploring the
landscape of spatial robustness", ICML 2019, Table 1 at small scale): clean accuracy, accuracy under the random
worst-of-10 and under the exhaustive grid (±3 px, ±30°, 5 × 5 × 31 = 775 transforms) of the shipped
Fashion-MNIST models, and robust accuracy versus the grid radius (one grid run gives the curve).

Engstrom et al. report on MNIST 99.3 % clean → 73.3 % under worst-of-10 and 26.0 % under the grid (standard
training); Fashion-MNIST models are less invariant, so the drops here are larger. Writes
repro/results/spatial_grid.md + spatial_grid_curve.png + spatial_grid_examples.png.

    python repro/spatial_grid.py          # the Fashion-MNIST models of MODELS, 500 test images
    python repro/spatial_grid.py --models lenet-fmnist,georobust/models/weights/lenet-fmnist-spatial.safetensors
    python repro/spatial_grid.py --quick  # lenet-fmnist, 20 images, a 3 × 3 × 7 grid
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.evaluation.suite import evaluate_sized
from georobust.models import manifest
from georobust.models.io import load_weights

#: the Fashion-MNIST models compared: standard, Lp-robust (AT, CURE), geometrically fine-tuned (ManiFool; spatial
#: adversarial training, lenet-fmnist-spatial, where the zoo ships it), and the MLP
MODELS = ("lenet-fmnist", "lenet-fmnist-at", "lenet-fmnist-cure", "lenet-fmnist-manifool", "lenet-fmnist-spatial",
          "fc500-150-10-fmnist")


def load_model(name: str):
    """``(name, classifier, data set)``: a shipped model by name, or weights by path (``.safetensors``, named by
    the file's stem, Fashion-MNIST unless the manifest knows the stem)."""
    if name.endswith(".safetensors"):
        stem = Path(name).stem
        return stem, load_weights(Path(name)).eval(), dataset_of(stem) if stem in manifest() else "fashion-mnist"
    return name, pretrained(name), dataset_of(name)
RADII = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--merge-from", nargs="*", type=Path, default=[],
                    help="add the rows of these spatial_grid.json files (runs split over processes; same -n, --k, "
                         "--seed and grid) for models this run does not evaluate")
    a = ap.parse_args(argv)
    grid = {"num_translations": 5, "num_rotations": 31}
    if a.quick:
        a.n, a.models, grid = 20, "lenet-fmnist", {"num_translations": 3, "num_rotations": 7}
    torch.set_num_threads(a.threads)
    rows, curves = [], {}
    last = None
    names = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else []
    if a.models == ",".join(MODELS):  # the default list: the models this zoo ships
        names = [m for m in names if m in manifest()]
    for spec in names:
        name, clf, dname = load_model(spec)
        x, y = data.load(dname, "test", limit=a.n)
        t0 = time.perf_counter()
        ev, res = evaluate_sized(clf, x, y, attacks=["spatial-worst-of-k", "spatial-grid"], eps=list(RADII),
                                 options={"spatial-worst-of-k": {"k": a.k, "seed": a.seed}, "spatial-grid": grid},
                                 model_name=name, data_name=dname)
        secs = time.perf_counter() - t0
        g = res["spatial-grid"]
        rows.append({"model": name, "clean": ev.clean_accuracy, "worst_of_k": ev.robust["spatial-worst-of-k"][-1],
                     "grid": ev.robust["spatial-grid"][-1], "grid_size": g.params["grid_size"],
                     "median_radius": ev.details["spatial-grid"]["median_size"], "seconds": secs,
                     "grid_seconds": ev.details["spatial-grid"]["seconds"],
                     "transforms_per_image": float(g.iterations.double().mean())})
        curves[name] = ev.robust["spatial-grid"]
        last = (name, g, dname)
    setting = {"n": a.n, "k": a.k, "seed": a.seed, "grid": grid}
    for path in a.merge_from:
        got = json.loads(path.read_text())
        if got["setting"] != setting:
            raise SystemExit(f"--merge-from {path}: another setting {got['setting']} (this run: {setting})")
        for r in got["rows"]:
            if r["model"] not in curves:
                rows.append(r)
                curves[r["model"]] = got["curves"][r["model"]]
    order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(key=lambda r: order.get(r["model"], len(order)))
    curves = {r["model"]: curves[r["model"]] for r in rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "spatial_grid.json").write_text(json.dumps({"setting": setting, "rows": rows, "curves": curves,
                                                          "radii": list(RADII)}, indent=1))
    fig_curve = a.out / "spatial_grid_curve.png"
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, c in curves.items():
        ax.plot(RADII, c, marker="o", label=name)
    ax.set_xlabel("grid radius max(|t|/3 px, |angle|/30°)")
    ax.set_ylabel("robust accuracy under the grid")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_curve, dpi=110)
    plt.close(fig)
    ex = a.out / "spatial_grid_examples.png"  # kept from an earlier run when this one evaluates no model
    if last is not None:
        ex = plots.spatial_examples(last[1], ex, classes=data.info(last[2]).classes)
    gdesc = f"{grid['num_translations']} × {grid['num_translations']} × {grid['num_rotations']}"
    lines = ["| model | clean | worst-of-" + str(a.k) + " | grid (" + gdesc + ") | median fooling radius "
             "| transforms tried / image | grid seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        med = "—" if r["median_radius"] is None else f"{r['median_radius']:.3f}"
        lines.append(f"| {r['model']} | {r['clean']:.3f} | {r['worst_of_k']:.3f} | {r['grid']:.3f} | {med} | "
                     f"{r['transforms_per_image']:.0f} of {r['grid_size']} | {r['grid_seconds']:.1f} |")
    curve_lines = ["| model | " + " | ".join(f"r≤{b:g}" for b in RADII) + " |", "|---" * (len(RADII) + 1) + "|"]
    for name, c in curves.items():
        curve_lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in c) + " |")
    text = "\n".join([
        "# Spatial robustness (Engstrom et al., ICML 2019): clean vs worst-of-k vs the grid", "",
        f"{a.n} Fashion-MNIST test images per model; transforms ±3 px, ±30°, bilinear, black outside the image; "
        f"worst-of-{a.k} draws {a.k} transforms per image uniformly from the same box (seed {a.seed}); the grid is "
        "exhaustive. Accuracy under an attack = correct and no tried transform fools it. "
        "Engstrom et al. (MNIST, standard CNN): 99.3% clean, 73.3% worst-of-10, 26.0% grid.", "", *lines, "",
        "Robust accuracy under the grid versus its radius (the grid scaled by r; one run per model):", "",
        *curve_lines, "", f"![curve]({fig_curve.name})", "", f"![examples]({ex.name})", ""])
    (a.out / "spatial_grid.md").write_text(text)
    print(text)
    return {"rows": rows, "curves": curves, "radii": list(RADII)}


if __name__ == "__main__":
    main()
