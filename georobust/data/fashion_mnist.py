"""Fashion-MNIST (Xiao et al., 2017) from its IDX files, gzip or raw.

Searched in ``$GEOROBUST_DATA`` (the folder itself or its ``fashion-mnist/`` sub-folder), then in
``/usr/share/datasets/fashion-mnist/`` where Debian's ``dataset-fashion-mnist`` package puts them.
The IDX headers are validated (magic number, dimensions, item counts, file size) before use.
"""

from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

SHAPE = (1, 28, 28)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
HOW_TO = ("install it with `apt-get install -y dataset-fashion-mnist` (Debian) or point $GEOROBUST_DATA at "
          "a folder holding the four IDX files")


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("GEOROBUST_DATA"):
        root = Path(os.environ["GEOROBUST_DATA"])
        dirs += [root, root / "fashion-mnist"]
    dirs.append(SYSTEM_DIR)
    return dirs


def _find(stem: str) -> Path | None:
    for d in search_dirs():
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def available() -> bool:
    return all(_find(f) is not None for s in FILES.values() for f in s[:2])


def read_idx(path: str | Path, expected_ndim: int, expected_count: int | None = None,
             expected_dims: tuple[int, ...] | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (magic ``0x0000 08 ndim``), validating the header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupt — reinstall it ({HOW_TO})") from e
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes); {HOW_TO}")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or ndim != expected_ndim:
        raise DataError(
            f"{path} has a bad IDX magic number 0x{data[:4].hex()} (expected 0x000008{expected_ndim:02x}: "
            f"unsigned bytes, {expected_ndim} dimension(s)); the file is corrupt or not an IDX file"
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"{path} declares {dims[0]} items, expected {expected_count}")
    if expected_dims is not None and tuple(dims[1:]) != expected_dims:
        raise DataError(f"{path} declares items of size {dims[1:]}, expected {expected_dims}")
    n = int(np.prod(dims))
    if len(data) - header != n:
        raise DataError(f"{path} holds {len(data) - header} bytes of data, its header declares {n}; truncated?")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@lru_cache(maxsize=2)
def _load(split: str) -> tuple[np.ndarray, np.ndarray]:
    img, lab, count = FILES[split]
    pimg, plab = _find(img), _find(lab)
    if pimg is None or plab is None:
        where = ", ".join(str(d) for d in search_dirs())
        raise DataError(f"Fashion-MNIST {split} files not found (searched {where}); {HOW_TO}")
    x = read_idx(pimg, 3, count, (28, 28))
    y = read_idx(plab, 1, count)
    if y.max() > 9:
        raise DataError(f"{plab} has label {int(y.max())}; Fashion-MNIST labels are 0..9")
    return x, y


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _load(split)
    xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    return xt, torch.from_numpy(y.astype(np.int64))
