"""``scenes-seg``: a semantic-segmentation data set generated deterministically from real parts, no download.

Each scene is a ``size × size`` grey image (default 64×64): a crop of a real texture that ships inside
scikit-image's wheel (``brick.png``, ``grass.png``, ``gravel.png`` in ``skimage/data``; the other
``skimage.data`` images, e.g. ``cells3d`` or ``kidney``, are fetched from the network on first use and are
never touched here), randomly flipped, rotated by a multiple of 90° and rescaled in contrast, with 1 to 3
Fashion-MNIST items pasted on it at random positions and scales (20 to 36 pixels). The label map has one
value per pixel: 0 for the texture, else the item's class. Items are pasted front to back (a later item
occludes an earlier one) and the label map is written with the same pixels, so mask and image agree pixel for
pixel: an item's pixels are those whose resized intensity is at least :data:`ALPHA_THRESHOLD`; exactly these
pixels take the item's intensity and its class.

Classes: Fashion-MNIST's ten categories are grouped into four (plus background) — ``top`` (T-shirt, pullover,
dress, coat, shirt), ``trouser``, ``footwear`` (sandal, sneaker, ankle boot) and ``bag``. The five upper-body
garments are the classes a Fashion-MNIST classifier confuses most (its errors are mostly among them); told
apart by shape alone inside a 20-pixel blob on texture they would make the label map mostly noise, while the
four groups differ in silhouette. Each pasted item's class is drawn uniformly, then an item of that class
(Fashion-MNIST's ten balanced categories would make ``top`` five times as frequent as ``trouser`` or ``bag``,
and a segmenter trained on that never predicts the rare two: IoU 0 for both, measured). Without Fashion-MNIST on this machine, scikit-learn's 8×8 digits are pasted
instead (classes: background and the ten digits).

Splits: the train split pastes Fashion-MNIST train items on crops of the upper half of each texture, the test
split Fashion-MNIST test items on crops of the lower half, so no item or texture patch is shared. Scene ``i``
of a split is a function of ``(seed, split, i)`` only (its own generator), so ``n`` changes how many scenes
there are, never what scene ``i`` is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, OptionError
from . import digits, fashion_mnist

log = logging.getLogger(__name__)

#: the textures used: files shipped inside scikit-image's wheel (``skimage/data``), never downloaded
TEXTURES = ("brick.png", "grass.png", "gravel.png")
#: a pasted item's pixels are those whose (resized) intensity is at least this
ALPHA_THRESHOLD = 0.1
#: Fashion-MNIST category -> scene class (0 is the background)
FMNIST_GROUPS = (1, 2, 1, 1, 1, 3, 1, 3, 4, 3)
FMNIST_CLASSES = ["background", "top", "trouser", "footwear", "bag"]
DIGIT_CLASSES = ["background"] + [str(i) for i in range(10)]
DEFAULTS = {"n": None, "size": 64, "seed": 0}
SIZES = {"train": 2000, "test": 500}
SCALES = (20, 36)
COUNTS = (1, 3)
IGNORE_INDEX = -100


def texture_dir() -> Path:
    """The folder of scikit-image's shipped sample images."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def textures_available() -> bool:
    d = texture_dir()
    return all((d / t).is_file() for t in TEXTURES)


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    from skimage.io import imread

    d = texture_dir()
    out = []
    for t in TEXTURES:
        p = d / t
        if not p.is_file():
            raise InputError(f"scikit-image's wheel lacks {p}; reinstall scikit-image (pip install scikit-image)")
        img = np.asarray(imread(p), dtype=np.float32)
        if img.ndim == 3:
            img = img[..., :3].mean(-1)
        img = img / 255.0 if img.max() > 1.0 else img
        out.append(img)
    return tuple(out)


def uses_fashion_mnist() -> bool:
    return fashion_mnist.available()


def classes() -> list[str]:
    return FMNIST_CLASSES if uses_fashion_mnist() else DIGIT_CLASSES


