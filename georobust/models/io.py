"""Loading and saving models safely: safetensors weights, TorchScript files, ``package.module:factory``
references, and the shipped zoo weights (checked against the sha256 in ``weights/MANIFEST.json``).

Nothing here unpickles arbitrary objects: weights are safetensors, TorchScript is loaded with
``torch.jit.load``, and plain ``torch.load`` is only ever called with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, WeightsError, unknown_name
from ..registry import Registry
from ..storage import ensure_writable, read_safetensors, write_safetensors
from .classifier import Classifier, check_logits
from .zoo import build

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "MANIFEST.json"

#: loaders of model files that are not one zoo architecture (a defended model: a classifier behind a projection
#: and a detector). A weights file whose metadata has ``loader: NAME`` is rebuilt by the entry ``NAME``,
#: ``fn(state, meta, device=) -> Classifier``. Loaders register where they are defined (``georobust.defenses``),
#: which this registry imports by name on first lookup: models/ imports no method package.
model_loaders = Registry("model loader", "georobust.defenses")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


WEIGHTS_SUFFIX = ".safetensors"


def check_weights_path(path: str | Path, *, overwrite: bool = True) -> Path:
    """Check, before any training, that :func:`save_weights` can write weights to ``path``; return it.

    The name must end in ``.safetensors``: that suffix is how :func:`load_model` (and ``--model``) recognises
    weights, so a file without it could be written but never loaded back — it is refused, never silently
    renamed. The folder must be writable, ``path`` (and the ``.json`` beside it) must not be folders, and with
    ``overwrite=False`` an existing file is refused. Raises :class:`~georobust.errors.OutputError`.
    """
    from ..errors import OutputError

    p = Path(path)
    if p.suffix != WEIGHTS_SUFFIX:
        fixed = p.with_suffix(WEIGHTS_SUFFIX) if p.suffix else p.with_name(p.name + WEIGHTS_SUFFIX)
        raise OutputError(f"weights file {p} must end in {WEIGHTS_SUFFIX} (the suffix by which a model file is "
                          f"recognised when loaded); use {fixed}")
    ensure_writable(p, overwrite=overwrite, what="weights file")
    ensure_writable(p.with_suffix(".json"), overwrite=overwrite, what="weights metadata file")
    return p


def save_weights(model: Classifier, path: str | Path, *, arch: str, input_shape, num_classes: int,
                 extra: dict[str, Any] | None = None, sidecar: dict[str, Any] | None = None) -> Path:
    """Save a zoo ``Classifier``'s weights to safetensors, with what is needed to rebuild it as metadata.

    ``path`` must end in ``.safetensors`` (:func:`check_weights_path`, which callers run before training).
    The file is written atomically (temporary file + rename); ``sidecar``, when given, is written as JSON to
    ``path`` with the suffix ``.json`` (atomically, after the weights) — the training record ``georobust
    train`` keeps beside its weights. Raises :class:`~georobust.errors.OutputError` when it cannot write.
    """
    path = check_weights_path(path)
    meta = {
        "arch": arch,
        "input_shape": json.dumps(list(input_shape)),
        "num_classes": str(num_classes),
        "bounds": json.dumps(list(model.bounds)),
        "mean": json.dumps(None if model.mean is None else model.mean.tolist()),
        "std": json.dumps(None if model.std is None else model.std.tolist()),
        "name": model.name,
    }
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    return write_safetensors(path, state, meta, sidecar=sidecar)


def load_weights(path: str | Path, *, expected_sha256: str | None = None,
                 device: str | torch.device = "cpu") -> Classifier:
    """Rebuild a zoo model from a safetensors file written by :func:`save_weights` (eval mode)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if expected_sha256 is not None:
        got = sha256(path)
        if got != expected_sha256:
            raise WeightsError(
                f"sha256 of {path} is {got[:16]}…, but the manifest records {expected_sha256[:16]}…; "
                "the file is corrupt or was replaced — refusing to load it"
            )
    state, meta = read_safetensors(path)
    if "loader" in meta:
        clf = model_loaders.get(meta["loader"]).fn(state, meta, device=device)
        clf.metadata = meta  # type: ignore[attr-defined]
        return clf.to(device).eval()
    if "arch" not in meta:
        raise WeightsError(f"{path} has no 'arch' metadata; it was not written by georobust.save_weights")
    module = build(meta["arch"], tuple(json.loads(meta["input_shape"])), int(meta["num_classes"]))
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"weights in {path} do not fit architecture {meta['arch']}: {e}") from e
    clf = Classifier(module, bounds=tuple(json.loads(meta["bounds"])), mean=json.loads(meta["mean"]),
                     std=json.loads(meta["std"]), name=meta.get("name", path.stem),
                     input_shape=tuple(json.loads(meta["input_shape"])))
    clf.metadata = meta  # type: ignore[attr-defined]
    return clf.to(device).eval()


