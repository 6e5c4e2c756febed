"""Rebuild georobust/models/weights/MANIFEST.json from the weights and their training metadata.

Each ``NAME.safetensors`` has a ``NAME.json`` beside it written by ``georobust train``; the manifest
records the file, its sha256, the architecture, data set, seed, the exact training command and the
measured test accuracy (for a segmenter: pixel accuracy, mIoU and per-class IoU, and no robust accuracy) (recomputed here on the full test split, not copied from the training log) and a
robust accuracy: PGD L∞ (``ROBUST``: eps, 20 steps, 2 restarts, seed 0) on the first ``ROBUST["n"]`` test
images — the number ``tests/test_models.py`` recomputes — and the robust accuracy under the standard cascade
(``CASCADE``: APGD-CE → APGD-T → FAB-T → Square, per-sample worst case, same eps and images).

    python tools/update_manifest.py [NAME ...]             # everything for NAME (default: every model)
    python tools/update_manifest.py --cascade-only [NAME]  # only add/refresh the cascade numbers
"""

from __future__ import annotations

import json
import os
import sys

import torch

from georobust import data
from georobust.attacks.pgd import pgd
from georobust.checks import predict
from georobust.evaluation import accuracy
from georobust.evaluation.cascade import cascade
from georobust.evaluation.metrics import IGNORE_INDEX, mean_iou, pixel_accuracy
from georobust.models.io import MANIFEST, WEIGHTS_DIR, load_weights, sha256
from georobust.storage import atomic_write_text

#: the robust-accuracy measurement recorded for every shipped model (L∞ PGD, worst case over restarts)
ROBUST = {"attack": "pgd", "norm": "inf", "eps": {"digits": 0.05, "fashion-mnist": 0.1}, "steps": 20, "restarts": 2,
          "seed": 0, "n": 500}


def robust_accuracy(clf, data_name: str) -> dict:
    """PGD robust accuracy of ``clf`` as recorded in the manifest (``ROBUST``)."""
    x, y = data.load(data_name, "test", limit=ROBUST["n"])
    eps = ROBUST["eps"][data_name]
    r = pgd(clf, x, y, eps=eps, norm="inf", steps=ROBUST["steps"], restarts=ROBUST["restarts"], seed=ROBUST["seed"])
    return {"attack": f"PGD-{ROBUST['steps']} L∞, {ROBUST['restarts']} restarts, seed {ROBUST['seed']}",
            "eps": eps, "n": int(x.shape[0]), "value": round(1.0 - r.success_rate, 4)}


#: the cascade measurement recorded for every shipped model
CASCADE = {"preset": "standard", "norm": "inf", "eps": ROBUST["eps"], "seed": 0, "n": 500}


def cascade_accuracy(clf, data_name: str) -> dict:
    """Robust accuracy of ``clf`` under the standard cascade as recorded in the manifest (``CASCADE``)."""
    x, y = data.load(data_name, "test", limit=CASCADE["n"])
    eps = CASCADE["eps"][data_name]
    c = cascade(clf, x, y, eps=eps, norm=CASCADE["norm"], preset=CASCADE["preset"], seed=CASCADE["seed"])
    return {"attack": "standard cascade (APGD-CE, APGD-T, FAB-T, Square) L∞, seed 0", "eps": eps,
            "n": int(x.shape[0]), "value": round(c.robust_accuracy, 4),
            "broke": {a["attack"]: a["broke"] for a in c.per_attack}}


def dense_metrics(clf, x, y, classes: list[str]) -> dict:
    """A segmenter's test pixel accuracy (also recorded as ``test_accuracy``, the column ``zoo list`` shows), mIoU
    and per-class IoU over the whole test split (``evaluation.metrics``; ignore-index pixels not counted)."""
    pred = predict(clf, x)
    counted = y != IGNORE_INDEX
    per = {}
    for c, name in enumerate(classes):
        p, t = (pred == c) & counted, (y == c) & counted
        union = int((p | t).sum())
        if union:
            per[name] = round(int((p & t).sum()) / union, 3)
    acc = round(pixel_accuracy(pred, y), 4)
    return {"test_accuracy": acc, "test_pixel_accuracy": acc, "test_miou": round(mean_iou(pred, y, len(classes)), 4),
            "test_iou_per_class": per, "n_test": int(x.shape[0])}


def main(names: list[str]) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))   # 2 cores; OMP_NUM_THREADS overrides
    man = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    if names[:1] == ["--cascade-only"]:
        for name in names[1:] or sorted(man):
            meta = man[name]
            man[name]["cascade_robust_accuracy"] = cascade_accuracy(load_weights(WEIGHTS_DIR / meta["file"]),
                                                                    meta["data"])
            print(f"{name}: cascade robust accuracy {man[name]['cascade_robust_accuracy']}")
            # after each model: a long run that is killed keeps what it finished
            atomic_write_text(MANIFEST, json.dumps(dict(sorted(man.items())), indent=2) + "\n")
        return
    files = [WEIGHTS_DIR / f"{n}.safetensors" for n in names] if names else sorted(WEIGHTS_DIR.glob("*.safetensors"))
    for f in files:
        meta = json.loads(f.with_suffix(".json").read_text())
        if "defense" in meta:
            # a defended model (projection/detector around a LeNet): its entry is measured and written by
            # georobust.defenses.projections.measure_zoo_defense (its command is in the entry), not here
            print(f"{f.stem}: a defended model, skipped (see its measure_command in MANIFEST.json)")
            continue
        clf = load_weights(f)
        x, y = data.load(meta["data"], "test")
        entry = {"file": f.name, "sha256": sha256(f), "arch": meta["arch"], "data": meta["data"],
                 "seed": meta["seed"], "epochs": meta["epochs"], "objective": meta["objective"],
                 "command": meta["command"], **({"init": meta["init"]} if "init" in meta else {})}
        if data.info(meta["data"]).task == "dense":
            entry.update(task="dense", **dense_metrics(clf, x, y, data.info(meta["data"]).classes))
        else:
            entry.update(test_accuracy=round(accuracy(clf, x, y), 4),
                         robust_accuracy=robust_accuracy(clf, meta["data"]),
                         cascade_robust_accuracy=cascade_accuracy(clf, meta["data"]))
        # what this script does not measure (e.g. a repro's invariance score) stays as it was
        man[f.stem] = {**man.get(f.stem, {}), **entry}
        print(f"{f.stem}: {json.dumps({k: v for k, v in entry.items() if k.startswith(('test', 'robust'))})}")
    atomic_write_text(MANIFEST, json.dumps(dict(sorted(man.items())), indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
