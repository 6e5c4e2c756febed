"""Reproduction: geometric robustness with ManiFool (Kanbak, Moosavi-Dezfooli & Frossard, "Geometric robustness
of deep networks: analysis and improvement", CVPR 2018, §4–5 at small scale).

1. The invariance score (the mean geodesic distance of the ManiFool examples of correctly classified test images,
   :func:`georobust.attacks.manifool.invariance_score`) of every shipped model under each transformation set —
   one table; the paper's observation that geometric robustness grows with capacity is read off the zoo's
   architectures (mlp vs LeNet on the same data).
2. A figure of the fooling transformations (:func:`georobust.plots.spatial_examples`).
3. ``--finetune``: the paper's improvement — fine-tune ``lenet-fmnist`` on ManiFool examples of training images
   (each mini-batch: its clean images and their ManiFool examples, cross-entropy on both) and compare the
   invariance score and the clean accuracy before and after; ``--save`` writes the fine-tuned weights as
   ``lenet-fmnist-manifool`` beside the shipped ones.

Writes repro/results/manifool_invariance.md + manifool_examples.png.

    python repro/manifool_invariance.py                       # every shipped model, 100 test images, 6 sets
    python repro/manifool_invariance.py --finetune --save     # + fine-tuning lenet-fmnist on ManiFool examples
    python repro/manifool_invariance.py --quick               # 2 models, 4 images, 2 sets, a 1-batch fine-tune
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import dataset_of, parser

from georobust import data, plots, pretrained
from georobust.attacks.manifool import invariance_score, manifool
from georobust.core import transforms as T
from georobust.models import manifest
from georobust.models.io import load_weights, save_weights

WEIGHTS = Path(__file__).resolve().parents[1] / "georobust" / "models" / "weights"
#: ManiFool's trust region while generating training examples: none (large linearised steps, fast)
TRAIN_MAX_STEP = 1e6


def score(clf, x, y, transform, **kw):
    t0 = time.perf_counter()
    r = manifool(clf, x, y, transform=transform, **kw)
    correct = r.label_clean == r.y
    fooled = float((r.success & correct).double().sum() / correct.sum().clamp_min(1))
    return r, {"score": invariance_score(r), "fooled": fooled, "seconds": time.perf_counter() - t0}


def with_caption(r):
    """The result with ``params["transform"]`` per sample (θ) and ``transform_names``, as plots.spatial_caption
    reads them (ManiFool's own ``params["transform"]`` is the set's name)."""
    p = dict(r.params)
    p["transform"] = [t if t is not None else None for t in p["theta"]]
    p["transform_names"] = p["parameter_names"]
    return dataclasses.replace(r, params=p)


def finetune(clf, x_train, y_train, *, transform, epochs, batch, lr, max_iter, candidates, seed, log):
    """Fine-tune ``clf`` (a copy) on its ManiFool examples, regenerated each mini-batch against the current
    weights: loss = CE(clean) + CE(ManiFool examples), Adam. Returns the model and the wall time."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    t0 = time.perf_counter()
    for ep in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=g)
        for b in range(0, x_train.shape[0], batch):
            idx = order[b:b + batch]
            xb, yb = x_train[idx], y_train[idx]
            clf.eval()
            # the training examples: a fast ManiFool (few steps, one target, no trust region)
            r = manifool(clf, xb, yb, transform=transform, max_iter=max_iter, candidates=candidates,
                         max_step=TRAIN_MAX_STEP)
            xa = r.x_adv[r.success]
            clf.train()
            loss = F.cross_entropy(clf(xb), yb)
            if xa.shape[0]:
                loss = loss + F.cross_entropy(clf(xa), yb[r.success])
            opt.zero_grad()
            loss.backward()
            opt.step()
            log(f"epoch {ep + 1} batch {b // batch + 1}: loss {float(loss.detach()):.3f}, "
                f"ManiFool fooled {int(r.success.sum())}/{len(idx)}, {time.perf_counter() - t0:.0f}s")
    clf.eval()
    return clf, time.perf_counter() - t0