@lru_cache(maxsize=2)
def _items(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Item images ``(M, 28|8, 28|8)`` in [0, 1] and their scene classes ``(M,)``."""
    if uses_fashion_mnist():
        x, y = fashion_mnist.load(split)
        return x[:, 0], torch.tensor(FMNIST_GROUPS)[y]
    log.info("Fashion-MNIST is not available: scenes-seg pastes scikit-learn's 8x8 digits instead")
    x, y = digits.load(split)
    return x[:, 0], y + 1


@lru_cache(maxsize=2)
def _groups(split: str) -> tuple[torch.Tensor, ...]:
    """The indices of the items of each scene class, in class order."""
    _, labels = _items(split)
    return tuple((labels == c).nonzero().squeeze(1) for c in sorted(set(labels.tolist())))


@dataclass
class Placement:
    """One pasted item: its resized image ``(s, s)``, the top-left corner, and its class."""

    image: torch.Tensor
    top: int
    left: int
    label: int


def render(split: str, index: int, *, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor, list[Placement]]:
    """Scene ``index`` of ``split``: ``(x (1, size, size), mask (size, size), background (size, size),
    placements)``. ``background`` is the texture crop before pasting; ``placements`` the items in pasting order."""
    if split not in SIZES:
        raise OptionError(f"split must be one of {', '.join(SIZES)}, got {split!r}")
    g = np.random.default_rng([int(seed), 0 if split == "train" else 1, int(index)])
    tex = _textures()[int(g.integers(len(TEXTURES)))]
    h = tex.shape[0] // 2
    rows = (0, h) if split == "train" else (h, tex.shape[0])
    top = int(g.integers(rows[0], rows[1] - size + 1))
    left = int(g.integers(0, tex.shape[1] - size + 1))
    crop = tex[top:top + size, left:left + size]
    crop = np.rot90(crop, int(g.integers(4)))
    if g.random() < 0.5:
        crop = crop[:, ::-1]
    lo, hi = float(crop.min()), float(crop.max())
    crop = (crop - lo) / max(hi - lo, 1e-6)
    a = float(g.uniform(0.25, 0.75))  # contrast of the texture, and its mean level
    b = float(g.uniform(0.0, 1.0 - a))
    background = torch.from_numpy(np.ascontiguousarray(crop * a + b, dtype=np.float32))
    x = background.clone()
    mask = torch.zeros(size, size, dtype=torch.long)
    items, labels = _items(split)
    placements = []
    s_max = min(SCALES[1], size)
    for _ in range(int(g.integers(COUNTS[0], COUNTS[1] + 1))):
        group = _groups(split)[int(g.integers(len(_groups(split))))]  # classes equally likely, then an item
        j = int(group[int(g.integers(group.numel()))])
        s = int(g.integers(min(SCALES[0], s_max), s_max + 1))
        img = F.interpolate(items[j][None, None], size=(s, s), mode="bilinear", align_corners=False)[0, 0]
        img = img.clamp(0, 1)
        t, le = int(g.integers(0, size - s + 1)), int(g.integers(0, size - s + 1))
        on = img >= ALPHA_THRESHOLD
        region = x[t:t + s, le:le + s]
        region[on] = img[on]
        mask[t:t + s, le:le + s][on] = int(labels[j])
        placements.append(Placement(img, t, le, int(labels[j])))
    return x[None], mask, background, placements


def _check(n, size, seed) -> None:
    if n is not None and n < 1:
        raise OptionError(f"data option n must be >= 1, got {n}")
    if size < SCALES[0]:
        raise OptionError(f"data option size must be >= {SCALES[0]} (the smallest pasted item), got {size}")
    if seed < 0:
        raise OptionError(f"data option seed must be >= 0, got {seed}")


@lru_cache(maxsize=8)
def _load(split: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ms = [], []
    for i in range(n):
        x, m, _, _ = render(split, i, size=size, seed=seed)
        xs.append(x)
        ms.append(m)
    return torch.stack(xs), torch.stack(ms)


def load(split: str, n: int | None = None, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (N, 1, size, size) float32 in [0, 1], mask (N, size, size) int64)``; ``n`` defaults to 2000 (train)
    or 500 (test)."""
    _check(n, size, seed)
    n = SIZES[split] if n is None else int(n)
    x, m = _load(split, n, int(size), int(seed))
    return x.clone(), m.clone()
