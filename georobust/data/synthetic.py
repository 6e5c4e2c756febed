"""Synthetic data sets.

``spheres``: the concentric spheres of Gilmer et al. ("Adversarial spheres", ICLR 2018 workshop): points
drawn uniformly on two concentric spheres in ``R^dim`` of radii ``r_inner`` (class 0) and ``r_outer``
(class 1), half each. To follow the toolkit's ``[0, 1]`` input convention the data are mapped by
``x -> 0.5 + x / (2 r_outer)``: the spheres are centred at ``0.5·1`` with radii ``r_inner/(2 r_outer)``
and ``0.5``; every coordinate stays in ``[0, 1]``. Distances are scaled by ``1/(2 r_outer)``, the
ratio of the radii is kept. Sampling is deterministic: the split and ``seed`` fix the generator.
"""

from __future__ import annotations

import torch

from ..errors import OptionError

DEFAULTS = {"dim": 500, "r_inner": 1.0, "r_outer": 1.3}
SIZES = {"train": 10000, "test": 2000}


def spheres(split: str, *, dim: int = 500, r_inner: float = 1.0, r_outer: float = 1.3, n: int | None = None,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    if dim < 2:
        raise OptionError(f"spheres needs dim >= 2, got {dim}")
    if not 0 < r_inner < r_outer:
        raise OptionError(f"spheres needs 0 < r_inner < r_outer, got {r_inner}, {r_outer}")
    n = SIZES[split] if n is None else int(n)
    g = torch.Generator().manual_seed(seed * 2 + (0 if split == "train" else 1))
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True)
    y = torch.arange(n) % 2
    y = y[torch.randperm(n, generator=g)]
    radius = torch.where(y == 0, r_inner, r_outer).double().unsqueeze(1)
    x = 0.5 + z * radius / (2 * r_outer)
    return x.float().clamp(0, 1), y.long()
