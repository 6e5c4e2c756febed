"""Metrics over data sets and attack results."""

from __future__ import annotations

import torch

from ..checks import predict


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Clean accuracy of ``model`` on ``(x, y)``."""
    return float((predict(model, x) == y).double().mean())


def rho_adv(result) -> float:
    """DeepFool's ρ_adv: the mean over successfully attacked samples of ``‖r‖₂/‖x‖₂``."""
    s = result.success
    return float(result.rho[s].mean()) if bool(s.any()) else float("nan")
