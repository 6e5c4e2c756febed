"""Training objectives, each registered by name in ``georobust.registry.objectives``.

An objective is a callable ``obj(model, x, y) -> (loss, terms)`` where ``loss`` is the scalar to minimise
(mean over the batch) and ``terms`` a dict of floats shown in the progress bar and written to the log.
``model`` is the :class:`~georobust.Classifier` being trained, in training mode; an objective that needs
an inner attack switches to eval mode for it and back (see the robust objectives).
"""

from __future__ import annotations

import abc
import inspect

import torch
import torch.nn.functional as F

from .. import registry
from ..errors import unknown_name


class Objective(abc.ABC):
    """Base class: subclasses implement ``__call__`` and describe themselves in ``config``."""

    name = "objective"

    def config(self) -> dict:
        return {"name": self.name}

    @abc.abstractmethod
    def __call__(self, model, x: torch.Tensor, y: torch.Tensor):
        """Return ``(loss, terms)`` for the batch."""


@registry.objectives.register("standard", kind="objective")
class Standard(Objective):
    """Plain cross-entropy (empirical risk minimisation)."""

    name = "standard"

    def __call__(self, model, x, y):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"ce": float(loss.detach()), "acc": float(acc)}


def make_objective(name: str | Objective, **options) -> Objective:
    """An objective by name with its options (unknown options are an error), or pass one through."""
    if isinstance(name, Objective):
        if options:
            raise TypeError("options given together with an Objective instance")
        return name
    entry = registry.objectives.get(name)
    sig = inspect.signature(entry.fn.__init__)
    known = {k for k in sig.parameters if k != "self"}
    for k in options:
        if k not in known:
            raise unknown_name(f"option of objective {name!r}", k, known or {"(none)"})
    return entry.fn(**options)
