"""Evaluation: metrics, the robustness suite, and (in later modules) sanity checks and reports."""

from .metrics import accuracy, fooling_rate, perturbed_labels, rho_adv
from .suite import Evaluation, evaluate, save_evaluation

__all__ = ["accuracy", "fooling_rate", "perturbed_labels", "rho_adv", "Evaluation", "evaluate", "save_evaluation"]
