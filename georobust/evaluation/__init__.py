"""Evaluation: the metrics (the one accuracy, the one fooling rate, ρ_adv), the robustness suite (robust accuracy
versus ε), the standard cascade (APGD-CE → APGD-T → FAB-T → Square, per-sample worst case) and the
gradient-masking alarms."""

from .alarms import Alarm, run_alarms
from .cascade import PRESETS, CascadeResult, cascade
from .metrics import accuracy, fooling_rate, perturbed_labels, rho_adv
from .suite import Evaluation, evaluate, save_evaluation

__all__ = ["Alarm", "run_alarms", "PRESETS", "CascadeResult", "cascade", "accuracy", "fooling_rate", "perturbed_labels", "rho_adv", "Evaluation", "evaluate", "save_evaluation"]
