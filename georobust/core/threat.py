"""Threat models: what the size of a perturbation is, and how robust accuracy is read from an attack's result.

Every attack is registered with one threat model (``registry.attacks.register(..., threat=...)``); its
results carry the name (``AttackResult.threat``), and the evaluation suite, ``AttackResult.robust_accuracy``,
the CLI and the plots dispatch on it — never on an attack's name.

==============  =====================================================  ============================================
threat model    size of a perturbation                                 robust accuracy at budget ``b``
==============  =====================================================  ============================================
``minimal-lp``  its Lp norm (the attack *minimises* it: DeepFool,      correct and not fooled with size ``<= b``:
                L-BFGS, SparseFool)                                    one run gives the whole curve
``bounded-lp``  at most ``eps`` in an Lp norm (FGSM, PGD, ...)         correct and not fooled by the run at ``eps=b``
                                                                       (one run per budget)
``decision``    the L2 norm found within a query budget (label-only:    as ``minimal-lp`` (the smallest perturbation
                QFool, HopSkipJump); ``queries`` per sample             found so far); ``history`` gives it per budget
``universal``   the norm ``xi`` of one input-agnostic perturbation      1 − fooling rate, not a per-sample attack
``spatial``     the size of a transformation (flow/grid/affine          correct and not fooled with ``size <= b``
                parameters, or the geodesic distance on the
                transformation manifold): ``AttackResult.size``
``patch``       the area of a patch (fraction of the input) and where  correct and not fooled with ``size <= b``
                it may be placed: ``AttackResult.size``
==============  =====================================================  ============================================

A failed sample counts as robust at every budget, so each curve is an upper bound on the true robust
accuracy (the evaluation suite takes the per-sample minimum over attacks to tighten it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OptionError, unknown_name
from .tasks import task

#: numerical slack when comparing a perturbation's size with a budget (sizes are computed in float64)
SIZE_TOL = 1e-7


@dataclass(frozen=True)
class ThreatModel:
    """One threat model (see the module docstring's table).

    Attributes:
        name: the registered name.
        size: what the size of a perturbation is, in words.
        curve: one run gives robust accuracy at every budget (minimal, decision, spatial, patch) — otherwise
            the attack runs once per budget (``budget_option`` names the option that takes it).
        per_sample: a per-sample attack (``False``: one perturbation for a whole data set).
        budget_option: the attack option a budget is passed as (``eps`` for bounded attacks).
        lp: the size is an Lp norm of ``x_adv − x`` (the norm given to ``robust``); else ``AttackResult.size``.
    """

    name: str
    size: str
    curve: bool
    per_sample: bool = True
    budget_option: str | None = None
    lp: bool = True

    def sizes(self, result, norm: str = "2") -> torch.Tensor:
        """Per-sample size of ``result``'s perturbations in this threat model (float64)."""
        if self.lp:
            return result.norms(norm)
        if getattr(result, "size", None) is None:
            raise OptionError(f"a {self.name} result must carry per-sample sizes (AttackResult.size)")
        return result.size.double()

    def robust(self, result, budgets, norm: str = "2") -> torch.Tensor:
        """``(N, B)`` bool: sample ``i`` correctly classified and not fooled within budget ``budgets[j]``.

        For a ``curve`` threat model every budget is read from the one result. For a bounded one the result
        was run at a single budget: it answers for that budget (``result.params[budget_option]``) and for
        none other."""
        correct = result.label_clean == result.y
        if correct.ndim > 1:   # dense (label maps): correct unless the clean prediction already meets the goal
            correct = ~task(getattr(result, "task", "dense")).success(result.label_clean, result.y)
        budgets = [float(b) for b in budgets]
        if not self.per_sample:
            raise OptionError(f"{self.name} perturbations are not per-sample: read their fooling rate instead")
        if self.curve:
            size = self.sizes(result, norm)
            fooled = result.success[:, None] & (size[:, None] <= torch.tensor(budgets, dtype=size.dtype,
                                                                                 device=size.device) + SIZE_TOL)
            return correct[:, None] & ~fooled
        ran_at = float(result.params.get(self.budget_option, float("nan")))
        for b in budgets:
            if abs(b - ran_at) > SIZE_TOL * max(1.0, abs(b)):
                raise OptionError(f"this {self.name} result was run at {self.budget_option}={ran_at:g}; it says "
                                  f"nothing about {self.budget_option}={b:g} (run the attack at each budget)")
        return (correct & ~result.success)[:, None].expand(-1, len(budgets)).clone()


THREAT_MODELS: dict[str, ThreatModel] = {t.name: t for t in (
    ThreatModel("minimal-lp", "the Lp norm of the minimal perturbation found", curve=True),
    ThreatModel("bounded-lp", "at most eps in an Lp norm", curve=False, budget_option="eps"),
    ThreatModel("decision", "the L2 norm found within a query budget (labels only)", curve=True),
    ThreatModel("universal", "the norm xi of one perturbation for all inputs", curve=False, per_sample=False,
                budget_option="xi"),
    ThreatModel("spatial", "the size of a spatial transformation (AttackResult.size)", curve=True, lp=False),
    ThreatModel("patch", "the area of a patch, a fraction of the input (AttackResult.size)", curve=True, lp=False),
)}


def threat_model(name: str) -> ThreatModel:
    """The threat model registered as ``name``."""
    if isinstance(name, ThreatModel):
        return name
    if name not in THREAT_MODELS:
        raise unknown_name("threat model", name, THREAT_MODELS)
    return THREAT_MODELS[name]
