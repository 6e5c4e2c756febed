"""Metrics over data sets and attack results — the one accuracy and the one fooling rate of the package."""

from __future__ import annotations

import torch

from ..checks import predict
from ..core.modes import eval_mode
from ..core.tasks import Dense

#: label-map pixels with this value do not count (PyTorch's ``cross_entropy`` default, :class:`Dense`'s)
IGNORE_INDEX = Dense.ignore_index


def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Clean accuracy of ``model`` on ``(x, y)``, batched, computed with every module in eval mode (each
    module's own mode is restored afterwards, so it is safe in the middle of training). For a segmenter
    (label maps ``y`` ``(N, H, W)``) it is the pixel accuracy over the pixels not marked ``IGNORE_INDEX``."""
    with eval_mode(model):
        pred = predict(model, x, batch_size)
    y = y.to(pred.device)
    if y.ndim == 3:
        return pixel_accuracy(pred, y)
    return float((pred == y).double().mean())


def pixel_accuracy(pred: torch.Tensor, y: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of counted pixels (``y != ignore_index``) of label maps ``(N, H, W)`` predicted right, over the
    whole set (every counted pixel weighs the same)."""
    counted = y != ignore_index
    return float(((pred == y) & counted).sum().double() / counted.sum().clamp_min(1).double())


def mean_iou(pred: torch.Tensor, y: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean intersection over union of label maps over the whole set: per class ``c``,
    ``|pred = c ∧ y = c| / |pred = c ∨ y = c|`` over the counted pixels, averaged over the classes present in
    ``pred`` or ``y`` (the PASCAL VOC convention; Houdini, Cisse et al., NeurIPS 2017, reports it)."""
    return Dense(ignore_index=ignore_index).miou(pred, y, num_classes)


def segmentation_metrics(pred: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                         target: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """``miou`` and ``pixel_accuracy`` of predicted maps against ``y``; with ``target``, also
    ``target_agreement``: the fraction of counted pixels (``y != ignore_index``) predicted as the target
    (:meth:`~georobust.core.tasks.Dense.set_metrics`)."""
    return Dense(ignore_index=ignore_index).set_metrics(pred, y, num_classes, target)


def perturbed_labels(model, x: torch.Tensor, v: torch.Tensor, *, pred: torch.Tensor | None = None,
                     clip: bool = True, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels of ``x`` and of ``x + v``: ``(clean, perturbed)``.

    ``v`` is one perturbation (shape ``x.shape[1:]``: universal) or one per sample (as many elements as
    ``x``); ``x + v`` is clipped to the model's bounds when ``clip``. ``model`` must be a validated classifier
    (:func:`~georobust.checks.prepare`); ``pred``: the clean predictions when already known (saves a pass).
    """
    if pred is None:
        pred = predict(model, x, batch_size)
    v = v.to(x.device, x.dtype)
    if v.shape != x.shape[1:]:
        v = v.reshape(x.shape)
    xa = x + v
    if clip:
        xa = xa.clamp(*model.bounds)
    return pred, predict(model, xa, batch_size)


def fooling_rate(model, x: torch.Tensor, v: torch.Tensor, *, pred: torch.Tensor | None = None, clip: bool = True,
                 batch_size: int = 1024) -> float:
    """Fooling rate of ``v`` on ``x``: the fraction of samples whose *predicted* label changes (labels play no
    part; Moosavi-Dezfooli et al., CVPR 2017). ``v`` and the arguments as in :func:`perturbed_labels`."""
    clean, adv = perturbed_labels(model, x, v, pred=pred, clip=clip, batch_size=batch_size)
    return float((adv != clean).double().mean())


def rho_adv(result) -> float:
    """DeepFool's ρ_adv: the mean over successfully attacked samples of ``‖r‖₂/‖x‖₂``."""
    s = result.success
    return float(result.rho[s].mean()) if bool(s.any()) else float("nan")
