"""A folder of images with one sub-folder per class (``root/<class>/*.png``), read with Pillow.

If ``root/<split>/`` exists it is used for that split, else ``root`` itself. Classes are the sub-folder
names in sorted order. Images are resized to ``size`` (``(H, W)``; default: the first image's size) and
converted to grayscale (``channels=1``) or RGB (``channels=3``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, OptionError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load(split: str, *, root: str | Path | None = None, size: tuple[int, int] | None = None,
         channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image

    if root is None:
        raise OptionError("the folder data set needs root=PATH (CLI: --root PATH)")
    if channels not in (1, 3):
        raise OptionError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    if (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root} needs one sub-folder per class (at least two), found {classes}")
    xs, ys = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in EXTENSIONS:
                continue
            try:
                im = Image.open(f).convert("L" if channels == 1 else "RGB")
            except OSError as e:
                raise DataError(f"cannot read image {f}: {e}") from e
            if size is None:
                size = (im.height, im.width)
            if (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
            xs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
            ys.append(k)
    if not xs:
        raise DataError(f"no images found under {root}")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long), classes
