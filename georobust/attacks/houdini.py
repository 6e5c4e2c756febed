"""Houdini (Cisse, Adi, Neverova & Keshet, "Houdini: Fooling deep structured prediction models", NeurIPS 2017)
on dense prediction (semantic segmentation), and the per-pixel cross-entropy baseline in the same PGD.

**The loss.** For a structured output the task loss ``ℓ(ŷ, y)`` (here: per-pixel 0/1 error, or 1 − mIoU) is
piecewise constant in the input, so it has no useful gradient. Houdini multiplies it by the probability that
the score of the prediction beats that of the reference under a standard normal perturbation,

    ℓ_H(x, y) = P_{γ∼N(0,1)}[ g(x, y) − g(x, ŷ) < γ ] · ℓ(ŷ, y) = (1 − Φ(δ)) · ℓ(ŷ, y),   δ = g(x, y) − g(x, ŷ),

and uses the gradient the paper derives, ``∇_g ℓ_H = −φ(δ) ℓ(ŷ, y) · ∇_g δ`` (``φ`` the standard normal density:
``−φ(δ)ℓ`` on the reference's score, ``+φ(δ)ℓ`` on the prediction's; ``ŷ`` and ``ℓ`` are held constant, they
are piecewise constant). It is computed per pixel, ``g`` being the per-pixel logits of the segmenter:

    ℓ_H = Σ_p (1 − Φ(δ_p)) · w_p,   δ_p = z_p[y_p] − z_p[ŷ_p],

with the task loss spread over the pixels as weights ``w_p`` (:data:`TASK_LOSSES`): ``"pixel"`` — the 0/1 error,
``w_p = [ŷ_p ≠ y_p] / #counted``; ``"iou"`` — 1 − mIoU, each pixel weighted by its first-order effect on it,
``w_p = [ŷ_p ≠ y_p] / (C · |U_{y_p}|)`` (``C`` classes present, ``U_c`` the pixels predicted or labelled ``c``:
one more pixel right in class ``c`` raises ``IoU_c`` by ``1/|U_c|``), so small objects weigh as much as the
background — which is what separates mIoU from pixel accuracy. :class:`HoudiniFunction` is the custom
autograd function with the paper's gradient; :func:`houdini_loss` the per-sample loss.

**Targeted** (the paper's demonstration: make the segmenter output a chosen, unrelated label map): ``y`` in the
formula is the target map, ``ŷ`` the current arg-max prediction (exactly the paper), and the attack descends
``ℓ_H``: on every pixel not yet on the target it raises the target's logit against the predicted one, with
weight ``φ(δ_p)``. **Untargeted** (destroy the segmentation, minimise mIoU): ``y`` is the label map and ``ŷ_p``
the strongest *competing* label, ``argmax_{k ≠ y_p} z_p[k]`` — the loss-augmented prediction of the 0/1 loss;
with the plain arg-max, ``ŷ_p = y_p`` on every pixel still segmented right, where ``ℓ = 0`` and the gradient is
exactly zero, so the attack could never start there. The attack ascends ``ℓ_H``.

**The baseline** (``dense-pgd``): the same PGD (``engine.pgd.pgd_kernel``, L∞ and L2) on the mean per-pixel
cross-entropy, ascended (untargeted) or descended towards the target map (targeted) — the "dense adversary
generation" style of Xie et al. (ICCV 2017) as a projected-gradient attack. Both attacks keep, per scene, the
iterate whose prediction meets the goal on the most pixels (pixels moved off ``y``, or onto the target), so
they are compared on the task, not on their own surrogate losses.

Success (``results.verify``, task ``dense``) is that every counted pixel meets the goal; the results report mIoU,
pixel accuracy and, targeted, the fraction of pixels on the target (:meth:`AttackResult.summary`).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..checks import check_iterations, check_norm, check_positive, prepare
from ..core import ops
from ..core.tasks import task as get_task
from ..engine.pgd import WorstCase, pgd_kernel
from ..engine.protocol import Run, attack
from ..errors import InputError, OptionError, unknown_name

log = logging.getLogger(__name__)

DENSE = get_task("dense")
IGNORE_INDEX = DENSE.ignore_index
#: target maps by name: ``roll`` — each scene gets the clean segmentation of the next scene in the batch
TARGET_MODES = ("roll",)
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def pixel_weights(pred: torch.Tensor, ref: torch.Tensor, counted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Task loss "pixel" (0/1 error): every counted pixel weighs ``1 / #counted`` of its sample."""
    c = counted.to(torch.float64)
    return c / c.flatten(1).sum(1).clamp_min(1)[:, None, None]


