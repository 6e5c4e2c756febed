"""Losses an attack ascends, per sample: cross-entropy, the Carlini–Wagner margin and the DLR loss, and the
gradient of any of them with respect to the input."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import OptionError

#: the losses :func:`attack_loss` knows
LOSSES = ("ce", "cw", "dlr")


def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini–Wagner margin, per sample: ``max_{k≠y} z_k − z_y`` (untargeted) or ``z_t − max_{k≠t} z_k``."""
    ref = target if target is not None else y
    z_ref = logits.gather(1, ref[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, ref[:, None], float("-inf"))
    best_other = other.amax(1)
    return z_ref - best_other if target is not None else best_other - z_ref


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020), per sample, to be *ascended*.

    Untargeted: ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)``; targeted: ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``,
    with ``z_π1 ≥ z_π2 ≥ …`` the sorted logits. Invariant to shifting and (positively) scaling the logits,
    so a model cannot hide behind large or saturated logits. Needs ``K ≥ 3`` classes (``K ≥ 4`` targeted).
    """
    k = logits.shape[1]
    if k < (4 if target is not None else 3):
        raise OptionError(f"the DLR loss needs at least {4 if target is not None else 3} classes, the model has {k}; "
                          "use loss='cw'")
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is not None:
        z_t = logits.gather(1, target[:, None]).squeeze(1)
        return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)
    return margin_loss(logits, y) / (srt[:, 0] - srt[:, 2] + 1e-12)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Per-sample loss an attack *ascends*: CE away from ``y``, or towards ``target``; the C&W margin; or DLR.
    ``loss`` may also be a callable ``loss(logits, y, target) -> (N,)`` (a task's own loss, e.g. Houdini on
    dense outputs), called as it is."""
    if callable(loss):
        return loss(logits, y, target)
    if loss == "ce":
        if target is not None:
            return -F.cross_entropy(logits, target, reduction="none")
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "cw":
        return margin_loss(logits, y, target)
    if loss == "dlr":
        return dlr_loss(logits, y, target)
    raise OptionError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def loss_grad(model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
              loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the per-sample attack loss w.r.t. ``x``; returns ``(grad, loss, logits)``.

    Per-sample losses are summed before the backward pass, so each sample's gradient is its own (models
    in eval mode do not mix samples).
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        ell = attack_loss(logits, y, target, loss)
        (g,) = torch.autograd.grad(ell.sum(), xr)
    return g.detach(), ell.detach(), logits.detach()
