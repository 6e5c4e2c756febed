"""Linear or blind spots? How many DeepFool steps a network needs.

Goodfellow, Shlens & Szegedy ("Explaining and harnessing adversarial examples", ICLR 2015) argued that deep
networks are fooled because they are *too linear*, against the "blind spots" view of Szegedy et al. (ICLR 2014):
pockets of adversarial inputs that a locally linear model would not predict. DeepFool (Moosavi-Dezfooli, Fawzi &
Frossard, CVPR 2016) measures it directly: it replaces the classifier by its linearisation at ``x`` and steps to
the closest linearised boundary (with the overshoot ``η``). On an affine classifier the first step always fools;
on a network, the fraction of inputs its *first* linearised step already fools, and the distribution of the
number of steps, say how far from linear the classifier is between ``x`` and its nearest boundary.

:func:`deepfool_steps` (registered analysis ``linearity``: ``georobust analyse linearity``) runs DeepFool on the
inputs the model classifies correctly and returns the steps each needed (``iterations``), whether it fooled
(``converged``), and the summary: ``first_step`` — the fraction of attacked inputs fooled after one step —, the
mean and median number of steps among the fooled, and the histogram. By default the iteration is the paper's,
unconstrained (``clip=False``): clamping the iterates into the pixel box shortens steps on saturated pixels and
adds steps that say nothing about linearity (on the shipped models it multiplies the mean number of steps by
1.9–5.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import registry
from ..attacks.deepfool import check_deepfool_options, deepfool_batch
from ..checks import prepare
from ..results import Saveable
from ._report import Report, fmt

__all__ = ["deepfool_steps", "DeepFoolSteps"]


@dataclass
class DeepFoolSteps(Saveable, Report):
    """Per input: ``iterations`` (DeepFool steps taken, 0 for inputs not attacked), ``converged`` (fooled),
    ``attacked`` (correctly classified, hence attacked); ``max_iter``, ``overshoot``, ``norm``, ``clip``."""

    iterations: torch.Tensor
    converged: torch.Tensor
    attacked: torch.Tensor
    max_iter: int
    overshoot: float
    norm: str
    clip: bool

    def histogram(self) -> dict[int, int]:
        """``{steps: count}`` over the attacked inputs that were fooled (every step count from 1 to the largest)."""
        it = self.iterations[self.attacked & self.converged]
        if it.numel() == 0:
            return {}
        counts = torch.bincount(it, minlength=int(it.max()) + 1)
        return {k: int(counts[k]) for k in range(1, counts.numel())}

    def summary(self) -> dict:
        att = self.attacked
        fooled = att & self.converged
        n_att = int(att.sum())
        it = self.iterations[fooled].double()
        return {"n": int(att.numel()), "attacked": n_att, "fooled": int(fooled.sum()),
                "first_step": float((fooled & (self.iterations == 1)).sum()) / n_att if n_att else float("nan"),
                "mean_steps": float(it.mean()) if it.numel() else float("nan"),
                "median_steps": float(it.median()) if it.numel() else float("nan"),
                "max_steps": int(it.max()) if it.numel() else 0,
                "overshoot": self.overshoot, "max_iter": self.max_iter}

    def table(self) -> list[list[str]]:
        rows = [["metric", "value"]] + [[k, fmt(v)] for k, v in self.summary().items()]
        rows += [[f"fooled in {k} step{'s' if k > 1 else ''}", str(v)] for k, v in self.histogram().items()]
        return rows


@registry.analyses.register(
    "linearity", summary="linear or blind spots: the fraction of inputs DeepFool's first linearised step fools, "
                         "and the distribution of its steps",
    plot="deepfool_steps", plot_file="deepfool_steps.png")
def deepfool_steps(model, x, y=None, *, norm=2, overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10,
                   clip: bool = False, batch_size: int = 256) -> DeepFoolSteps:
    """DeepFool (CVPR 2016) on the correctly classified inputs (all, when ``y`` is None: the predictions), keeping
    the number of linearised steps each needed. ``first_step`` in the summary is the fraction fooled by the first
    step (the "too linear" measure; an affine model scores 1). Options are DeepFool's. ``clip=False`` (default)
    is the paper's unconstrained iteration, which measures the linearity of the function; ``clip=True`` clamps
    every iterate into the model's bounds, as image attacks must — on images with saturated pixels the clamped
    step falls short of the linearised boundary, so it needs more steps for a reason that is not curvature
    (measured in repro/linearity.py)."""
    norm = check_deepfool_options(norm, overshoot, max_iter, candidates, batch_size, clip)
    p = prepare(model, x, y)
    attacked = p.pred == p.y
    iters = torch.zeros(p.n, dtype=torch.long, device=p.x.device)
    conv = torch.zeros(p.n, dtype=torch.bool, device=p.x.device)
    for i in range(0, p.n, batch_size):
        sl = slice(i, i + batch_size)
        out = deepfool_batch(p.clf, p.x[sl], norm=norm, overshoot=float(overshoot), max_iter=max_iter,
                             candidates=candidates, clip=clip, active=attacked[sl])
        iters[sl] = out.iterations
        conv[sl] = out.converged & attacked[sl]
    return DeepFoolSteps(iterations=iters.cpu(), converged=conv.cpu(), attacked=attacked.cpu(), max_iter=int(max_iter),
                         overshoot=float(overshoot), norm=norm, clip=clip)
