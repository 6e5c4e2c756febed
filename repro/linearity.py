"""Reproduction: linear or blind spots? (Goodfellow et al. 2015 vs Szegedy et al. 2014, measured with DeepFool,
Moosavi-Dezfooli et al. 2016): on every shipped classifier, the fraction of correctly classified test images that
DeepFool's *first* linearised step already fools (1 for an affine model: a "too linear" network fools in one
step), and the histogram of the number of steps (:func:`georobust.geometry.linearity.deepfool_steps`, the analysis
``georobust analyse linearity``). DeepFool: L2, overshoot 0.02, 10 candidate classes, 50 steps at most; once
unconstrained (the paper's iteration, the measure of linearity) and once with the iterates clamped into [0, 1]
(as an image attack runs), which adds steps on saturated pixels.

Writes repro/results/linearity/<model>[-clip].json/.safetensors (the per-image steps), repro/results/linearity.md and
linearity.png; ``--replot`` redraws the figure and table from the saved results.

    python repro/linearity.py            # every shipped classifier, 500 test images each
    python repro/linearity.py --quick    # mlp-digits and lenet-fmnist, 20 images
    python repro/linearity.py --replot
"""

from __future__ import annotations

import json
import time

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.geometry.linearity import DeepFoolSteps, deepfool_steps
from georobust.models import manifest


def classifiers() -> list[str]:
    """The shipped models of the classification task (the zoo's segmenter is left out, and so are the defended
    models, whose projection or detector is not the network DeepFool's steps describe)."""
    return [k for k, v in manifest().items() if data.info(v["data"]).task == "classification" and "defense" not in v]


def write(results: dict[str, DeepFoolSteps], seconds: dict[str, float], out) -> dict:
    png = plots.deepfool_steps(results, out / "linearity.png")
    top = max((max(r.histogram(), default=0) for r in results.values()), default=0)
    cols = list(range(1, min(top, 12) + 1))
    extra = bool(cols) and top > cols[-1]
    head = ["model", "attacked", "fooled", "first step", "mean steps", "median"] + [f"k={k}" for k in cols]
    head += ["k>" + str(cols[-1])] if extra else []
    lines = ["# Linear or blind spots: DeepFool's steps on the shipped models", "",
             "Correctly classified test images are attacked (L2 DeepFool, overshoot 0.02, 10 candidates, at most 50 "
             "steps; rows '(clamped)': every iterate clamped into [0, 1]). *first step*: fraction of the attacked images fooled by the first "
             "linearised step (an affine classifier scores 1.00); k=…: the share of the fooled images fooled in "
             "k steps.", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in results.items():
        s, h = r.summary(), r.histogram()
        tot = max(1, sum(h.values()))
        more = sum(v for k, v in h.items() if k > (cols[-1] if cols else 0))
        cells = [f"{h.get(k, 0) / tot:.2f}" for k in cols] + ([f"{more / tot:.2f}"] if extra else [])
        lines.append(f"| {name} | {s['attacked']} | {s['fooled']} | {s['first_step']:.3f} | {s['mean_steps']:.2f} | "
                     f"{s['median_steps']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", f"![steps]({png.name})", "",
              "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), ""]
    text = "\n".join(lines)
    (out / "linearity.md").write_text(text)
    return {"png": png, "text": text}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--models", default=None, help="comma-separated shipped models (default: every classifier)")
    ap.add_argument("--replot", action="store_true", help="redraw the figure and table from the saved results")
    a = ap.parse_args(argv)
    folder = a.out / "linearity"
    folder.mkdir(parents=True, exist_ok=True)
    models = a.models.split(",") if a.models else (["mlp-digits", "lenet-fmnist"] if a.quick else classifiers())
    if a.quick:
        a.n = 20
    results, seconds = {}, {}
    if a.replot:
        saved = sorted((p.stem for p in folder.glob("*.json") if p.name != "seconds.json"),
                       key=lambda s: (s.removesuffix("-clip"), s.endswith("-clip")))
        for stem in (a.models.split(",") if a.models else saved):
            key = stem[:-len("-clip")] + " (clamped)" if stem.endswith("-clip") else stem
            results[key] = DeepFoolSteps.load(folder / stem)

        seconds = json.loads((folder / "seconds.json").read_text()) if (folder / "seconds.json").exists() else {}
        w = write(results, seconds, a.out)
        print(w["text"])
        return {**w, "results": results}
    torch.set_num_threads(a.threads)
    for name in models:
        clf = pretrained(name)
        x, y = data.load(dataset_of(name), "test", limit=a.n)
        for clip in (False, True):
            key = name + (" (clamped)" if clip else "")
            t0 = time.perf_counter()
            results[key] = deepfool_steps(clf, x, y, clip=clip)
            seconds[key] = time.perf_counter() - t0
            results[key].save(folder / (name + ("-clip" if clip else "")))
            print(key, results[key].summary(), flush=True)
    (folder / "seconds.json").write_text(json.dumps(seconds))
    w = write(results, seconds, a.out)
    print(w["text"])
    return {**w, "results": results}


if __name__ == "__main__":
    main()
