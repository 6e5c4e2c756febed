"""QFool: a geometry-inspired decision-based attack (Liu, Moosavi-Dezfooli & Frossard, "A geometry-inspired
decision-based attack", ICCV 2019), and the pooled variant georobust shipped before.

The attack only sees labels, through a counting :class:`~georobust.engine.oracle.LabelOracle`. It rests
on the observation that the decision boundary of deep networks is nearly *flat* around data points, so
the normal of the boundary can be estimated from label queries at a boundary point and used to jump to a
closer boundary point.

``variant="paper"`` (default) — the paper's Algorithm 1 (untargeted; targeted from a starting image):

1. **Initial boundary point** ``P_0`` — Gaussian noise of growing scale is added to ``x`` until the label
   changes (targeted: the given image of the target class), then bisection on the segment toward ``x``.
2. At the boundary point ``P_i``, batches of ``n_0 = probes`` random perturbations ``η_j`` of norm ``ω``
   (full space, or the low-frequency DCT subspace) are queried; ``z_j = +1`` for an adversarial answer,
   ``−1`` otherwise. The estimate of the normal is ``ξ_i = Σ_j z_j η_j / ‖Σ_j z_j η_j‖`` over **all** probes
   made at ``P_i`` so far (the point stays fixed while probes accumulate; no baseline is subtracted).
3. After each batch, ``x_adv^(i) = x + r·ξ_i`` with the smallest adversarial ``r`` (line search from the
   current norm, then bisection to relative precision ``tol``).
4. **Improvement-rate test** (``epsilon``, 0.7 in the paper): with ``n_k`` the probes spent at ``P_i`` after
   ``k`` batches and ``D_k = ‖x_adv^(i) − P_i‖`` the distance the estimate has moved the adversarial point,
   probing at ``P_i`` continues (always after the first batch) while ``D_k / (n_k + n_0) ≤ ε · D_{k−1} / n_k``
   — the rate the next batch would give if the point moved no further, against the last rate. A
   significant jump of ``x_adv^(i)`` ends the accumulation: the algorithm **resets**, ``P_{i+1} = x_adv^(i)``,
   the accumulated probes and ``ω`` start afresh there. The inequality is written as in a public
   re-implementation of Algorithm 1 (github.com/ShahryarBQ/qFool, read, not copied): the paper's text was
   not at hand when this was written, so the direction of the test is that transcription's. (If
   ``x_adv^(i)`` is not closer to ``x`` than ``P_i``, the point — and so the accumulation — is kept:
   moving to a worse point would undo progress; this guard is ours.)
5. **ω** (probe radius, Eq. 4 as read here): with ``ρ = 1/2 − p̂`` (``p̂`` the fraction of adversarial
   probes in the last batch), ``ω ← ω·(1 − ρ)``: probes that all land on the adversarial side (``P_i`` lies
   further inside than ``ω`` reaches) grow ``ω`` by 1.5×, a balanced batch keeps it (capped at
   ``‖P_i − x‖``, our guard). ``ω`` starts at ``omega·‖P_i − x‖`` at every boundary point.
6. Repeat until the per-sample query budget is spent; the result is the closest adversarial point found.

``variant="pooled"`` — the QFool-like variant of earlier georobust versions: probes are made at the moving
best point, the (baseline-subtracted, as in HopSkipJump, Chen et al. 2020) estimates of all rounds are
pooled until the adversarial label changes, and ``ω`` is adapted by thresholds on the fraction of
adversarial probes. ``benchmarks/results/qfool.txt`` compares both.

Every query is counted: the clean label, the initial noise, all bisections, probes and line searches.

**Subspace variant** (Sec. 4): the probes are drawn from the ``subspace × subspace`` lowest DCT
frequencies of each channel (images; the first ``subspace`` DCT coefficients for vectors), which
concentrates the queries where the normals of natural-image classifiers live.

The result fills ``queries`` (per sample, exact) and ``history``: the best L2 norm reached within each
of ``params["checkpoints"]`` queries (``inf`` before the first adversarial point).
"""

from __future__ import annotations

import logging
import math

import torch

from ..checks import check_positive
from ..core.ops import bcast
from ..engine.decision import Start, estimate_normal, line_search, record, run_decision_attack
from ..engine.oracle import DecisionProblem
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)

VARIANTS = ("paper", "pooled")


