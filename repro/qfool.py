"""Reproduction: QFool (Liu, Moosavi-Dezfooli & Frossard, ICCV 2019, Fig. 4 at small scale): median L2 of the
perturbation versus the number of label queries (100 … 10,000) for QFool — the paper's Algorithm 1 and the
pooled variant, each in the full space and with low-frequency DCT probes — and HopSkipJump, with DeepFool's
white-box norm as the floor. One run per attack gives the whole
curve (``result.history``). Writes repro/results/qfool.md + qfool_queries.png.

    python repro/qfool.py          # lenet-fmnist, 20 test images, up to 10,000 queries
    python repro/qfool.py --quick  # mlp-digits, 4 images, up to 300 queries
"""

from __future__ import annotations

import time

import torch
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.attacks.deepfool import deepfool
from georobust.attacks.hopskipjump import hopskipjump
from georobust.attacks.qfool import qfool


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--model", default="lenet-fmnist")
    ap.add_argument("--max-queries", type=int, default=10_000)
    ap.add_argument("--subspace", type=int, default=12)
    a = ap.parse_args(argv)
    if a.quick:
        a.model, a.n, a.max_queries, a.subspace = "mlp-digits", 4, 300, 4
    torch.set_num_threads(a.threads)
    clf = pretrained(a.model)
    x, _ = data.load(dataset_of(a.model), "test", limit=a.n)
    cps = [c for c in (100, 200, 500, 1000, 2000, 5000, 10_000) if c < a.max_queries] + [a.max_queries]
    df = deepfool(clf, x)
    floor = float(df.l2[df.success].median())
    curves, secs = {}, {}
    sub = {"subspace": a.subspace}
    for name, fn, kw in [("QFool", qfool, {}), (f"QFool subspace {a.subspace}", qfool, sub),
                         ("QFool pooled", qfool, {"variant": "pooled"}),
                         (f"QFool pooled subspace {a.subspace}", qfool, {"variant": "pooled", **sub}),
                         ("HopSkipJump", hopskipjump, {})]:
        t0 = time.perf_counter()
        r = fn(clf, x, max_queries=a.max_queries, checkpoints=cps, seed=a.seed, **kw)
        secs[name] = time.perf_counter() - t0
        curves[name] = [float(v) for v in r.history.median(0).values]
    a.out.mkdir(parents=True, exist_ok=True)
    png = plots.norm_vs_queries(curves, cps, a.out / "qfool_queries.png", floor=floor,
                                title=f"{a.model}, {a.n} images")
    lines = ["| attack | " + " | ".join(str(c) for c in cps) + " | seconds |", "|---" * (len(cps) + 2) + "|"]
    for name, med in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in med) + f" | {secs[name]:.1f} |")
    lines.append("| DeepFool (white-box floor) | " + " | ".join(f"{floor:.3f}" for _ in cps) + " | |")
    text = "\n".join(["# QFool (ICCV 2019): median L2 versus label queries", "",
                      f"{a.model}, {a.n} test images, untargeted; every query counted (clean label, initial "
                      "noise, bisections, probes, line searches). \"QFool\" is the paper's Algorithm 1 "
                      "(`variant=\"paper\"`), \"pooled\" the variant that pools the normal estimates of all "
                      "rounds (`variant=\"pooled\"`).", "", *lines, "", f"![curve]({png.name})", ""])
    (a.out / "qfool.md").write_text(text)
    print(text)
    return {"curves": curves, "deepfool": floor, "checkpoints": cps, "png": png}


if __name__ == "__main__":
    main()
