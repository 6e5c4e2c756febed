"""``Classifier``: an ``nn.Module`` with declared input bounds and its own preprocessing.

Normalisation (mean/std) lives here and nowhere else, so every perturbation an attack returns is measured
in input space (the space of ``x`` as the user holds it, by default ``[0, 1]``).

A ``Classifier`` may also know the shape of one input (``input_shape``, set by :func:`~georobust.load_model`
from the weights' metadata), so that inputs of another shape are refused before any work, and may turn a
module that returns probabilities into one that returns logits (``logits="log"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError

#: values of ``Classifier(logits=...)``: ``None`` (the module returns logits) or ``"log"`` (it returns
#: probabilities; the classifier returns their logarithm, clamped away from 0)
LOGITS = (None, "log")


def check_logits(logits) -> str | None:
    """Validate the ``logits`` option of :class:`Classifier` / ``load_model``."""
    if logits not in LOGITS:
        raise ModelError(
            f"logits must be None (the module returns logits) or 'log' (it returns probabilities), got {logits!r}"
        )
    return logits


def _input_shape(shape) -> tuple[int, ...] | None:
    if shape is None:
        return None
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ModelError(f"input_shape must be a sequence of positive integers (one sample, no batch), "
                         f"got {shape!r}") from None
    if not out or any(s < 1 for s in out):
        raise ModelError(f"input_shape must be a sequence of positive integers (one sample, no batch), got {shape!r}")
    return out


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
    ``input_shape``: the shape of one input, without the batch dimension (e.g. ``(1, 28, 28)``), when known;
    inputs of another shape are then refused before any work. ``logits="log"``: the module returns
    probabilities (e.g. it ends in a softmax), and the classifier returns ``log(max(p, tiny))`` — logits up
    to a per-sample constant, which changes no logit difference, so attacks and geometry work on it as on
    the module without its softmax.
    """

    def __init__(
        self,
        module: nn.Module,
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        name: str | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        logits: str | None = None,
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
        self.input_shape = _input_shape(input_shape)
        self.logits = check_logits(logits)
        #: warnings about this model found by the last validation (``checks.check_model``), e.g. that it
        #: returns probabilities; copied into every result made with it
        self.output_warnings: list[str] = []

    def _stat(self, t: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
        n = t.numel()
        if n > 1:
            have = x.shape[1] if x.ndim >= 2 else 1
            if have != n:
                unit = "channel" if x.ndim >= 3 else "feature"
                raise ModelError(
                    f"Classifier {self.name!r}: {what} has {n} values (one per {unit}), but the inputs (one sample: "
                    f"{tuple(x.shape[1:])}) have {have} {unit}(s); give {what} one value per {unit} "
                    f"(or a single value)"
                )
        if x.ndim >= 3 and n > 1:  # per channel
            return t.to(x.device).reshape(1, -1, *([1] * (x.ndim - 2)))
        return t.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self._stat(self.mean, x, "mean")
        if self.std is not None:
            x = x / self._stat(self.std, x, "std")
        out = self.module(x)
        if self.logits == "log" and isinstance(out, torch.Tensor) and out.is_floating_point():
            out = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
        return out

    def extra_repr(self) -> str:
        extra = "" if self.input_shape is None else f", input_shape={self.input_shape}"
        extra += "" if self.logits is None else f", logits={self.logits!r}"
        return f"name={self.name!r}, bounds={self.bounds}{extra}"


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
