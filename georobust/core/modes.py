"""Train/eval modes of a module: which modules compute differently in the two, and a context that puts every
module in eval mode and restores each one's own mode afterwards (used by the training objectives' inner
computations and by the accuracy metric)."""

from __future__ import annotations

import contextlib

from torch import nn


def mode_dependent(model: nn.Module) -> bool:
    """Whether ``model`` computes something different in train and eval mode (batch-norm, dropout)."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return any(isinstance(m, kinds) for m in model.modules())


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every module of ``model`` in eval mode for the block, then restore each module's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield model
    finally:
        for m, was in modes:
            m.training = was
