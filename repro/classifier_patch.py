"""The adversarial patch of Brown, Mané, Roy, Abadi & Gilmer ("Adversarial patch", NIPS 2017 workshop) at small
scale: a universal, location-, scale- and rotation-invariant patch on a Fashion-MNIST classifier.

Two patches for ``lenet-fmnist`` (the paper's circular mask): a *targeted* one (class ``--target``, "bag" by
default) and an *untargeted* one, each optimised with Adam over EOT (random location, scale in
``--train-scale`` as a fraction of the image side, rotation ±22.5°) on Fashion-MNIST *training* images. Both are
then evaluated on held-out *test* images at each fixed scale of ``--scales`` (the paper's Figure 2: success
versus the share of the image the patch covers), at ``--draws`` random placements per image, the model re-run on
every patched image; beside it, a uniform-noise patch of the same shape at the same placements (an occluder, not
an adversarial patch) and no patch at all. The figure shows the targeted patch and held-out images with it.

    python repro/classifier_patch.py            # full: writes repro/results/classifier_patch.{md,png} (~minutes)
    python repro/classifier_patch.py --quick    # seconds: mlp-digits, 20 steps, 60 images
"""

from __future__ import annotations

import sys
import time

import torch
from _common import dataset_of, parser

import georobust as gr
from georobust import plots
from georobust.attacks.patch import adversarial_patch, evaluate_patch

FMNIST = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def run(model: str, *, target: int, n_train: int, n_test: int, steps: int, batch: int, lr: float, train_scale,
        scales, draws: int, seed: int, out, quick: bool) -> list[dict]:
    clf = gr.pretrained(model)
    data = dataset_of(model)
    x_train, _ = gr.data.load(data, "train", limit=n_train)
    x_test, y_test = gr.data.load(data, "test", limit=n_test)
    classes = FMNIST if data == "fashion-mnist" else None
    rows = []
    for tgt in (target, None):
        t0 = time.perf_counter()
        res = adversarial_patch(clf, x_test, y_test, target=tgt, x_train=x_train, steps=steps, batch_size=batch,
                                lr=lr, scale=train_scale, mask="circle", seed=seed)
        secs = time.perf_counter() - t0
        kind = "untargeted" if tgt is None else f"targeted ({classes[tgt] if classes else tgt})"
        if tgt is not None:
            plots.adversarial_patch(res, out / ("classifier_patch_quick.png" if quick else "classifier_patch.png"),
                                    classes=classes, n=8)
        g = torch.Generator().manual_seed(seed + 1)
        noise = clf.bounds[0] + (clf.bounds[1] - clf.bounds[0]) * torch.rand(res.patch.shape, generator=g)
        s = res.summary()
        rows.append({"patch": kind, "scale": f"{train_scale[0]:g}-{train_scale[1]:g} (result)",
                     "area": s["mean_patch_area"], "success": s["held_out_success_rate"],
                     "random": s["held_out_success_random_patch"], "none": s["held_out_success_without_patch"],
                     "seconds": secs, "n": int(x_test.shape[0])})
        for sc in scales:
            kw = dict(target=tgt, mask="circle", scale=sc, rotation=22.5, draws=draws, seed=seed + 2)
            e = evaluate_patch(clf, x_test, res.patch, y_test, **kw)
            r = evaluate_patch(clf, x_test, noise, y_test, **kw)
            rows.append({"patch": kind, "scale": f"{sc:g}", "area": e["mean_area"], "success": e["success_rate"],
                         "random": r["success_rate"], "none": e["success_without_patch"], "seconds": float("nan"),
                         "n": e["n"] * draws})
    return rows


def table(rows: list[dict], head: str) -> str:
    lines = [head, "", "| patch | scale (side / image side) | covered area | success, adversarial patch | "
             "success, random patch | success, no patch | evaluations |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['patch']} | {r['scale']} | {r['area']:.3f} | {r['success']:.3f} | {r['random']:.3f} | "
                     f"{r['none']:.3f} | {r['n']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    ap = parser(__doc__)
    ap.add_argument("--model", default="lenet-fmnist")
    ap.add_argument("--target", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--train-scale", type=float, nargs=2, default=[0.2, 0.5])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--draws", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.quick:
        a.model, a.n_train, a.n_test, a.steps, a.batch, a.draws, a.scales = "mlp-digits", 100, 60, 20, 16, 1, [0.5]
        a.train_scale = [0.4, 0.6]
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run(a.model, target=a.target, n_train=a.n_train, n_test=a.n_test, steps=a.steps, batch=a.batch, lr=a.lr,
               train_scale=tuple(a.train_scale), scales=a.scales, draws=a.draws, seed=a.seed, out=a.out,
               quick=a.quick)
    head = (f"Adversarial patch (Brown et al. 2017) on {a.model}: circle, trained on {a.n_train} training images "
            f"({a.steps} Adam steps of {a.batch}, lr {a.lr:g}, scale {a.train_scale[0]:g}-{a.train_scale[1]:g}, "
            f"rotation ±22.5°), evaluated on {a.n_test} held-out test images × {a.draws} random placements per "
            f"scale (the first row of each patch: the attack's own result, one placement per image in the training "
            f"range). Success: predicted as the target (targeted) / off the true label (untargeted), by re-running "
            f"the model. `python repro/classifier_patch.py{' --quick' if a.quick else ''}`, "
            f"{time.perf_counter() - t0:.0f} s on {a.threads} thread(s).")
    text = table(rows, head)
    print(text)
    if not a.quick:
        (a.out / "classifier_patch.md").write_text(text)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
