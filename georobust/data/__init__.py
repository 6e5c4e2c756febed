"""Data sets, all behind one entry point: ``load(name, split="test", limit=None, **options)``.

Every loader returns ``(x, y)``: float32 inputs in ``[0, 1]`` of shape ``(N, C, H, W)`` (or ``(N, D)``
for vector data) and int64 labels ``(N,)``. ``info(name)`` describes a data set, and ``datasets()``
lists them with their availability on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OptionError, unknown_name
from . import digits, fashion_mnist, folder, synthetic

SPLITS = ("train", "test")


@dataclass
class DataInfo:
    name: str
    shape: tuple[int, ...]
    num_classes: int
    classes: list[str]
    available: bool
    description: str
    sizes: dict[str, int]


def _names():
    return ("digits", "fashion-mnist", "spheres", "folder")


def info(name: str, **options) -> DataInfo:
    if name == "digits":
        return DataInfo(name, digits.SHAPE, 10, digits.CLASSES, True,
                        "scikit-learn's embedded 8x8 handwritten digits", {"train": 1257, "test": 540})
    if name in ("fashion-mnist", "fmnist"):
        return DataInfo("fashion-mnist", fashion_mnist.SHAPE, 10, fashion_mnist.CLASSES,
                        fashion_mnist.available(), "Zalando's Fashion-MNIST, 28x28 grayscale (IDX files)",
                        {"train": 60000, "test": 10000})
    if name == "spheres":
        dim = int(options.get("dim", synthetic.DEFAULTS["dim"]))
        return DataInfo(name, (dim,), 2, ["inner", "outer"], True,
                        "concentric spheres (Gilmer et al. 2018), generated", dict(synthetic.SIZES))
    if name == "folder":
        return DataInfo(name, (), 0, [], bool(options.get("root")),
                        "a folder of images, one sub-folder per class (needs root=)", {})
    raise unknown_name("data set", name, _names())


def datasets() -> list[DataInfo]:
    return [info(n) for n in _names()]


def load(name: str, split: str = "test", limit: int | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Load data set ``name`` (``digits``, ``fashion-mnist``, ``spheres``, ``folder``) as ``(x, y)``.

    ``limit`` keeps the first ``limit`` samples (the order is fixed, so the same limit gives the same
    samples). Options: ``spheres`` takes ``dim``, ``r_inner``, ``r_outer``, ``n``, ``seed``; ``folder``
    takes ``root``, ``size``, ``channels``.
    """
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise OptionError(f"limit must be a positive integer or None, got {limit!r}")
    allowed = {"spheres": {"dim", "r_inner", "r_outer", "n", "seed"},
               "folder": {"root", "size", "channels"}}.get(name, set())
    for k in options:
        if k not in allowed:
            raise unknown_name(f"option of data set {name!r}", k, allowed or {"(none)"})
    if name == "digits":
        x, y = digits.load(split)
    elif name in ("fashion-mnist", "fmnist"):
        x, y = fashion_mnist.load(split)
    elif name == "spheres":
        x, y = synthetic.spheres(split, **options)
    elif name == "folder":
        x, y, _ = folder.load(split, **options)
    else:
        raise unknown_name("data set", name, _names())
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x.contiguous(), y.contiguous()


__all__ = ["load", "info", "datasets", "DataInfo", "SPLITS"]