def accuracy(clf, x, y) -> float:
    with torch.no_grad():
        return float((clf(x).argmax(1) == y).double().mean())


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=100, help="test images per model")
    ap.add_argument("--sets", nargs="+", default=list(T.TRANSFORM_SETS))
    ap.add_argument("--models", nargs="*", default=None, help="default: every shipped model (none: only --finetune)")
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--finetune", action="store_true", help="fine-tune lenet-fmnist on ManiFool examples")
    ap.add_argument("--train-n", type=int, default=2048, help="training images seen by the fine-tuning")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ft-set", default="rotation-translation")
    ap.add_argument("--save", action="store_true", help="write lenet-fmnist-manifool weights beside the shipped ones")
    ap.add_argument("--finetuned", type=Path, default=None,
                    help="evaluate these fine-tuned weights (a .safetensors of --save) instead of training")
    a = ap.parse_args(argv)
    models = a.models if a.models is not None else [m for m in manifest() if not m.endswith("-manifool")]
    if a.quick:
        a.n, a.sets, a.candidates = 4, ["translation", "rotation-translation"], 2
        models = a.models or ["mlp-digits", "lenet-fmnist"]
        a.train_n, a.epochs, a.save = 16, 1, False
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    log = print
    table: dict[str, dict[str, dict]] = {}
    examples = None
    for name in models:
        clf = pretrained(name)
        if clf.input_shape is None or len(clf.input_shape) != 3:
            log(f"{name}: inputs are not images, skipped")
            continue
        x, y = data.load(dataset_of(name), "test", limit=a.n)
        table[name] = {}
        for s in a.sets:
            r, row = score(clf, x, y, s, candidates=a.candidates)
            table[name][s] = row
            log(f"{name:22s} {s:22s} invariance {row['score']:.4f} fooled {row['fooled']:.2f} "
                f"({row['seconds']:.1f}s)")
            if name == "lenet-fmnist" and s == "rotation-translation":
                examples = r
    ft = None
    if a.finetune or a.quick or a.finetuned is not None:
        base = pretrained("lenet-fmnist")
        xt, yt = data.load("fashion-mnist", "train", limit=a.train_n)
        xs, ys = data.load("fashion-mnist", "test", limit=a.n)
        xacc, yacc = data.load("fashion-mnist", "test", limit=200 if a.quick else 2000)
        if a.finetuned is not None:
            model = load_weights(a.finetuned)
            secs = float(json.loads(a.finetuned.with_suffix(".json").read_text()).get("train_seconds", float("nan")))
        else:
            model, secs = finetune(pretrained("lenet-fmnist"), xt, yt, transform=a.ft_set, epochs=a.epochs,
                                   batch=8 if a.quick else 64, lr=a.lr, max_iter=10, candidates=1, seed=a.seed,
                                   log=log)
        ft = {"seconds": secs, "train_n": a.train_n, "epochs": a.epochs, "lr": a.lr, "set": a.ft_set,
              "accuracy_before": accuracy(base, xacc, yacc), "accuracy_after": accuracy(model, xacc, yacc),
              "n_accuracy": int(xacc.shape[0]), "scores": {}}
        for s in a.sets:
            ft["scores"][s] = (score(base, xs, ys, s, candidates=a.candidates)[1],
                               score(model, xs, ys, s, candidates=a.candidates)[1])
        if a.save and a.finetuned is None:
            path = WEIGHTS / "lenet-fmnist-manifool.safetensors"
            cmd = (f"python repro/manifool_invariance.py --finetune --save --train-n {a.train_n} --epochs {a.epochs} "
                   f"--lr {a.lr} --ft-set {a.ft_set} --threads {a.threads}")
            save_weights(model, path, arch="lenet", input_shape=(1, 28, 28), num_classes=10,
                         sidecar={"arch": "lenet", "data": "fashion-mnist", "seed": a.seed, "epochs": a.epochs,
                                  "objective": "manifool fine-tuning of lenet-fmnist", "command": cmd,
                                  "test_accuracy_2000": ft["accuracy_after"], "train_seconds": secs,
                                  "invariance": {s: v[1]["score"] for s, v in ft["scores"].items()}})
            ft["saved"] = str(path)
    a.out.mkdir(parents=True, exist_ok=True)
    png = None
    if examples is not None:
        png = plots.spatial_examples(with_caption(examples), a.out / "manifool_examples.png",
                                     classes=data.info("fashion-mnist").classes)
    lines = ["| model | " + " | ".join(a.sets) + " |", "|---|" + "---|" * len(a.sets)]
    for name, rows in table.items():
        cells = [f"{rows[s]['score']:.3f} ({rows[s]['fooled']:.2f})" for s in a.sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = ["# ManiFool: invariance scores of the shipped models", "",
            f"{a.n} test images per model, ManiFool with {a.candidates} target classes, analytic Jacobian, black "
            "outside the image. Cell: invariance score (mean geodesic distance / ‖x‖ of the fooled, correctly "
            "classified images) and, in brackets, the fraction of them fooled. Larger = more invariant.", "",
            *lines, ""]
    if ft is not None:
        text += ["## Fine-tuning lenet-fmnist on ManiFool examples", "",
                 f"{ft['train_n']} training images × {ft['epochs']} epoch(s), ManiFool ({ft['set']}, 10 steps, one "
                 f"target, no trust region) regenerated per mini-batch, CE(clean) + CE(ManiFool), Adam lr {ft['lr']}, 1 thread: "
                 f"{ft['seconds']:.0f} s. Clean accuracy on {ft['n_accuracy']} test images: "
                 f"{ft['accuracy_before']:.4f} → {ft['accuracy_after']:.4f}.", "",
                 "| set | invariance before | after | fooled before | after |", "|---|---|---|---|---|"]
        for s, (b, f) in ft["scores"].items():
            text.append(f"| {s} | {b['score']:.3f} | {f['score']:.3f} | {b['fooled']:.2f} | {f['fooled']:.2f} |")
        text.append("")
    if png is not None:
        text += [f"![examples]({png.name})", ""]
    out = "\n".join(text)
    (a.out / "manifool_invariance.md").write_text(out)
    (a.out / "manifool_invariance.json").write_text(json.dumps({"table": table, "finetune": ft}, indent=1,
                                                              default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    print(out)
    return {"table": table, "finetune": ft}


if __name__ == "__main__":
    main()
