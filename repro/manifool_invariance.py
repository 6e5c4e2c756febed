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
4. ``--spatial-at``: the comparison the paper's improvement calls for — spatial adversarial training (Engstrom et
   al., ICML 2019: the objective ``spatial-adversarial``, worst of k = 10 random rotations+translations per
   training image) of ``lenet-fmnist`` with :func:`georobust.defenses.fit` at the same budget (``--train-n``
   images × ``--epochs``, Adam ``--lr``, batches of 64); ``--spatial-save PATH`` writes its weights (the shipped
   ``lenet-fmnist-spatial``), and the model becomes a row of the table. ``--weights PATH ...`` adds rows for
   weights not (yet) in the zoo's manifest (named by the file's stem).

Writes repro/results/manifool_invariance.md + manifool_examples.png.

    python repro/manifool_invariance.py                       # every shipped model, 100 test images, 6 sets
    python repro/manifool_invariance.py --finetune --save     # + fine-tuning lenet-fmnist on ManiFool examples
    python repro/manifool_invariance.py --spatial-at --models --spatial-save georobust/models/weights/lenet-fmnist-spatial.safetensors
    python repro/manifool_invariance.py -n 50 --weights georobust/models/weights/lenet-fmnist-spatial.safetensors
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
from georobust.defenses import fit
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


def spatial_finetune(clf, x_train, y_train, *, epochs, lr, seed, batch, options=None):
    """Spatial adversarial training of ``clf`` (in place) with the ``spatial-adversarial`` objective (Engstrom et
    al.: worst of k random rotations+translations, k = 10, ±3 px, ±30°), Adam at a constant ``lr``. Returns the
    model and the wall time."""
    t0 = time.perf_counter()
    fit(clf, (x_train, y_train), "spatial-adversarial", epochs=epochs, optimizer="adam", lr=lr, schedule="constant",
        batch_size=batch, seed=seed, objective_options=options or {})
    clf.eval()
    return clf, time.perf_counter() - t0


def load_model(name: str):
    """A shipped model by name, or weights by path (``.safetensors``; named by the file's stem)."""
    if name.endswith(".safetensors"):
        clf = load_weights(Path(name))
        clf.eval()
        return Path(name).stem, clf
    return name, pretrained(name)