def iou_weights(pred: torch.Tensor, ref: torch.Tensor, counted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Task loss "iou" (1 − mIoU of the sample): pixel ``p`` weighs ``1 / (C · |U_{ref_p}|)``, the first-order
    change of the sample's mIoU when that pixel's prediction changes (``U_c``: counted pixels predicted or
    labelled ``c``; ``C``: the classes present in prediction or reference)."""
    n = ref.shape[0]
    cls = torch.arange(num_classes, device=ref.device)
    in_pred = (pred[:, None] == cls[None, :, None, None]) & counted[:, None]
    in_ref = (ref[:, None] == cls[None, :, None, None]) & counted[:, None]
    union = (in_pred | in_ref).flatten(2).sum(2).to(torch.float64)  # (N, K)
    present = (union > 0).sum(1).clamp_min(1).to(torch.float64)  # (N,)
    safe_ref = torch.where(counted, ref, torch.zeros_like(ref))
    u = union.gather(1, safe_ref.flatten(1)).view_as(ref).clamp_min(1)
    return counted.to(torch.float64) / (present.view(n, 1, 1) * u)


#: the task losses ℓ(ŷ, y), spread over the pixels as weights (see the module docstring)
TASK_LOSSES = {"pixel": pixel_weights, "iou": iou_weights}


class HoudiniFunction(torch.autograd.Function):
    """``Σ_p (1 − Φ(δ_p)) w_p`` per sample, ``δ_p = z[ref_p] − z[ŷ_p]``, with the paper's gradient: ``−φ(δ_p) w_p``
    on ``z[ref_p]`` and ``+φ(δ_p) w_p`` on ``z[ŷ_p]`` (zero where ``ŷ_p = ref_p``); ``ref``, ``ŷ`` and ``w`` are
    constants. Inputs: logits ``(N, K, H, W)``, ``ref`` and ``yhat`` int64 ``(N, H, W)`` (valid classes), ``w``
    ``(N, H, W)``."""

    @staticmethod
    def forward(ctx, logits, ref, yhat, weight):
        delta = (logits.gather(1, ref[:, None]) - logits.gather(1, yhat[:, None]))[:, 0]
        prob = 0.5 * torch.erfc(delta / _SQRT2)  # P[γ > δ] = 1 − Φ(δ)
        w = weight.to(logits.dtype)
        ctx.save_for_backward(delta, ref, yhat, w)
        ctx.num_classes = logits.shape[1]
        return (prob * w).flatten(1).sum(1)

    @staticmethod
    def backward(ctx, grad_out):
        delta, ref, yhat, w = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        c = -_INV_SQRT_2PI * torch.exp(-0.5 * delta * delta) * w * grad_out.view(-1, 1, 1)  # ∂ℓ_H/∂δ
        g = torch.zeros(delta.shape[0], ctx.num_classes, *delta.shape[1:], dtype=delta.dtype, device=delta.device)
        g.scatter_add_(1, ref[:, None], c[:, None])
        g.scatter_add_(1, yhat[:, None], -c[:, None])
        return g, None, None, None


def houdini_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, *,
                 task_loss: str = "pixel", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Houdini per sample ``(N,)`` on dense logits ``(N, K, H, W)`` (module docstring): untargeted, ``ℓ_H`` with
    the label map ``y`` and the strongest competing labels (to be *ascended*); targeted, ``−ℓ_H`` with the target
    map and the arg-max prediction (ascending it descends ``ℓ_H``). Pixels with ``y == ignore_index`` count for
    nothing."""
    if task_loss not in TASK_LOSSES:
        raise unknown_name("task loss", task_loss, TASK_LOSSES)
    k = logits.shape[1]
    counted = y != ignore_index
    pred = logits.detach().argmax(1)
    if target is None:
        ref = torch.where(counted, y, torch.zeros_like(y))
        other = logits.detach().scatter(1, ref[:, None], float("-inf"))
        yhat = other.argmax(1)
        w = TASK_LOSSES[task_loss](pred, ref, counted, k)
        return HoudiniFunction.apply(logits, ref, yhat, w)
    ref = torch.where(counted, target, torch.zeros_like(target))
    w = TASK_LOSSES[task_loss](pred, ref, counted, k) * (pred != ref)
    return -HoudiniFunction.apply(logits, ref, pred, w)


def dense_ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, *,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean per-pixel cross-entropy per sample over the counted pixels: away from ``y`` (to be ascended), or
    minus the one towards ``target``."""
    counted = y != ignore_index
    ref = y if target is None else torch.where(counted, target, torch.full_like(target, ignore_index))
    ce = F.cross_entropy(logits, ref, reduction="none", ignore_index=ignore_index)  # (N, H, W), 0 where ignored
    mean = ce.flatten(1).sum(1) / counted.flatten(1).sum(1).clamp_min(1)
    return mean if target is None else -mean


def judge(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None):
    """(success, fraction of counted pixels meeting the goal) of per-pixel logits, by the dense task."""
    frac = DENSE.changed_fraction(logits.argmax(1), y, target)
    return frac >= DENSE.min_fraction - 1e-12, frac


def _resolve_target(target, p) -> torch.Tensor | None:
    if target is None or isinstance(target, torch.Tensor):
        return target
    if isinstance(target, str):
        if target not in TARGET_MODES:
            raise unknown_name("target map", target, TARGET_MODES)
        if p.n < 2:
            raise InputError("target='roll' gives each scene the segmentation of the next one: it needs >= 2 scenes")
        return p.pred.roll(1, 0).clone()
    raise OptionError(f"target must be a class (int), a label map tensor (N, H, W) or one of {TARGET_MODES}, "
                      f"got {type(target).__name__}")


def _dense_pgd(model, x, y, *, loss_fn, eps, norm, steps, step_size, target, random_start, seed, generator,
               batch_size, extra) -> Run:
    norm = check_norm(norm)
    check_positive(eps, "eps", allow_zero=True)
    check_iterations(steps, "steps")
    check_positive(batch_size, "batch_size", integer=True)
    if step_size is None:
        step_size = 2.5 * float(eps) / steps
    else:
        check_positive(step_size, "step_size", allow_zero=True)
    mode = target if isinstance(target, str) else None
    if mode is not None and mode not in TARGET_MODES:
        raise unknown_name("target map", mode, TARGET_MODES)
    p = prepare(model, x, y, target=None if isinstance(target, str) else target, task="dense")
    if mode is not None:
        p.target = _resolve_target(mode, p)
    gen = ops.make_generator(p.x.device, seed, generator) if random_start else None
    eps, step_size = float(eps), float(step_size)
    track = WorstCase(p.x, early_stop=True, judge=judge)
    params = {"eps": eps, "norm": norm, "step_size": step_size, "num_classes": p.num_classes, **extra}
    if mode is not None:
        params["target_map"] = mode
    run = Run(p, track.best_x, iterations=track.iterations, params=params)
    if eps == 0:
        return run
    for first in range(0, p.n, batch_size):
        pos = torch.arange(first, min(first + batch_size, p.n), device=p.x.device)
        x0 = p.x[pos]
        start = (x0 + ops.random_start(x0, eps, norm, gen)).clamp(*p.clf.bounds) if random_start else None
        pgd_kernel(p.clf, x0, p.y[pos], eps=eps, norm=norm, steps=steps, step_size=step_size, bounds=p.clf.bounds,
                   target=None if p.target is None else p.target[pos], loss=loss_fn, start=start, tracker=track,
                   index=pos)
    return run


@attack("houdini", threat="bounded-lp", norms=("inf", "2"), task="dense", chunking=None,
        summary="Houdini (Cisse et al., NeurIPS 2017): PGD on a surrogate of the task loss (mIoU / pixel error) "
                "of a segmenter, untargeted or towards a target label map")
def houdini(model, x, y=None, *, eps: float, norm="inf", steps: int = 40, step_size: float | None = None,
            target=None, task_loss: str = "pixel", random_start: bool = False, seed: int | None = None,
            generator: torch.Generator | None = None, batch_size: int = 64) -> Run:
    """Houdini (Cisse, Adi, Neverova & Keshet, NeurIPS 2017) inside the toolkit's PGD, on a segmenter.

    Args:
        model: a dense-prediction model returning logits ``(N, K, H, W)`` (eval mode).
        x: inputs inside the model's bounds; y: label maps ``(N, H, W)`` (``-100`` = ignore; default: the
            model's clean segmentation).
        eps: radius of the ball (``0`` returns ``x``).
        norm: ``"inf"`` or ``2``.
        steps: gradient steps (default 40).
        step_size: ``α`` (default ``2.5·eps/steps``).
        target: a label map ``(N, H, W)``, a class (every pixel), or ``"roll"`` (each scene gets the clean
            segmentation of the next scene in the batch: an unrelated real segmentation, the paper's
            demonstration); ``None`` is untargeted.
        task_loss: ``"pixel"`` (per-pixel 0/1 error) or ``"iou"`` (1 − mIoU).
        random_start: start uniformly inside the ball (default: at ``x``).
        seed, generator: the randomness of the random start.
        batch_size: scenes per forward/backward pass.

    Returns:
        an :class:`AttackResult` (task ``dense``): per scene the iterate meeting the goal on most pixels; its
        ``summary()`` has mIoU, pixel accuracy and (targeted) target agreement.
    """
    if task_loss not in TASK_LOSSES:
        raise unknown_name("task loss", task_loss, TASK_LOSSES)

    def loss_fn(logits, yy, tt):
        return houdini_loss(logits, yy, tt, task_loss=task_loss)

    return _dense_pgd(model, x, y, loss_fn=loss_fn, eps=eps, norm=norm, steps=steps, step_size=step_size,
                      target=target, random_start=random_start, seed=seed, generator=generator,
                      batch_size=batch_size, extra={})


@attack("dense-pgd", threat="bounded-lp", norms=("inf", "2"), task="dense", chunking=None,
        summary="PGD on the per-pixel cross-entropy of a segmenter (the baseline of Houdini), untargeted or "
                "towards a target label map")
def dense_pgd(model, x, y=None, *, eps: float, norm="inf", steps: int = 40, step_size: float | None = None,
              target=None, random_start: bool = False, seed: int | None = None,
              generator: torch.Generator | None = None, batch_size: int = 64) -> Run:
    """PGD (Madry et al., ICLR 2018) on the mean per-pixel cross-entropy of a segmenter — the baseline Houdini
    (Cisse et al., NeurIPS 2017) is compared with; the "dense adversary generation" of Xie et al. (ICCV 2017)
    as a projected-gradient attack. Options as :func:`houdini` (no ``task_loss``)."""
    return _dense_pgd(model, x, y, loss_fn=dense_ce_loss, eps=eps, norm=norm, steps=steps, step_size=step_size,
                      target=target, random_start=random_start, seed=seed, generator=generator,
                      batch_size=batch_size, extra={})
