"""scikit-learn's embedded 8×8 handwritten digits (1,797 images, 10 classes), scaled to ``[0, 1]``.

The train/test split is fixed: stratified, 30% test (540 images), ``random_state=0``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SHAPE = (1, 8, 8)
CLASSES = [str(i) for i in range(10)]


@lru_cache(maxsize=1)
def _split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    return {"train": (xtr, ytr), "test": (xte, yte)}


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _split()[split]
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
