"""Fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial
examples", ICLR 2015), its L2 "fast gradient" form, and a *minimal* mode.

``x_adv = clip(x + eps · d)`` with ``d = sign(∇ₓJ)`` (L∞) or ``∇ₓJ/‖∇ₓJ‖₂`` (L2), where ``J`` is the
cross-entropy at the label (or minus it at the target).

Minimal mode (``eps=None``) finds, per sample, the smallest ``eps`` along that fixed direction that fools
the model — the way the DeepFool paper (Moosavi-Dezfooli et al., CVPR 2016, Table 1) reports FGSM's
ρ_adv: a geometric grid of ``grid`` values up to ``eps_max`` locates the first fooling step, then
``search_steps`` bisections refine it; the reported ``eps`` is the upper end of the final bracket, so the
returned example is verified adversarial.
"""

from __future__ import annotations

import logging
import math

import torch

from ..checks import check_iterations, check_norm, check_positive, prepare
from ..core.losses import loss_grad
from ..core.ops import bcast, steepest_direction
from ..engine.protocol import Run, attack

log = logging.getLogger(__name__)

#: options of the minimal mode only (not recorded for a bounded run)
_MINIMAL_ONLY = ("eps_max", "grid", "search_steps")


@attack("fgsm", threat="bounded-lp", norms=("inf", "2"), chunking="position")
def fgsm(model, x, y=None, *, eps: float | None = None, norm="inf", target=None, loss: str = "ce",
         eps_max: float | None = None, grid: int = 24, search_steps: int = 12,
         batch_size: int = 512) -> Run:
    """FGSM (L∞) / fast gradient (L2); bounded with ``eps``, minimal per sample with ``eps=None``.

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: inputs inside the model's bounds; y: labels (default: the model's predictions).
        eps: the perturbation budget; ``None`` selects the minimal mode (threat model ``minimal-lp``).
        norm: ``"inf"`` (FGSM) or ``2`` (fast gradient L2).
        target: target labels for the targeted variant (descends the CE of the target).
        loss: ``"ce"`` (paper) or ``"cw"`` (margin).
        eps_max: largest eps the minimal mode tries (default: the whole box, ``(hi−lo)`` for L∞ and
            ``(hi−lo)·√d`` for L2).
        grid, search_steps: the minimal mode's coarse geometric grid and bisection steps.
    """
    norm = check_norm(norm)
    if eps is not None:
        check_positive(eps, "eps", allow_zero=True)
    check_positive(grid, "grid", integer=True)
    check_iterations(search_steps, "search_steps")
    p = prepare(model, x, y, target=target)
    clf, x, y, target, pred = p.clf, p.x, p.y, p.target, p.pred
    lo, hi = clf.bounds
    d_all = torch.empty_like(x)
    for i in range(0, x.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        g, _, _ = loss_grad(clf, x[sl], y[sl], None if target is None else target[sl], loss)
        d_all[sl] = steepest_direction(g, norm)
    if eps is not None:
        return Run(p, (x + eps * d_all).clamp(lo, hi), iterations=torch.ones(p.n, dtype=torch.long, device=x.device),
                   params={"norm": norm}, drop=_MINIMAL_ONLY)

    if eps_max is None:
        eps_max = (hi - lo) * (1.0 if norm == "inf" else math.sqrt(x[0].numel()))
    check_positive(eps_max, "eps_max")
    n = x.shape[0]

    def fools(eps_vec: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        xa = (x[idx] + bcast(eps_vec, x[idx]) * d_all[idx]).clamp(lo, hi)
        with torch.inference_mode():
            lab = torch.cat([clf(xa[j:j + batch_size]).argmax(1) for j in range(0, len(idx), batch_size)])
        return lab == target[idx] if target is not None else lab != y[idx]

    grid_eps = eps_max * torch.logspace(-3, 0, grid, device=x.device)
    lo_e = torch.zeros(n, device=x.device)
    hi_e = torch.full((n,), float("inf"), device=x.device)
    evals = torch.zeros(n, dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)
    if target is None:  # already misclassified: nothing to do
        active = active[pred[active] == y[active]]
    for e in grid_eps:  # coarse search, dropping samples as soon as they are fooled
        if active.numel() == 0:
            break
        ok = fools(torch.full((active.numel(),), float(e), device=x.device), active)
        evals[active] += 1
        hi_e[active[ok]] = e
        lo_e[active[~ok]] = e
        active = active[~ok]
    found = torch.isfinite(hi_e)
    lo_e[found & (lo_e >= hi_e)] = 0.0
    idx = found.nonzero().squeeze(1)
    for _ in range(search_steps):  # bisection inside the bracket
        if idx.numel() == 0:
            break
        mid = 0.5 * (lo_e[idx] + hi_e[idx])
        ok = fools(mid, idx)
        evals[idx] += 1
        hi_e[idx] = torch.where(ok, mid, hi_e[idx])
        lo_e[idx] = torch.where(ok, lo_e[idx], mid)
    eps_used = torch.where(found, hi_e, torch.full_like(hi_e, float(eps_max)))
    x_adv = (x + bcast(eps_used, x) * d_all).clamp(lo, hi)
    return Run(p, x_adv, iterations=evals, params={"norm": norm, "eps_max": eps_max}, threat="minimal-lp")
