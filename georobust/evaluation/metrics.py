"""Metrics over data sets and attack results — the one accuracy and the one fooling rate of the package."""

from __future__ import annotations

import torch

from ..checks import predict
from ..core.modes import eval_mode


def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Clean accuracy of ``model`` on ``(x, y)``, batched, computed with every module in eval mode (each
    module's own mode is restored afterwards, so it is safe in the middle of training)."""
    with eval_mode(model):
        pred = predict(model, x, batch_size)
    return float((pred == y.to(pred.device)).double().mean())


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
