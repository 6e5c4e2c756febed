"""Small shared pieces of the attacks: per-sample broadcasting, projections, loss gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import OptionError


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(N,)`` to broadcast against ``x`` ``(N, ...)``."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    f = t.flatten(1)
    if norm == "2":
        return f.norm(dim=1)
    if norm == "inf":
        return f.abs().amax(1)
    if norm == "1":
        return f.abs().sum(1)
    raise OptionError(f"unknown norm {norm!r}")


def steepest_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm direction of steepest ascent for ``g``: ``sign(g)`` for L∞, ``g/‖g‖₂`` for L2."""
    if norm == "inf":
        return g.sign()
    n = flat_norm(g, "2").clamp_min(1e-12)
    return g / bcast(n, g)


def project(delta: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (a scalar or per-sample ``(N,)``)."""
    if not isinstance(eps, torch.Tensor):
        eps = torch.full((delta.shape[0],), float(eps), device=delta.device, dtype=delta.dtype)
    e = bcast(eps.to(delta.dtype), delta)
    if norm == "inf":
        return torch.maximum(torch.minimum(delta, e), -e)
    if norm == "2":
        n = bcast(flat_norm(delta, "2"), delta)
        return delta * torch.clamp(e / n.clamp_min(1e-12), max=1.0)
    raise OptionError(f"projection onto the {norm} ball is not supported")


def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini–Wagner margin, per sample: ``max_{k≠y} z_k − z_y`` (untargeted) or ``z_t − max_{k≠t} z_k``."""
    ref = target if target is not None else y
    z_ref = logits.gather(1, ref[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, ref[:, None], float("-inf"))
    best_other = other.amax(1)
    return z_ref - best_other if target is not None else best_other - z_ref


def attack_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Per-sample loss an attack *ascends*: CE away from ``y``, or towards ``target``; or the C&W margin."""
    if loss == "ce":
        if target is not None:
            return -F.cross_entropy(logits, target, reduction="none")
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "cw":
        return margin_loss(logits, y, target)
    raise OptionError(f"unknown loss {loss!r}; choose 'ce' or 'cw'")


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
