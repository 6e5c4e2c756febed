"""Evaluation: metrics, the robustness suite, and (in later modules) sanity checks and reports."""

from .metrics import accuracy, rho_adv
from .suite import Evaluation, evaluate, save_evaluation

__all__ = ["accuracy", "rho_adv", "Evaluation", "evaluate", "save_evaluation"]
