"""Spatial adversarial training (Engstrom, Tran, Tsipras, Schmidt & Mądry, "Exploring the landscape of spatial
robustness", ICML 2019, §5): train on the worst of a set of rotations and translations of each training image.

The paper's inner maximisation is a search, not a gradient ascent (the loss is far from concave in the
transform): for each training image, ``k`` transforms ``θ = (tx, ty, angle)`` are drawn uniformly from the box
``[−T, T]² × [−A, A]`` (the paper's ``T = 3`` px, ``A = 30°``, ``k = 10``: "worst-of-10"), the model's
cross-entropy is evaluated at every transformed image, and the model is trained on the one of the highest loss.
``grid=True`` searches the exhaustive grid of the spatial grid attack instead (``5 × 5 × 31 = 775`` transforms,
the paper's "grid" training — 78 times the forward passes of worst-of-10).

The transforms and their application are the spatial grid attack's
(:func:`georobust.attacks.spatial_grid.apply_transforms`: bilinear, the model's lower bound — black — outside the
image), so a model is trained against exactly the transforms that :func:`~georobust.attacks.spatial_grid.spatial_grid`
and ``spatial-worst-of-k`` evaluate.

One choice of ours, documented: with ``include_identity=True`` (default) the untransformed image is one more
candidate (``k + 1`` in all), so the inner maximum is never below the clean loss — the objective is an upper
bound of the clean cross-entropy, as in Lp adversarial training. ``include_identity=False`` is the paper's
plain worst-of-k.

Conventions of :mod:`georobust.defenses.objectives`: the search runs in eval mode (no batch-norm statistics
updated by the k·N candidates), the outer cross-entropy in the model's training mode; the draws come from torch's
global generator on the device of ``x`` (which :func:`~georobust.defenses.fit` seeds and checkpoints).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .. import registry
from ..attacks.spatial_grid import apply_transforms, grid_transforms
from ..checks import check_positive
from ..core.modes import eval_mode
from ..core.transforms import PADDINGS
from ..errors import InputError, OptionError, unknown_name
from .objectives import Objective

log = logging.getLogger(__name__)


@registry.objectives.register("spatial-adversarial", summary="train on the worst of k random rotations and "
                              "translations, or of the grid (Engstrom et al., ICML 2019)")
class SpatialAdversarial(Objective):
    """Spatial adversarial training, worst-of-k or grid (Engstrom et al., ICML 2019; module docstring).

    Options:
        k: random transforms per training image (the paper's 10); ignored with ``grid``.
        max_translation: largest translation ``T`` in pixels along each axis (the paper's 3).
        max_rotation: largest rotation ``A`` in degrees (the paper's 30; at most 180).
        grid: search the exhaustive grid ``linspace(−T, T, num_translations)² × linspace(−A, A, num_rotations)``
            instead of ``k`` random draws.
        num_translations, num_rotations: grid points (the paper's 5 and 31); only with ``grid``.
        include_identity: the untransformed image is a candidate too (default; the loss is then >= the clean
            cross-entropy).
        clean_weight: weight of the clean cross-entropy mixed in, ``(1 − w)·CE(worst) + w·CE(clean)``
            (0 = the paper).
        padding: what a transformed image reads outside its border: ``zeros`` (the model's lower bound),
            ``border`` or ``reflection``.
        forward_batch: candidate images per forward pass of the search.
    """

    name = "spatial-adversarial"

    def __init__(self, k: int = 10, max_translation: float = 3.0, max_rotation: float = 30.0, grid: bool = False,
                 num_translations: int = 5, num_rotations: int = 31, include_identity: bool = True,
                 clean_weight: float = 0.0, padding: str = "zeros", forward_batch: int = 4096):
        self.k = int(check_positive(k, "k", integer=True))
        self.max_translation = float(check_positive(max_translation, "max_translation", allow_zero=True))
        self.max_rotation = float(check_positive(max_rotation, "max_rotation", allow_zero=True))
        if self.max_rotation > 180:
            raise OptionError(f"max_rotation is in degrees and at most 180, got {max_rotation!r}")
        if self.max_translation == 0 and self.max_rotation == 0:
            raise OptionError("max_translation and max_rotation are both 0: the only transform is the identity, "
                              "which is standard training (objective 'standard')")
        if not isinstance(grid, bool):
            raise OptionError(f"grid must be True or False, got {grid!r}")
        self.grid = grid
        self.num_translations = int(check_positive(num_translations, "num_translations", integer=True))
        self.num_rotations = int(check_positive(num_rotations, "num_rotations", integer=True))
        if not isinstance(include_identity, bool):
            raise OptionError(f"include_identity must be True or False, got {include_identity!r}")
        self.include_identity = include_identity
        self.clean_weight = float(check_positive(clean_weight, "clean_weight", allow_zero=True))
        if self.clean_weight > 1:
            raise OptionError(f"clean_weight mixes (1 − w)·CE(worst) + w·CE(clean) and lies in [0, 1], got {clean_weight}")
        if padding not in PADDINGS:
            raise unknown_name("padding", str(padding), PADDINGS)
        self.padding = padding
        self.forward_batch = int(check_positive(forward_batch, "forward_batch", integer=True))
        self._grid = (grid_transforms(self.max_translation, self.max_rotation, self.num_translations,
                                      self.num_rotations) if grid else None)

    # ------------------------------------------------------------------------------------- the search
    def candidates(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, 3)`` float64 transforms ``[tx, ty, angle°]`` searched for the batch ``x``: the identity first
        (with ``include_identity``), then ``k`` uniform draws from the box per image (torch's global generator on
        ``x.device``) or the whole grid."""
        n, dev = x.shape[0], x.device
        if self._grid is not None:
            th = self._grid.to(dev)[None].expand(n, -1, -1)
        else:
            box = torch.tensor([self.max_translation, self.max_translation, self.max_rotation],
                               dtype=torch.float64, device=dev)
            th = (torch.rand(n, self.k, 3, device=dev, dtype=torch.float64) * 2 - 1) * box
        if self.include_identity:
            th = torch.cat([torch.zeros(n, 1, 3, dtype=torch.float64, device=dev), th], dim=1)
        return th

    def worst(self, model, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None):
        """The inner maximisation: per image, the candidate transform of the highest cross-entropy.

        ``theta`` ``(N, C, 3)``: the candidates (default :meth:`candidates`). Returns ``(x_worst, theta_worst,
        loss)``: the transformed images ``(N, C, H, W)`` (detached), their transforms ``(N, 3)`` and the
        cross-entropy of every candidate ``(N, C)``. Run it in eval mode (``__call__`` does)."""
        if x.ndim != 4:
            raise InputError(f"spatial-adversarial rotates and translates images: it needs (N, C, H, W) inputs, got "
                             f"shape {tuple(x.shape)}; train a model on images, or use another objective")
        if theta is None:
            theta = self.candidates(x)
        n, c = theta.shape[:2]
        fill = float(model.bounds[0]) if hasattr(model, "bounds") else 0.0
        x = x.detach()
        flat_t = theta.reshape(n * c, 3)
        losses = []
        with torch.no_grad():
            for s in range(0, n * c, self.forward_batch):
                rows = torch.arange(s, min(s + self.forward_batch, n * c), device=x.device)
                xt = apply_transforms(x[rows // c], flat_t[rows], self.padding, fill)
                losses.append(F.cross_entropy(model(xt), y[rows // c], reduction="none"))
        loss = torch.cat(losses).view(n, c)
        best = loss.argmax(1)
        chosen = theta[torch.arange(n, device=x.device), best]
        with torch.no_grad():
            xw = apply_transforms(x, chosen, self.padding, fill).to(x.dtype)
        return xw, chosen, loss

    def __call__(self, model, x, y):
        with eval_mode(model):
            xw, chosen, cand = self.worst(model, x, y)
        logits = model(xw)
        adv = F.cross_entropy(logits, y)
        loss = adv
        moved = (chosen.abs().amax(1) > 0).float().mean()
        terms = {"ce_spatial": float(adv.detach()), "acc_spatial": float((logits.argmax(1) == y).float().mean()),
                 "transformed": float(moved)}
        if self.clean_weight > 0:
            clean = F.cross_entropy(model(x), y)
            loss = (1 - self.clean_weight) * adv + self.clean_weight * clean
            terms["ce"] = float(clean.detach())
        return loss, terms

    def config(self) -> dict:
        return {"name": self.name, "k": self.k, "max_translation": self.max_translation,
                "max_rotation": self.max_rotation, "grid": self.grid, "num_translations": self.num_translations,
                "num_rotations": self.num_rotations, "include_identity": self.include_identity,
                "clean_weight": self.clean_weight, "padding": self.padding, "forward_batch": self.forward_batch}
