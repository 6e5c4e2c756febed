"""Rebuild georobust/models/weights/MANIFEST.json from the weights and their training metadata.

Each ``NAME.safetensors`` has a ``NAME.json`` beside it written by ``georobust train``; the manifest
records the file, its sha256, the architecture, data set, seed, the exact training command and the
measured test accuracy (recomputed here on the full test split, not copied from the training log).
"""

from __future__ import annotations

import json
import sys

import torch

from georobust import data
from georobust.evaluation import accuracy
from georobust.models.io import MANIFEST, WEIGHTS_DIR, load_weights, sha256


def main(names: list[str]) -> None:
    man = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    files = [WEIGHTS_DIR / f"{n}.safetensors" for n in names] if names else sorted(WEIGHTS_DIR.glob("*.safetensors"))
    for f in files:
        meta = json.loads(f.with_suffix(".json").read_text())
        clf = load_weights(f)
        x, y = data.load(meta["data"], "test")
        torch.set_num_threads(2)
        acc = accuracy(clf, x, y)
        man[f.stem] = {"file": f.name, "sha256": sha256(f), "arch": meta["arch"], "data": meta["data"],
                       "seed": meta["seed"], "epochs": meta["epochs"], "objective": meta["objective"],
                       "command": meta["command"], "test_accuracy": round(acc, 4),
                       **({"init": meta["init"]} if "init" in meta else {})}
        print(f"{f.stem}: test accuracy {acc:.4f}")
    MANIFEST.write_text(json.dumps(dict(sorted(man.items())), indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