def _paper_body(*, probes, omega, epsilon, tol, subspace, gen, reserve):
    """Algorithm 1 of Liu et al. (2019), batched over samples (each sample keeps its own state)."""

    def body(prob: DecisionProblem, idx, xb, lab, state):
        best, best_x = state["best"], state["best_x"]
        x0 = prob.x
        acc = torch.zeros_like(xb)                      # Σ z_j η_j over the probes made at P_i
        n_at = torch.zeros_like(idx)                    # probes made at P_i
        d_prev = torch.full((idx.numel(),), math.nan, device=xb.device, dtype=xb.dtype)  # D_{k−1}
        base = (xb - x0[idx]).flatten(1).norm(dim=1)    # ‖P_i − x‖
        rad = omega * base                              # ω
        while idx.numel():
            rem = prob.remaining(idx)
            go = rem >= reserve + 2
            if state["eps"] is not None:
                go &= best[idx] > state["eps"]
            idx, xb, acc, n_at, d_prev, base, rad, rem = (t[go] for t in (idx, xb, acc, n_at, d_prev, base,
                                                                               rad, rem))
            if idx.numel() == 0:
                break
            n_probe = torch.clamp(rem - reserve, max=probes)
            g, frac, _ = estimate_normal(prob, xb, idx, n_probe, rad, subspace=subspace, generator=gen,
                                         baseline=False)
            acc += g
            n_at += n_probe
            rad = rad * (0.5 + frac)                    # Eq. 4 as read here: ω ← ω·(1 − ρ), ρ = 1/2 − p̂
            rad = torch.minimum(rad, base)              # guard: probes stay within the current perturbation norm
            v = acc / bcast(acc.flatten(1).norm(dim=1).clamp_min(1e-12), acc)
            cand, found, _ = line_search(prob, v, idx, base.clone(), tol=tol)
            nrm = (cand - x0[idx]).flatten(1).norm(dim=1)
            better = found & (nrm < best[idx])
            best_x[idx[better]] = cand[better]
            best[idx[better]] = nrm[better]
            record(state["history"], state["cps"], idx, prob.oracle.queries[idx], best[idx])
            # improvement-rate test: keep probing at P_i while D_k / (n_k + n_0) ≤ ε · D_{k−1} / n_k
            dist = torch.where(found, (cand - xb).flatten(1).norm(dim=1), torch.zeros_like(nrm))
            n_f = n_at.to(dist.dtype)
            keep = torch.isnan(d_prev) | (dist / (n_f + probes) <= epsilon * d_prev / n_f)
            closer = found & (nrm < base)
            reset = ~keep & closer                      # P_{i+1} = x_adv^(i): start afresh there
            stay = ~keep & ~closer                      # x_adv^(i) is no closer: keep P_i and its probes
            xb = torch.where(bcast(reset, xb), cand, xb)
            base = torch.where(reset, nrm, base)
            acc = torch.where(bcast(reset, acc), torch.zeros_like(acc), acc)
            n_at = torch.where(reset, torch.zeros_like(n_at), n_at)
            rad = torch.where(reset, omega * nrm, rad)
            d_prev = torch.where(reset, torch.full_like(dist, math.nan), torch.where(stay, d_prev, dist))

    return body


def _pooled_body(*, probes, omega, tol, subspace, gen, reserve):
    """The pooled variant (module doc): probes at the moving best point, estimates pooled across rounds."""

    def body(prob: DecisionProblem, idx, xb, lab, state):
        best, best_x = state["best"], state["best_x"]
        x0 = prob.x
        vsum = torch.zeros_like(xb)
        rad = omega * best[idx].clone()
        while idx.numel():
            rem = prob.remaining(idx)
            go = rem >= reserve + 2
            if state["eps"] is not None:
                go &= best[idx] > state["eps"]
            idx, xb, lab, vsum, rad, rem = idx[go], xb[go], lab[go], vsum[go], rad[go], rem[go]
            if idx.numel() == 0:
                break
            n_probe = torch.clamp(rem - reserve, max=probes)
            g, frac, _ = estimate_normal(prob, xb, idx, n_probe, rad, subspace=subspace, generator=gen)
            vsum += g
            # ω from the fraction of adversarial probes: keep the probes straddling the boundary, but local
            skew = (frac - 0.5).abs()
            rad = torch.where(skew > 0.3, rad * 2.0, torch.where(skew < 0.15, rad * 0.8, rad))
            rad = torch.minimum(rad, best[idx])
            v = vsum / bcast(vsum.flatten(1).norm(dim=1).clamp_min(1e-12), vsum)
            cand, found, lab_c = line_search(prob, v, idx, best[idx].clone(), tol=tol)
            nrm = (cand - x0[idx]).flatten(1).norm(dim=1)
            better = found & (nrm < best[idx])
            up = idx[better]
            best_x[up] = cand[better]
            best[up] = nrm[better]
            xb = torch.where(bcast(better, xb), cand, xb)
            # another class's boundary: the pooled normal belongs to the old facet, start pooling afresh
            moved = better & (lab_c != lab) & (lab_c >= 0) & (lab >= 0)
            vsum = torch.where(bcast(moved, vsum), torch.zeros_like(vsum), vsum)
            lab = torch.where(better, lab_c, lab)
            rad = torch.where(better, torch.minimum(rad, omega * 4 * nrm), rad)
            record(state["history"], state["cps"], idx, prob.oracle.queries[idx], best[idx])

    return body


