"""Data sets, all behind one entry point: ``load(name, split="test", limit=None, **options)``.

Every loader returns ``(x, y)``: float32 inputs in ``[0, 1]`` of shape ``(N, C, H, W)`` (or ``(N, D)``
for vector data) and int64 labels ``(N,)``. ``info(name)`` describes a data set, and ``datasets()``
lists them with their availability on this machine.

Data-set options (``spheres``: ``dim``, ``r_inner``, ``r_outer``, ``n``, ``seed``; ``folder``: ``root``,
``size``, ``channels``) are checked by :func:`check_options` before anything is read: an unknown option is
an :class:`~georobust.errors.OptionError` listing the valid ones, and values given as strings (the CLI's
``-D key=value``) are converted to the option's type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import registry
from ..errors import OptionError, unknown_name
from . import digits, fashion_mnist, folder, scenes, synthetic, video

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
    #: what the labels are: ``classification`` (labels (N,)) or ``dense`` (label maps (N, H, W))
    task: str = "classification"


def _typed(kind: type, what: str):
    """A converter for a numeric data option: a string (``-D key=value``) is parsed, a bool is refused."""
    accepted = (int,) if kind is int else (int, float)

    def convert(key: str, v: Any):
        if isinstance(v, str):
            try:
                v = kind(v.strip())
            except ValueError:
                raise OptionError(f"data option {key} must be {what}, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, accepted):
            raise OptionError(f"data option {key} must be {what}, got {v!r}")
        return kind(v)
    return convert


_int = _typed(int, "an integer")
_float = _typed(float, "a number")


def _path(key: str, v: Any) -> Path:
    if not isinstance(v, (str, Path)) or not str(v):
        raise OptionError(f"data option {key} must be a folder path, got {v!r}")
    return Path(v).expanduser()


def _register(name: str, *, options: dict, describe, aliases: tuple[str, ...] = ()):
    """Register a loader ``load(split, **options) -> (x, y)`` in ``registry.datasets`` with its option
    converters and its description ``describe(**options) -> DataInfo``."""
    return registry.datasets.register(name, aliases=aliases, options=options, describe=describe)


_register("digits", options={}, describe=lambda: DataInfo(
    "digits", digits.SHAPE, 10, digits.CLASSES, True, "scikit-learn's embedded 8x8 handwritten digits",
    {"train": 1257, "test": 540}))(lambda split: digits.load(split))
_register("fashion-mnist", aliases=("fmnist",), options={}, describe=lambda: DataInfo(
    "fashion-mnist", fashion_mnist.SHAPE, 10, fashion_mnist.CLASSES, fashion_mnist.available(),
    "Zalando's Fashion-MNIST, 28x28 grayscale (IDX files)", {"train": 60000, "test": 10000}))(
    lambda split: fashion_mnist.load(split))


def _describe_spheres(dim: int = synthetic.DEFAULTS["dim"], **_) -> DataInfo:
    return DataInfo("spheres", (int(dim),), 2, ["inner", "outer"], True,
                    "concentric spheres (Gilmer et al. 2018), generated", dict(synthetic.SIZES))


_register("spheres", options={"dim": _int, "r_inner": _float, "r_outer": _float, "n": _int, "seed": _int},
          describe=_describe_spheres)(synthetic.spheres)


def _describe_folder(root=None, **_) -> DataInfo:
    classes = folder.classes(root) if root is not None else []
    return DataInfo("folder", (), len(classes), classes, bool(classes),
                    "a folder of images, one sub-folder per class (needs root=)", {})


def _load_folder(split: str, **options):
    x, y, _ = folder.load(split, **options)
    return x, y


_register("folder", options={"root": _path, "size": folder.parse_size, "channels": folder.parse_channels},
          describe=_describe_folder)(_load_folder)


def _describe_scenes(n=None, size: int = scenes.DEFAULTS["size"], **_) -> DataInfo:
    sizes = {k: (v if n is None else int(n)) for k, v in scenes.SIZES.items()}
    return DataInfo("scenes-seg", (1, int(size), int(size)), len(scenes.classes()), scenes.classes(),
                    scenes.textures_available(), "segmentation scenes: Fashion-MNIST items pasted on scikit-image "
                    "textures, label maps (generated)", sizes, task="dense")


_register("scenes-seg", options={"n": _int, "size": _int, "seed": _int}, describe=_describe_scenes)(scenes.load)


def _describe_vtest(n=None, step: int = 1, **_) -> DataInfo:
    sizes = {k: len(range(lo, hi, int(step))) for k, (lo, hi) in video.SPLITS.items()}
    sizes = {k: (v if n is None else min(v, int(n))) for k, v in sizes.items()}
    return DataInfo("vtest", video.SHAPE, 0, [], video.available(),
                    "OpenCV's surveillance video vtest.avi (Debian opencv-doc), RGB frames; labels are frame indices",
                    sizes, task="detection")


_register("vtest", options={"n": _int, "step": _int}, describe=_describe_vtest)(video.load)


#: the options of each data set and their converters (a string value is converted)
OPTIONS = {e.name: e.extra["options"] for e in registry.datasets.entries()}


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate and convert the options of data set ``name``; return them (nothing is read).

    Raises :class:`~georobust.errors.OptionError` for an unknown data set, an unknown option (listing the
    valid ones) or a value of the wrong type.
    """
    entry = registry.datasets.get(name)
    canon, spec = entry.name, entry.extra["options"]
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in spec:
            if not spec:
                raise OptionError(f"unknown option of data set {canon!r}: {key}={value!r}; {canon} takes no options")
            raise unknown_name(f"option of data set {canon!r}", key, spec)
        out[key] = None if value is None else spec[key](key, value)
    return out


def info(name: str, **options) -> DataInfo:
    """Describe data set ``name``; for ``folder`` with ``root=`` the classes are the sub-folders found."""
    options = check_options(name, options)
    return registry.datasets.get(name).extra["describe"](**options)


def datasets() -> list[DataInfo]:
    return [info(n) for n in registry.datasets.names()]


def load(name: str, split: str = "test", limit: int | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Load data set ``name`` (``digits``, ``fashion-mnist``, ``spheres``, ``folder``) as ``(x, y)``.

    ``limit`` keeps the first ``limit`` samples (the order is fixed, so the same limit gives the same
    samples). Options: ``spheres`` takes ``dim``, ``r_inner``, ``r_outer``, ``n``, ``seed``; ``folder``
    takes ``root``, ``size`` (``16`` or ``(H, W)``; default: the first image's size) and ``channels`` (1 or 3;
    default: 1 when every image is grayscale, else 3). Options are checked first (:func:`check_options`).
    A new data set is one module plus one ``registry.datasets.register`` call here.
    """
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise OptionError(f"limit must be a positive integer or None, got {limit!r}")
    options = check_options(name, options)
    x, y = registry.datasets.get(name).fn(split, **options)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x.contiguous(), y.contiguous()


__all__ = ["load", "info", "datasets", "check_options", "DataInfo", "OPTIONS", "SPLITS"]
