"""QFool: a geometry-inspired decision-based attack (Liu, Moosavi-Dezfooli & Frossard, "A geometry-inspired
decision-based attack", ICCV 2019), and the pooled variant georobust shipped before.

The attack only sees labels, through a counting :class:`~georobust.attacks._oracle.LabelOracle`. It rests
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
import time

import torch

from .. import registry
from ..checks import check_norm, check_positive
from ..errors import InputError, OptionError
from ..results import AttackResult, make_result
from ._common import bcast
from ._dct import low_frequency_noise
from ._oracle import DecisionProblem, decision_setup

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


def run_decision_attack(name: str, model, x, y, target, *, max_queries: int, eps, norm, bounds, batch_size,
                        checkpoints, x_init, params: dict, body) -> AttackResult:
    """Shared frame of QFool and HopSkipJump: validation, the oracle, the first adversarial point, the
    norm history, the eps mode and the verified result. ``body(prob, idx, xb, labels, state)`` runs the
    attack proper from the boundary points ``xb`` (adversarial side, with those labels) of the samples
    ``idx``; it updates ``state["best_x"]``, ``state["best"]`` and the history."""
    check_norm(norm, ("2",))
    check_positive(max_queries, "max_queries", integer=True)
    if eps is not None:
        check_positive(eps, "eps", allow_zero=True)
    prob, verifier, pred = decision_setup(model, x, y, target, bounds=bounds, batch_size=batch_size,
                                          budget=max_queries)
    x = prob.x
    n = x.shape[0]
    dev = x.device
    t0 = time.perf_counter()
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
            start = prob.clip(x_init.to(dev, x.dtype))[active]
            lab0 = prob.oracle(start, active)
            found = prob.criterion(lab0, active)
            if not bool(found.all()):
                log.warning("%s: %d starting point(s) of x_init do not meet the goal; those samples fail",
                            name, int((~found).sum()))
        else:
            start, found, lab0 = prob.noise_init(active, generator=params["_gen"], scales=params["_init_scales"],
                                                 tries=params["_init_tries"])
        active, start, lab0 = active[found], start[found], lab0[found]
        if active.numel():
            xb, lab0 = prob.bisect_segment(start, active, tol=params["_init_tol"], labels=lab0)
            state["best_x"][active] = xb
            state["best"][active] = (xb - x[active]).flatten(1).norm(dim=1)
            record(history, cps, active, prob.oracle.queries[active], state["best"][active])
            body(prob, active, xb, lab0, state)

    best_x = state["best_x"]
    if eps is not None:  # bounded mode: a sample counts only if its perturbation fits the budget
        over = state["best"] > eps + 1e-7
        best_x = torch.where(bcast(over, best_x), x, best_x)
    for k in [k for k in params if k.startswith("_")]:
        params.pop(k)
    params.update(max_queries=max_queries, eps=eps, checkpoints=cps_list, targeted=target is not None)
    res = make_result(name, verifier, x, best_x, prob.y, pred, target=prob.target,
                      queries=prob.oracle.queries.clone(), elapsed=time.perf_counter() - t0, params=params,
                      minimal=eps is None)
    res.history = history
    log.info("%s: %s", name, res)
    return res


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


@registry.attacks.register("qfool", kind="black-box", norms=("2",))
def qfool(model, x, y=None, *, max_queries: int = 10_000, subspace: int | None = None, target=None,
          x_init: torch.Tensor | None = None, variant: str = "paper", probes: int = 100, omega: float = 0.02,
          epsilon: float = 0.7, tol: float = 1e-3, eps: float | None = None, norm=2, checkpoints=None,
          seed: int = 0, bounds=None, batch_size: int = 4096) -> AttackResult:
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

    params = {"variant": variant, "subspace": subspace, "probes": probes, "omega": omega, "tol": tol,
              "seed": seed, "_gen": gen, "_init_scales": tuple(0.01 * 1.6 ** k for k in range(12)),
              "_init_tries": 50, "_init_tol": tol}
    if variant == "paper":
        params["epsilon"] = epsilon
    return run_decision_attack("qfool", model, x, y, target, max_queries=max_queries, eps=eps, norm=norm,
                               bounds=bounds, batch_size=batch_size, checkpoints=checkpoints, x_init=x_init,
                               params=params, body=body)