def accuracy(clf, x, y) -> float:
    with torch.no_grad():
        return float((clf(x).argmax(1) == y).double().mean())


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("-n", type=int, default=100, help="test images per model")
    ap.add_argument("--sets", nargs="*", default=list(T.TRANSFORM_SETS), help="none: no scores (training only)")
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
    ap.add_argument("--weights", nargs="*", default=[], help="more rows: weights files (.safetensors) not in the zoo")
    ap.add_argument("--spatial-at", action="store_true",
                    help="spatial adversarial training of lenet-fmnist (Engstrom et al., worst-of-10) at the same budget")
    ap.add_argument("--spatial-save", type=Path, default=None, help="write the --spatial-at weights here (.safetensors)")
    ap.add_argument("--spatial-option", nargs="*", default=[], metavar="KEY=VALUE",
                    help="options of the spatial-adversarial objective (e.g. grid=true)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows (and fine-tuning sections) of OUT/manifool_invariance.json that this run does "
                         "not recompute (same -n, --candidates and sets required: ManiFool is deterministic)")
    ap.add_argument("--records", nargs="*", default=[],
                    help="weights files whose training records (sidecar JSON) the md describes, without scoring them")
    ap.add_argument("--merge-from", nargs="*", type=Path, default=[],
                    help="with --merge: also the rows of these manifool_invariance.json files (runs split over "
                         "processes), same setting")
    a = ap.parse_args(argv)
    # default: every shipped classifier; defended models (a projection/detector in front) and segmenters are left out
    models = a.models if a.models is not None else [k for k, v in manifest().items()
                                                    if "defense" not in v and v.get("task") != "dense"]
    if a.quick:
        a.n, a.sets, a.candidates = 4, ["translation", "rotation-translation"], 2
        models = a.models or ["mlp-digits", "lenet-fmnist"]
        a.train_n, a.epochs, a.save, a.spatial_save = 16, 1, False, None
    models = list(models) + [str(w) for w in a.weights]
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    log = print
    table: dict[str, dict[str, dict]] = {}
    examples = None
    sat: list[dict] = []  # spatial adversarial training records, one per model
    if a.spatial_at:
        xt, yt = data.load("fashion-mnist", "train", limit=a.train_n)
        xacc, yacc = data.load("fashion-mnist", "test", limit=200 if a.quick else 2000)
        sopts = dict(kv.split("=", 1) for kv in a.spatial_option)
        model, secs = spatial_finetune(pretrained("lenet-fmnist"), xt, yt, epochs=a.epochs, lr=a.lr, seed=a.seed,
                                       batch=8 if a.quick else 64, options=sopts)
        rec = {"seconds": secs, "train_n": a.train_n, "epochs": a.epochs, "lr": a.lr, "options": sopts,
               "accuracy_before": accuracy(pretrained("lenet-fmnist"), xacc, yacc),
               "accuracy_after": accuracy(model, xacc, yacc), "n_accuracy": int(xacc.shape[0])}
        log(f"spatial adversarial training: {secs:.0f}s, clean accuracy {rec['accuracy_before']:.4f} -> "
            f"{rec['accuracy_after']:.4f}")
        if a.spatial_save is not None:
            opt_args = "".join(f" {kv}" for kv in a.spatial_option)
            cmd = (f"python repro/manifool_invariance.py --spatial-at --models --train-n {a.train_n} --epochs "
                   f"{a.epochs} --lr {a.lr} --threads {a.threads} --spatial-save {a.spatial_save}"
                   + (f" --spatial-option{opt_args}" if opt_args else ""))
            save_weights(model, a.spatial_save, arch="lenet", input_shape=(1, 28, 28), num_classes=10,
                         sidecar={"arch": "lenet", "data": "fashion-mnist", "seed": a.seed, "epochs": a.epochs,
                                  "objective": "spatial-adversarial fine-tuning of lenet-fmnist (Engstrom et al. "
                                  "worst-of-10, ±3 px, ±30°, identity included)", "objective_options": sopts,
                                  "train_n": a.train_n, "lr": a.lr, "batch_size": 64, "command": cmd,
                                  "test_accuracy_2000": rec["accuracy_after"], "train_seconds": secs})
            rec["saved"] = str(a.spatial_save)
        rec["row"] = "lenet-fmnist-spatial-at"
        sat.append(rec)
        models.append(("lenet-fmnist-spatial-at", model))
    for entry in models:
        name, clf = entry if isinstance(entry, tuple) else load_model(entry)
        if clf.input_shape is None or len(clf.input_shape) != 3:
            log(f"{name}: inputs are not images, skipped")
            continue
        x, y = data.load(dataset_of(name) if name in manifest() else "fashion-mnist", "test", limit=a.n)
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
        for s in a.sets:  # the table's rows where it has them (the same images, sets and ManiFool)
            before = table.get("lenet-fmnist", {}).get(s) or score(base, xs, ys, s, candidates=a.candidates)[1]
            after = (table.get("lenet-fmnist-manifool", {}).get(s) if a.finetuned is not None
                     and a.finetuned.stem == "lenet-fmnist-manifool" else None)
            ft["scores"][s] = (before, after or score(model, xs, ys, s, candidates=a.candidates)[1])
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
    old_path = a.out / "manifool_invariance.json"
    for path in ([*a.merge_from, old_path] if a.merge else []):
        if not path.exists():
            continue
        old = json.loads(path.read_text())
        same = (old.get("n", a.n), old.get("candidates", a.candidates)) == (a.n, a.candidates)
        if not same:
            raise SystemExit(f"--merge: {path} holds another setting (n {old.get('n')}, candidates "
                             f"{old.get('candidates')}); rerun every row instead")
        for name, rows in old["table"].items():
            if name not in table and set(rows) == set(a.sets):
                table[name] = rows
        ft = ft if ft is not None else old.get("finetune")
        got = old.get("spatial_at") or []
        sat += [r for r in (got if isinstance(got, list) else [got]) if r.get("row") not in {x.get("row") for x in sat}]
    table = dict(sorted(table.items()))
    for w in [*a.weights, *a.records]:  # training records of weights given by path (their sidecar JSON)
        side = Path(w).with_suffix(".json")
        rec = json.loads(side.read_text()) if side.exists() else {}
        row = Path(w).stem
        if str(rec.get("objective", "")).startswith("spatial-adversarial") and row not in {x.get("row") for x in sat}:
            sat.append({"seconds": rec["train_seconds"], "train_n": rec["train_n"], "epochs": rec["epochs"],
                        "lr": rec["lr"], "options": rec.get("objective_options") or {}, "accuracy_before": None,
                        "accuracy_after": rec["test_accuracy_2000"], "n_accuracy": 2000, "saved": str(w), "row": row})
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
    for rec in sorted(sat, key=lambda r: r["train_n"]):
        text += [f"## Spatial adversarial training of lenet-fmnist (Engstrom et al., ICML 2019): {rec.get('row')}", "",
                 f"`spatial-adversarial` objective (worst of k = 10 random rotations+translations in ±3 px × ±30° per "
                 f"training image, the identity a candidate too; options {rec['options'] or 'default'}), "
                 f"{rec['train_n']} training images × {rec['epochs']} epoch(s), batches of 64, Adam lr {rec['lr']} "
                 f"constant, 1 thread: {rec['seconds']:.0f} s. Clean accuracy on {rec['n_accuracy']} test images: "
                 + (f"{rec['accuracy_before']:.4f} → " if rec.get("accuracy_before") is not None else "")
                 + f"{rec['accuracy_after']:.4f}. Its invariance scores: the row {rec.get('row', 'lenet-fmnist-spatial-at')} "
                 "of the table above.", ""]
    if png is None and a.merge and (a.out / "manifool_examples.png").exists():
        png = a.out / "manifool_examples.png"  # kept from the run that drew it
    if png is not None:
        text += [f"![examples]({png.name})", ""]
    out = "\n".join(text)
    (a.out / "manifool_invariance.md").write_text(out)
    (a.out / "manifool_invariance.json").write_text(json.dumps({"n": a.n, "candidates": a.candidates,
                                                               "table": table, "finetune": ft, "spatial_at": sat}, indent=1,
                                                              default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    print(out)
    return {"table": table, "finetune": ft, "spatial_at": sat}


if __name__ == "__main__":
    main()
