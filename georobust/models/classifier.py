"""``Classifier``: an ``nn.Module`` with declared input bounds and its own preprocessing.

Normalisation (mean/std) lives here and nowhere else, so every perturbation an attack returns is measured
in input space (the space of ``x`` as the user holds it, by default ``[0, 1]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError


def _as_buffer(v, name: str) -> torch.Tensor | None:
    if v is None:
        return None
    t = torch.as_tensor(v, dtype=torch.float32)
    if t.ndim == 0:
        t = t.reshape(1)
    if not torch.isfinite(t).all():
        raise ModelError(f"{name} must be finite, got {v!r}")
    return t


class Classifier(nn.Module):
    """Wrap ``module`` (inputs -> logits ``(N, K)``) with input ``bounds`` and optional ``mean``/``std``.

    ``mean`` and ``std`` are per channel (a sequence of length C, or a scalar); the wrapped module sees
    ``(x - mean) / std``. ``bounds`` is the box every input and every adversarial example must lie in.
    """

    def __init__(
        self,
        module: nn.Module,
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        name: str | None = None,
    ):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise ModelError(f"bounds must satisfy low < high, got {bounds!r}")
        self.module = module
        self.bounds = (lo, hi)
        self.name = name or type(module).__name__
        m, s = _as_buffer(mean, "mean"), _as_buffer(std, "std")
        if s is not None and (s <= 0).any():
            raise ModelError(f"std must be positive, got {std!r}")
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    def _stat(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.ndim >= 3 and t.numel() > 1:  # per channel
            return t.to(x.device).reshape(1, -1, *([1] * (x.ndim - 2)))
        return t.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self._stat(self.mean, x)
        if self.std is not None:
            x = x / self._stat(self.std, x)
        return self.module(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, bounds={self.bounds}"


def as_classifier(model: nn.Module, bounds: tuple[float, float] | None = None) -> Classifier:
    """Return ``model`` if it is a :class:`Classifier`, else wrap it with ``bounds`` (default ``(0, 1)``)."""
    if isinstance(model, Classifier):
        if bounds is not None and tuple(map(float, bounds)) != model.bounds:
            raise ModelError(f"bounds {bounds} given, but the Classifier declares {model.bounds}")
        return model
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"expected a torch.nn.Module returning logits, got {type(model).__name__}; "
            "wrap plain functions in an nn.Module"
        )
    clf = Classifier(model, bounds=bounds or (0.0, 1.0))
    clf.training = model.training  # the wrapper inherits the module's mode; it never switches it
    return clf