@attack("qfool", threat="decision", norms=("2",), access="labels")
def qfool(model, x, y=None, *, max_queries: int = 10_000, subspace: int | None = None, target=None,
          x_init: torch.Tensor | None = None, variant: str = "paper", probes: int = 100, omega: float = 0.02,
          epsilon: float = 0.7, tol: float = 1e-3, eps: float | None = None, norm=2, checkpoints=None,
          seed: int = 0, bounds=None, batch_size: int = 4096) -> Run:
    """QFool decision-based attack (Liu, Moosavi-Dezfooli & Frossard, ICCV 2019), L2, label queries only.

    Args:
        model: an ``nn.Module``/``Classifier`` (only reached through a counting label oracle) or a
            callable ``f(x) -> labels`` (a true black box; give ``bounds`` if not ``(0, 1)``).
        x: inputs; y: labels (default: the oracle's answers on ``x``).
        max_queries: per-sample query budget (every query counted, the clean label included).
        subspace: side of the low-frequency DCT block the probes are drawn from (``None``: full space).
        target: target labels for the targeted variant; needs ``x_init``.
        x_init: starting points (e.g. images of the target class); default: Gaussian noise of growing scale.
        variant: ``"paper"`` (Algorithm 1: probes accumulate at a fixed boundary point until the
            improvement-rate test resets them) or ``"pooled"`` (the earlier georobust variant; module doc).
        probes: probes per batch (``n_0``); omega: initial probe radius relative to the current perturbation
            norm; epsilon: the improvement-rate threshold ``ε`` (paper: 0.7; ``variant="paper"`` only);
            tol: relative precision of each bisection.
        eps: bounded mode: samples whose perturbation exceeds ``eps`` are reported as failed (and a
            sample stops as soon as it is within ``eps``).
        checkpoints: query counts at which ``result.history`` records the best norm.
        seed: seed of the random probes.
    """
    check_positive(probes, "probes", integer=True)
    check_positive(omega, "omega")
    check_positive(tol, "tol")
    check_positive(epsilon, "epsilon")
    if variant not in VARIANTS:
        raise OptionError(f"unknown QFool variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if subspace is not None:
        check_positive(subspace, "subspace", integer=True)
    if target is not None and x_init is None:
        raise OptionError("targeted QFool starts from an image of the target class: pass x_init= "
                          "(one starting image per sample, classified as its target)")
    dev = x.device if isinstance(x, torch.Tensor) else "cpu"
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    reserve = int(math.ceil(math.log2(1 / tol))) + 3  # a line search's worth of queries
    if variant == "paper":
        body = _paper_body(probes=probes, omega=omega, epsilon=epsilon, tol=tol, subspace=subspace, gen=gen,
                           reserve=reserve)
    else:
        body = _pooled_body(probes=probes, omega=omega, tol=tol, subspace=subspace, gen=gen, reserve=reserve)

    start = Start(gen, scales=tuple(0.01 * 1.6 ** k for k in range(12)), tries=50, tol=tol)
    run = run_decision_attack("qfool", model, x, y, target, max_queries=max_queries, eps=eps, norm=norm,
                              bounds=bounds, batch_size=batch_size, checkpoints=checkpoints, x_init=x_init,
                              start=start, body=body)
    if variant != "paper":  # the improvement-rate threshold is the paper variant's only
        run.drop = ("epsilon",)
    return run
