"""A folder of images with one sub-folder per class (``root/<class>/*.png``), read with Pillow.

If ``root/<split>/`` exists it is used for that split, else ``root`` itself. Classes are the sub-folder
names in sorted order. Images are resized to ``size`` (an int ``S`` for ``S×S``, or ``(H, W)``; default: the
first image's size) and converted to grayscale (``channels=1``) or RGB (``channels=3``). Without
``channels`` it is inferred from how the files are stored: 1 when every image is a grayscale image (Pillow
mode ``L``, ``LA``, ``I``, ``1``, ..., or a palette image whose colours are all grey), else 3 (an image stored
as RGB stays RGB, whatever its content).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, OptionError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: Pillow modes that hold one grey value per pixel (with or without alpha)
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}


def parse_size(key: str, value: Any) -> tuple[int, int]:
    """``size`` as ``(H, W)``: an int ``S`` (square), ``(H, W)``, or a string ``"16"``, ``"16x20"``, ``"16,20"``."""
    v = value
    if isinstance(v, str):
        parts = [p for p in re.split(r"[x×,\s]+", v.strip().strip("()[]")) if p]
        try:
            v = [int(p) for p in parts]
        except ValueError:
            raise OptionError(f"data option {key} must be an image size: 16 or 16x20 (H x W), got {value!r}") from None
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = (v[0], v[0])
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v)):
        raise OptionError(f"data option {key} must be an image size: a positive int S (S×S) or (H, W), got {value!r}")
    return int(v[0]), int(v[1])


def parse_channels(key: str, value: Any) -> int | None:
    """``channels``: 1 or 3 (``None``: inferred from the images)."""
    v = value
    if isinstance(v, str):
        v = v.strip().lower()
        if v in ("", "auto", "none"):
            return None
        v = {"gray": 1, "grey": 1, "l": 1, "rgb": 3}.get(v, v)
        try:
            v = int(v)
        except (TypeError, ValueError):
            raise OptionError(f"data option {key} must be 1 (grayscale) or 3 (RGB), got {value!r}") from None
    if v is None:
        return None
    if isinstance(v, bool) or v not in (1, 3):
        raise OptionError(f"data option {key} must be 1 (grayscale) or 3 (RGB), got {value!r}")
    return int(v)


def _split_root(root: Path, split: str) -> Path:
    return root / split if (root / split).is_dir() else root


def classes(root: str | Path, split: str = "test") -> list[str]:
    """The class names (sorted sub-folders) of the folder data set at ``root`` (``[]`` if there is none)."""
    r = _split_root(Path(root), split)
    if not r.is_dir():
        return []
    return sorted(p.name for p in r.iterdir() if p.is_dir())


def _is_gray(im) -> bool:
    if im.mode in GRAY_MODES:
        return True
    if im.mode not in ("P", "PA"):
        return False
    a = np.asarray(im.convert("RGB"))
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def load(split: str, *, root: str | Path | None = None, size: int | tuple[int, int] | None = None,
         channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image

    if root is None:
        raise OptionError("the folder data set needs root=PATH (CLI: --root PATH or -D root=PATH)")
    if size is not None:
        size = parse_size("size", size)
    channels = parse_channels("channels", channels)
    root = _split_root(Path(root), split)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(names) < 2:
        raise DataError(f"{root} needs one sub-folder per class (at least two), found {names}")
    images, ys = [], []
    for k, c in enumerate(names):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in EXTENSIONS:
                continue
            try:
                im = Image.open(f)
                im.load()
            except OSError as e:
                raise DataError(f"cannot read image {f}: {e}") from e
            images.append(im)
            ys.append(k)
    if not images:
        raise DataError(f"no images found under {root} (extensions: {', '.join(sorted(EXTENSIONS))})")
    if channels is None:
        channels = 1 if all(_is_gray(im) for im in images) else 3
    if size is None:
        size = (images[0].height, images[0].width)
    xs = []
    for im in images:
        im = im.convert("L" if channels == 1 else "RGB")
        if (im.height, im.width) != tuple(size):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
        xs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long), names
