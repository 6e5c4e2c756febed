"""The spatial grid and worst-of-k attacks: rotations and translations that fool a model (Engstrom, Tran, Tsipras,
Schmidt & Mądry, "Exploring the landscape of spatial robustness", ICML 2019; Foolbox calls the grid
``SpatialAttack``).

A transformation is ``θ = (tx, ty, angle)``: the picture is translated by ``(tx, ty)`` pixels (``x`` right,
``y`` down), then rotated by ``angle`` about the image centre (positive: counter-clockwise as displayed). Its
matrix on centred pixel coordinates is ``R(angle) · T(tx, ty)`` built with
:func:`georobust.core.transforms.matrix` and applied with :func:`georobust.core.transforms.warp` (bilinear,
black outside the image by default). In Foolbox's convention (``SpatialAttack``: the output samples the input
at ``R(φ)p + t``) the same transform is ``φ = angle``, ``t = −(tx, ty)``, so both grids are the same set.

* ``spatial-grid`` tries every transform of the grid ``linspace(−T, T, n_t)² × linspace(−A, A, n_a)`` (the
  paper's defaults: ``T = 3`` px, ``A = 30°``, ``5 × 5 × 31 = 775`` transforms) — an exhaustive search.
* ``spatial-worst-of-k`` draws ``k`` transforms per sample uniformly from the same box (the paper's random
  "worst-of-k", ``k = 10``).

**Radius.** A transform's size is its *grid radius* ``r(θ) = max(|tx|/T, |ty|/T, |angle|/A)`` (a term whose
bound is 0 is left out): the box ``r <= b`` is the grid scaled by ``b``, ``r <= 1`` the whole grid. Both attacks
try each sample's transforms in order of increasing radius and stop the sample at the first that fools it, so
the result's ``size`` is the smallest radius of a fooling transform (among those tried) and robust accuracy at
budget ``b`` (threat model ``spatial``) is the accuracy under every tried transform of radius ``<= b``: one run
gives the curve, and at ``b = 1`` it is the accuracy under the whole grid. ``params["transform"]`` holds per
sample the fooling ``[tx, ty, angle°]`` (for a failed sample: the tried transform of the highest
cross-entropy, whose image is its ``x_adv``; ``[0, 0, 0]`` for a sample that was not attacked because it is
already misclassified).

**Batching.** All remaining samples and a chunk of their transforms go through the model together (about
``forward_batch`` images per forward pass); samples fooled in a chunk leave, and the chunk of transforms
grows as they do. Inputs must be images ``(N, C, H, W)``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..checks import check_images, check_iterations, check_positive, prepare
from ..core import ops
from ..core.transforms import PADDINGS, matrix, warp
from ..engine.protocol import Run, attack
from ..errors import OptionError, unknown_name

log = logging.getLogger(__name__)

#: the parameters of a transform, in the order of ``params["transform"]`` (pixels, pixels, degrees)
TRANSFORM_NAMES = ("tx", "ty", "angle°")


def _check_box(max_translation, max_rotation) -> None:
    check_positive(max_translation, "max_translation", allow_zero=True)
    check_positive(max_rotation, "max_rotation", allow_zero=True)
    if max_rotation > 180:
        raise OptionError(f"max_rotation is in degrees and at most 180, got {max_rotation!r}")
    if max_translation == 0 and max_rotation == 0:
        raise OptionError("max_translation and max_rotation are both 0: the only transform is the identity")


def _check_count(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise OptionError(f"{name} is a number of grid points and must be an integer >= 1, got {v!r} "
                          "(a grid with zero points tries nothing)")
    return v


def grid_transforms(max_translation: float = 3.0, max_rotation: float = 30.0, num_translations: int = 5,
                    num_rotations: int = 31) -> torch.Tensor:
    """``(T, 3)`` float64 ``[tx, ty, angle°]``: every point of the grid, in the order of Foolbox's
    ``SpatialAttack`` (angle outermost, then ``tx``, then ``ty``); the attacks sort them by radius."""
    _check_box(max_translation, max_rotation)
    _check_count(num_translations, "num_translations")
    _check_count(num_rotations, "num_rotations")
    t = torch.linspace(-max_translation, max_translation, num_translations, dtype=torch.float64)
    a = torch.linspace(-max_rotation, max_rotation, num_rotations, dtype=torch.float64)
    if num_translations == 1:
        t = torch.zeros(1, dtype=torch.float64)
    if num_rotations == 1:
        a = torch.zeros(1, dtype=torch.float64)
    aa, tx, ty = torch.meshgrid(a, t, t, indexing="ij")
    return torch.stack([tx.flatten(), ty.flatten(), aa.flatten()], dim=1)


def grid_radius(theta: torch.Tensor, max_translation: float, max_rotation: float) -> torch.Tensor:
    """The grid radius ``max(|tx|/T, |ty|/T, |angle|/A)`` of transforms ``theta`` ``(..., 3)`` (module docstring)."""
    parts = []
    if max_translation > 0:
        parts.append(theta[..., :2].abs().amax(-1) / max_translation)
    if max_rotation > 0:
        parts.append(theta[..., 2].abs() / max_rotation)
    return torch.stack(parts, -1).amax(-1)


def transform_matrices(theta: torch.Tensor) -> torch.Tensor:
    """``(M, 3, 3)`` matrices ``R(angle) · T(tx, ty)`` of transforms ``theta`` ``(M, 3)`` = ``[tx, ty, angle°]``."""
    theta = theta.to(torch.float64)
    rot = matrix("rotation", theta[:, 2:] * (math.pi / 180.0))
    return rot @ matrix("translation", theta[:, :2])


def apply_transforms(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros", fill: float = 0.0) -> torch.Tensor:
    """Images ``x`` ``(M, C, H, W)`` transformed by ``theta`` ``(M, 3)`` (one transform each); outside the image
    they read ``fill`` (the model's lower bound) with ``padding="zeros"``."""
    M = transform_matrices(theta).to(device=x.device, dtype=x.dtype)  # sample positions in the images' dtype
    return warp(x - fill, M, padding=padding) + fill


def _search(clf, x, y, target, thetas: torch.Tensor, *, padding: str, forward_batch: int):
    """Try per sample ``thetas[i]`` ``(T, 3)`` in order (sorted by radius); stop a sample at its first fooling
    transform. Returns ``(found (m,), index (m,))``: the index of the first fooling transform, else of the
    tried one with the highest cross-entropy, and the number of transforms tried per sample."""
    m, t_count = thetas.shape[:2]
    dev = x.device
    fill = float(clf.bounds[0])
    found = torch.zeros(m, dtype=torch.bool, device=dev)
    index = torch.zeros(m, dtype=torch.long, device=dev)
    best_loss = torch.full((m,), -float("inf"), dtype=torch.float64, device=dev)
    tried = torch.zeros(m, dtype=torch.long, device=dev)
    pos = 0
    while pos < t_count:
        act = (~found).nonzero().squeeze(1)
        r = int(act.numel())
        if r == 0:
            break
        c = max(1, min(t_count - pos, forward_batch // r))
        th = thetas[act, pos:pos + c]                                          # (r, c, 3)
        xs = x[act].unsqueeze(1).expand(r, c, *x.shape[1:]).reshape(r * c, *x.shape[1:])
        logits = []
        flat = th.reshape(r * c, 3)
        for s in range(0, r * c, forward_batch):
            with torch.no_grad():
                logits.append(clf(apply_transforms(xs[s:s + forward_batch], flat[s:s + forward_batch], padding, fill)))
        z = torch.cat(logits).view(r, c, -1)
        pred = z.argmax(-1)
        ya = y[act]
        fooled = (pred == target[act][:, None]) if target is not None else (pred != ya[:, None])
        ce = F.cross_entropy(z.reshape(r * c, -1).double(), ya.repeat_interleave(c), reduction="none").view(r, c)
        any_f = fooled.any(1)
        first = torch.where(any_f, fooled.to(torch.int8).argmax(1), ce.argmax(1))
        tried[act] += torch.where(any_f, first + 1, torch.full_like(first, c))
        improve = any_f | (ce.amax(1) > best_loss[act])
        index[act] = torch.where(improve, pos + first, index[act])
        best_loss[act] = torch.where(any_f, best_loss[act], torch.maximum(best_loss[act], ce.amax(1)))
        found[act] = any_f
        pos += c
    return found, index, tried


def _run(p, thetas: torch.Tensor, *, max_translation: float, max_rotation: float, padding: str,
         forward_batch: int, batch_size: int, gen=None, k: int | None = None):
    """The body shared by both attacks: per batch of samples to attack, sort their transforms by radius, search,
    and assemble ``x_adv``, sizes and transforms. ``thetas``: the grid ``(T, 3)``, or ``None`` with ``k`` (draw
    ``k`` per sample from ``gen``)."""
    n = p.n
    dev, dt = p.x.device, p.x.dtype
    out = p.x.clone()
    size = torch.zeros(n, dtype=torch.float64, device=dev)
    transform = torch.zeros(n, 3, dtype=torch.float64, device=dev)
    tried = torch.zeros(n, dtype=torch.long, device=dev)
    todo = ((p.pred == p.y) if p.target is None else torch.ones(n, dtype=torch.bool, device=dev)).nonzero().squeeze(1)
    box = torch.tensor([max_translation, max_translation, max_rotation], dtype=torch.float64, device=dev)
    for s in range(0, int(todo.numel()), batch_size):
        idx = todo[s:s + batch_size]
        m = int(idx.numel())
        if thetas is None:
            th = (torch.rand(m, k, 3, generator=gen, device=dev, dtype=torch.float64) * 2 - 1) * box
        else:
            th = thetas.to(dev)[None].expand(m, -1, -1)
        rad = grid_radius(th, max_translation, max_rotation)
        order = torch.sort(rad, dim=1, stable=True).indices
        th = th.gather(1, order[..., None].expand(-1, -1, 3))
        rad = rad.gather(1, order)
        tgt = None if p.target is None else p.target[idx]
        found, index, n_tried = _search(p.clf, p.x[idx], p.y[idx], tgt, th, padding=padding,
                                        forward_batch=forward_batch)
        chosen = th[torch.arange(m, device=dev), index]
        transform[idx] = chosen
        size[idx] = rad[torch.arange(m, device=dev), index]
        tried[idx] = n_tried
        with torch.no_grad():
            out[idx] = apply_transforms(p.x[idx], chosen, padding, float(p.clf.bounds[0])).to(dt)
        log.debug("spatial search: %d/%d samples fooled in batch %d", int(found.sum()), m, s // batch_size)
    return out, size, transform, tried


def _check_common(x, what, padding, forward_batch, batch_size):
    if padding not in PADDINGS:
        raise unknown_name("padding", str(padding), PADDINGS)
    check_positive(forward_batch, "forward_batch", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    check_images(x, what, "rotates and translates images")


@attack("spatial-grid", threat="spatial", chunking="position", size_unit="grid radius",
        size_options=("max_translation", "max_rotation"),
        summary="worst case over a grid of rotations and translations (Engstrom et al., ICML 2019)")
def spatial_grid(model, x, y=None, *, max_translation: float = 3.0, max_rotation: float = 30.0,
                 num_translations: int = 5, num_rotations: int = 31, padding: str = "zeros", target=None,
                 forward_batch: int = 256, batch_size: int = 1024) -> Run:
    """The exhaustive spatial grid attack (Engstrom et al., ICML 2019): every rotation and translation of the
    grid, smallest radius first (module docstring).

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: images ``(N, C, H, W)`` inside the model's bounds; y: labels (default: the model's predictions).
        max_translation: largest translation ``T`` in pixels along each axis (the paper's 3).
        max_rotation: largest rotation ``A`` in degrees (the paper's 30).
        num_translations: grid points per translation axis (the paper's 5).
        num_rotations: grid points of the angle (the paper's 31).
        padding: what the image reads outside its border: ``"zeros"`` (the model's lower bound, black),
            ``"border"`` or ``"reflection"``.
        target: target labels (int or ``(N,)``) for the targeted variant.
        forward_batch: images per forward pass (256 is the fastest for LeNet on one CPU thread; larger on a GPU).
        batch_size: samples searched together.
    """
    grid = grid_transforms(max_translation, max_rotation, num_translations, num_rotations)
    _check_common(x, "the spatial grid attack", padding, forward_batch, batch_size)
    p = prepare(model, x, y, target=target)
    x_adv, size, transform, tried = _run(p, grid, max_translation=float(max_translation),
                                         max_rotation=float(max_rotation), padding=padding,
                                         forward_batch=forward_batch, batch_size=batch_size)
    return Run(p, x_adv, iterations=tried, size=size,
               params={"transform": transform.tolist(), "transform_names": list(TRANSFORM_NAMES),
                       "grid_size": int(grid.shape[0])})


@attack("spatial-worst-of-k", threat="spatial", chunking="remaining", size_unit="grid radius",
        size_options=("max_translation", "max_rotation"),
        summary="random worst-of-k rotations and translations (Engstrom et al., ICML 2019)")
def spatial_worst_of_k(model, x, y=None, *, k: int = 10, max_translation: float = 3.0, max_rotation: float = 30.0,
                       padding: str = "zeros", target=None, seed: int | None = None,
                       generator: torch.Generator | None = None, forward_batch: int = 256,
                       batch_size: int = 1024) -> Run:
    """Random worst-of-k (Engstrom et al., ICML 2019): ``k`` rotations and translations per sample drawn uniformly
    from the box of the grid, tried smallest radius first (module docstring).

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: images ``(N, C, H, W)`` inside the model's bounds; y: labels (default: the model's predictions).
        k: random transforms per sample (the paper's 10).
        max_translation: largest translation in pixels along each axis (the paper's 3).
        max_rotation: largest rotation in degrees (the paper's 30).
        padding: ``"zeros"`` (the model's lower bound, black), ``"border"`` or ``"reflection"``.
        target: target labels (int or ``(N,)``) for the targeted variant.
        seed: seed of the draws (``None``: from torch's global generator); generator: or a torch.Generator.
        forward_batch: images per forward pass (256 is the fastest for LeNet on one CPU thread; larger on a GPU).
        batch_size: samples drawn and searched together (the draws are made per batch of samples to attack).
    """
    check_iterations(k, "k")
    _check_box(max_translation, max_rotation)
    _check_common(x, "the worst-of-k spatial attack", padding, forward_batch, batch_size)
    gen = ops.make_generator(x.device, seed, generator)
    p = prepare(model, x, y, target=target)
    x_adv, size, transform, tried = _run(p, None, max_translation=float(max_translation),
                                         max_rotation=float(max_rotation), padding=padding,
                                         forward_batch=forward_batch, batch_size=batch_size, gen=gen, k=k)
    return Run(p, x_adv, iterations=tried, size=size, params={"transform": transform.tolist(),
                                                                  "transform_names": list(TRANSFORM_NAMES)})