def manifest() -> dict[str, dict[str, Any]]:
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text())


def pretrained(name: str, device: str | torch.device = "cpu", *, logits: str | None = None) -> Classifier:
    """A shipped model by name (``lenet-fmnist``, ``fc500-150-10-fmnist``, ``mlp-digits``, ...).

    Its ``input_shape`` is set from the weights' metadata, so inputs of another shape are refused.
    """
    check_logits(logits)
    m = manifest()
    if name not in m:
        raise unknown_name("shipped model", name, m)
    entry = m[name]
    clf = load_weights(WEIGHTS_DIR / entry["file"], expected_sha256=entry["sha256"], device=device)
    clf.name = name
    if logits is not None:
        clf.logits = logits
    return clf


def _import_factory(spec: str):
    """Import ``package.module:attr`` with the current working folder on the import path (for this import
    only), as ``python -m`` would: ``load_model("mymodels:make")`` finds ``./mymodels.py``."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ModelError(f"cannot load model {spec!r}: a factory is given as package.module:function")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name is not None and mod_name.startswith(e.name):
            raise ModelError(
                f"cannot import {spec!r}: no module {e.name!r} in the current folder ({cwd}) or on the Python "
                "path; run from the folder that holds it, or add its folder to PYTHONPATH"
            ) from e
        raise ModelError(f"cannot import {spec!r}: {e}") from e  # the module itself imports something missing
    except ImportError as e:
        raise ModelError(f"cannot import {spec!r}: {e}") from e
    finally:
        if added:
            try:
                sys.path.remove(cwd)
            except ValueError:
                pass
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelError(f"cannot load model {spec!r}: module {mod_name!r} ({getattr(module, '__file__', '?')}) "
                         f"has no attribute {attr!r}") from None


def load_model(spec: str, device: str | torch.device = "cpu", *, logits: str | None = None) -> Classifier:
    """Load a model from a spec string, in eval mode.

    - ``zoo:NAME`` — a shipped model (see ``georobust zoo list``);
    - ``PATH.safetensors`` — weights written by ``georobust train`` / :func:`save_weights`;
    - ``PATH.pt`` / ``PATH.ts`` — a TorchScript file (inputs in ``[0, 1]``);
    - ``package.module:factory`` — a function returning an ``nn.Module`` or a :class:`Classifier`; the module
      is searched in the current working folder first, then on the Python path.

    ``logits="log"``: the model returns probabilities (ends in a softmax); the loaded classifier returns
    their logarithm (see :class:`Classifier`). Zoo and safetensors models know their input shape
    (``Classifier.input_shape``); inputs of another shape are refused before any work.
    """
    check_logits(logits)
    clf = _load_model(spec, device)
    if logits is not None:
        clf.logits = logits
    return clf


def _load_model(spec: str, device: str | torch.device) -> Classifier:
    if spec.startswith("zoo:"):
        return pretrained(spec[4:], device)
    p = Path(spec)
    if p.suffix == ".safetensors":
        return load_weights(p, device=device)
    if p.suffix in (".pt", ".ts", ".pth", ".jit"):
        if not p.exists():
            raise WeightsError(f"model file {p} does not exist")
        try:
            mod = torch.jit.load(str(p), map_location=device)
        except Exception as e:
            raise WeightsError(
                f"{p} is not a TorchScript archive ({e}); save models with torch.jit.save or as "
                "safetensors — pickled modules are never loaded"
            ) from e
        return Classifier(mod, name=p.stem).eval()
    if ":" in spec and not p.exists():
        attr = spec.partition(":")[2]
        factory = _import_factory(spec)
        obj = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(obj, nn.Module):
            raise ModelError(f"{spec} returned {type(obj).__name__}, not an nn.Module")
        clf = obj if isinstance(obj, Classifier) else Classifier(obj, name=attr)
        return clf.to(device).eval()
    raise ModelError(
        f"cannot load model {spec!r}: use zoo:NAME, a .safetensors or TorchScript (.pt) file, "
        "or package.module:factory"
    )
