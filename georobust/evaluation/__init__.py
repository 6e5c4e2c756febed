"""Evaluation: the metrics (the one accuracy, the one fooling rate, ρ_adv) and the robustness suite."""

from .metrics import accuracy, fooling_rate, perturbed_labels, rho_adv
from .suite import Evaluation, evaluate, save_evaluation

__all__ = ["accuracy", "fooling_rate", "perturbed_labels", "rho_adv", "Evaluation", "evaluate", "save_evaluation"]
