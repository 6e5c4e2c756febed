"""The framework of the decision-based (label-only) attacks — QFool and HopSkipJump build on it.

A decision-based attack sees only a :class:`~georobust.engine.oracle.LabelOracle`. This module holds what such
attacks share: the frame of a run (validation, the oracle, the first adversarial point by noise and
bisection, the norm-versus-queries history, the bounded ``eps`` mode, returned as the attack's
:class:`~georobust.engine.protocol.Run`: :func:`run_decision_attack`), the sign-based estimate of the boundary
normal from random probes (:func:`estimate_normal`, Liu, Moosavi-Dezfooli & Frossard, ICCV 2019; Chen, Jordan
& Wainwright, IEEE S&P 2020), and the search for the boundary along a direction (:func:`line_search`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..checks import Prepared, check_norm, check_positive
from ..core.dct import low_frequency_noise
from ..core.ops import bcast
from ..errors import InputError
from .oracle import DecisionProblem, decision_setup
from .protocol import Run

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS = (100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)


def checkpoints_for(max_queries: int, checkpoints=None) -> list[int]:
    """Sorted query counts at which the norm history is recorded (always including ``max_queries``)."""
    cps = DEFAULT_CHECKPOINTS if checkpoints is None else checkpoints
    out = sorted({int(c) for c in cps if 0 < int(c) <= max_queries} | {int(max_queries)})
    return out


def record(history: torch.Tensor, cps: torch.Tensor, idx: torch.Tensor, queries: torch.Tensor,
           best: torch.Tensor) -> None:
    """Write the current best norm of samples ``idx`` into every checkpoint not yet passed."""
    upd = queries[:, None] <= cps[None, :]
    history[idx] = torch.where(upd, best[:, None].to(history.dtype), history[idx])


def draw_probes(n: int, shape: tuple[int, ...], subspace: int | None, generator, device, dtype) -> torch.Tensor:
    """Unit-norm random directions ``(n, *shape)``: isotropic Gaussian, or of the low-frequency DCT subspace."""
    if subspace is None:
        u = torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)
    else:
        u = low_frequency_noise(n, shape, subspace, generator=generator, device=device, dtype=dtype)
    return u / bcast(u.flatten(1).norm(dim=1).clamp_min(1e-12), u)


def estimate_normal(prob: DecisionProblem, xb: torch.Tensor, idx: torch.Tensor, n_probe: torch.Tensor,
                    radius: torch.Tensor, *, subspace: int | None, generator, chunk: int = 8192,
                    baseline: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sign-based normal estimate at the boundary points ``xb`` (samples ``idx``).

    Sample ``j`` spends ``n_probe[j]`` queries on ``clip(xb_j + radius_j·u)`` with random unit ``u``;
    returns ``(Σ_i s_i u_i, fraction adversarial, number of probes)`` where ``u_i`` is the probe's actual
    (clipped) displacement divided by ``radius`` and ``s_i = z_i − z̄`` (``z_i = ±1``; no baseline when all
    answers agree, as in HopSkipJump). Probes are drawn and queried in chunks of about ``chunk`` inputs.
    """
    m = idx.shape[0]
    shape = tuple(xb.shape[1:])
    sum_zu = torch.zeros_like(xb)
    sum_u = torch.zeros_like(xb)
    sum_z = torch.zeros(m, device=xb.device, dtype=xb.dtype)
    per = max(1, chunk // max(m, 1))
    n_max = int(n_probe.max()) if m else 0
    for start in range(0, n_max, per):
        k = min(per, n_max - start)
        valid = (start + torch.arange(k, device=xb.device))[None, :] < n_probe[:, None]  # (m, k)
        rows, cols = valid.nonzero(as_tuple=True)
        if rows.numel() == 0:
            break
        u = draw_probes(rows.numel(), shape, subspace, generator, xb.device, xb.dtype)
        r = bcast(radius[rows], u)
        pts = prob.clip(xb[rows] + r * u)
        u_eff = (pts - xb[rows]) / r
        z = prob.adversarial(pts, idx[rows]).to(xb.dtype) * 2 - 1
        sum_zu.index_add_(0, rows, bcast(z, u_eff) * u_eff)
        sum_u.index_add_(0, rows, u_eff)
        sum_z.index_add_(0, rows, z)
    cnt = n_probe.to(xb.dtype).clamp_min(1)
    zbar = sum_z / cnt
    if baseline:
        mixed = zbar.abs() < 1
        g = sum_zu - bcast(torch.where(mixed, zbar, torch.zeros_like(zbar)), sum_u) * sum_u
    else:
        g = sum_zu
    return g, (zbar + 1) / 2, n_probe


def line_search(prob: DecisionProblem, v: torch.Tensor, idx: torch.Tensor, r_start: torch.Tensor, *,
                tol: float, expand: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest ``r`` with ``clip(x + r·v)`` adversarial along unit directions ``v`` (samples ``idx``).

    Queries ``r_start``; where not adversarial, grows ``r`` by 2× up to ``expand`` times; then bisection on
    ``[0, r]`` to relative precision ``tol``. Returns ``(point, found, label)``; ``point`` is adversarial
    (with that label) where found.
    """
    x0 = prob.x[idx]
    lo_b, hi_b = prob.bounds

    def point(t, sel):
        return (x0[sel] + bcast(t, v) * v[sel]).clamp(lo_b, hi_b)

    r = r_start.clone()
    lo = torch.zeros_like(r)
    found = torch.zeros(idx.shape[0], dtype=torch.bool, device=v.device)
    lab = torch.full_like(idx, -1)
    for k in range(expand + 1):
        sel = (~found & (prob.remaining(idx) > 0)).nonzero().squeeze(1)
        if sel.numel() == 0:
            break
        got = prob.oracle(point(r[sel], sel), idx[sel])
        adv = prob.criterion(got, idx[sel])
        found[sel[adv]] = True
        lab[sel[adv]] = got[adv]
        no = sel[~adv]
        lo[no] = r[no]
        if k < expand:
            r[no] = r[no] * 2
    sel = found.nonzero().squeeze(1)
    out = x0.clone()
    if sel.numel():
        _, hi, lab_s = prob.bisect(lambda t, s: point(t, sel[s]), lo[sel], r[sel], idx[sel], tol=tol,
                                   relative=True, labels=lab[sel])
        out[sel] = point(hi, sel)
        lab[sel] = lab_s
    return out, found, lab


@dataclass(frozen=True)
class Start:
    """How a decision-based attack finds its first adversarial point (control data, not a result parameter):
    Gaussian noise of growing relative ``scales`` then ``tries`` uniform random images, drawn from
    ``generator``, then a bisection towards ``x`` to tolerance ``tol``."""

    generator: torch.Generator
    scales: tuple[float, ...] = ()
    tries: int = 100
    tol: float = 1e-3


def run_decision_attack(name: str, model, x, y, target, *, max_queries: int, eps, norm, bounds, batch_size,
                        checkpoints, x_init, start: Start, body) -> Run:
    """Shared frame of QFool and HopSkipJump: validation, the oracle, the first adversarial point, the
    norm history and the eps mode; returns the attack's :class:`~georobust.engine.protocol.Run` (its body is
    wrapped by :func:`~georobust.engine.protocol.attack`, which builds the verified result).
    ``body(prob, idx, xb, labels, state)`` runs the attack proper from the boundary points ``xb``
    (adversarial side, with those labels) of the samples ``idx``; it updates ``state["best_x"]``,
    ``state["best"]`` and the history.

    The run's model is the *verifier* (the user's model or label function, not the counting oracle), so
    success is verified outside the attack; its threat model is ``decision`` (the norm found within the
    query budget), or ``bounded-lp`` when ``eps`` is given. ``queries`` and the norm-versus-queries
    ``history`` are the run's; ``params`` gets the resolved ``norm`` and ``checkpoints``.
    """
    norm = check_norm(norm, ("2",))
    check_positive(max_queries, "max_queries", integer=True)
    if eps is not None:
        check_positive(eps, "eps", allow_zero=True)
    prob, verifier, pred = decision_setup(model, x, y, target, bounds=bounds, batch_size=batch_size,
                                          budget=max_queries)
    x = prob.x
    n = x.shape[0]
    dev = x.device
    cps_list = checkpoints_for(max_queries, checkpoints)
    cps = torch.tensor(cps_list, device=dev)
    history = torch.full((n, len(cps_list)), math.inf, device=dev, dtype=torch.float64)
    goal_met = prob.criterion(pred, torch.arange(n, device=dev))
    if target is None:
        goal_met |= pred != prob.y  # already misclassified: zero perturbation (make_result's convention)
    history[goal_met] = 0.0
    active = (~goal_met).nonzero().squeeze(1)
    state = {"best_x": x.clone(), "best": torch.full((n,), math.inf, device=dev, dtype=x.dtype),
             "history": history, "cps": cps, "eps": eps}
    state["best"][goal_met] = 0.0

    if active.numel():
        if x_init is not None:
            if not isinstance(x_init, torch.Tensor) or x_init.shape != x.shape:
                raise InputError(f"x_init must be a tensor of the shape of x {tuple(x.shape)}")
            x_start = prob.clip(x_init.to(dev, x.dtype))[active]
            lab0 = prob.oracle(x_start, active)
            found = prob.criterion(lab0, active)
            if not bool(found.all()):
                log.warning("%s: %d starting point(s) of x_init do not meet the goal; those samples fail",
                            name, int((~found).sum()))
        else:
            x_start, found, lab0 = prob.noise_init(active, generator=start.generator, scales=start.scales,
                                                   tries=start.tries)
        active, x_start, lab0 = active[found], x_start[found], lab0[found]
        if active.numel():
            xb, lab0 = prob.bisect_segment(x_start, active, tol=start.tol, labels=lab0)
            state["best_x"][active] = xb
            state["best"][active] = (xb - x[active]).flatten(1).norm(dim=1)
            record(history, cps, active, prob.oracle.queries[active], state["best"][active])
            body(prob, active, xb, lab0, state)

    best_x = state["best_x"]
    if eps is not None:  # bounded mode: a sample counts only if its perturbation fits the budget
        over = state["best"] > eps + 1e-7
        best_x = torch.where(bcast(over, best_x), x, best_x)
    prepared = Prepared(verifier, x, prob.y, prob.target, -1, pred)
    return Run(prepared, best_x, queries=prob.oracle.queries.clone(), history=history,
               params={"norm": norm, "checkpoints": cps_list}, threat="decision" if eps is None else "bounded-lp")
