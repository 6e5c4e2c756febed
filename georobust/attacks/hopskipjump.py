"""HopSkipJump, L2 (Chen, Jordan & Wainwright, "HopSkipJumpAttack: a query-efficient decision-based
attack", IEEE S&P 2020) — the decision-based baseline, in the same API, oracle and query counting as QFool.

From a boundary point ``x_t`` (start: a uniform random image of another class, bisected toward ``x``):

1. **Gradient-direction estimate** at ``x_t`` from ``B_t = min(B_0·√(t+1), B_max)`` random unit probes of
   radius ``δ_t`` (``δ_0 = 0.1·(u − l)``, then ``δ_t = √d·θ·‖x_t − x‖``), signs ``±1`` of the answers
   with their mean subtracted as a baseline (Sec. 3.2, Theorem 2).
2. **Geometric step-size search**: ``ξ = ‖x_t − x‖/√(t+1)``, halved until ``x_t + ξ·v`` is adversarial.
3. **Boundary search**: bisection on the segment from ``x`` to that point, to precision ``θ = γ/d^{3/2}``
   (the authors' code, ``γ = 1``).

All queries go through the counting :class:`~georobust.engine.oracle.LabelOracle`; the attack stops
when the per-sample budget is spent. ``result.history`` records the best norm after each checkpoint.
"""

from __future__ import annotations

import math

import torch

from ..checks import check_positive
from ..core.ops import bcast
from ..engine.decision import Start, estimate_normal, record, run_decision_attack
from ..engine.oracle import DecisionProblem
from ..engine.protocol import Run, attack


@attack("hopskipjump", threat="decision", norms=("2",), access="labels")
def hopskipjump(model, x, y=None, *, max_queries: int = 10_000, target=None, x_init: torch.Tensor | None = None,
                init_evals: int = 100, max_evals: int = 10_000, gamma: float = 1.0, init_tries: int = 100,
                eps: float | None = None, norm=2, checkpoints=None, seed: int = 0, bounds=None,
                batch_size: int = 4096) -> Run:
    """HopSkipJump L2 decision-based attack (Chen, Jordan & Wainwright, IEEE S&P 2020), label queries only.

    Args:
        model: an ``nn.Module``/``Classifier`` (reached only through a counting label oracle) or a
            callable ``f(x) -> labels`` (give ``bounds`` if not ``(0, 1)``).
        x: inputs; y: labels (default: the oracle's answers on ``x``).
        max_queries: per-sample query budget (every query counted, the clean label included).
        target, x_init: targeted variant and/or starting points (default: uniform random images, up to
            ``init_tries`` draws).
        init_evals, max_evals: probes of the first gradient estimate and the cap (``B_0``, ``B_max``).
        gamma: sets the bisection precision ``θ = γ/d^{3/2}`` and the probe radius ``δ_t = √d·θ·dist``.
        eps: bounded mode: samples whose perturbation exceeds ``eps`` are reported as failed.
        checkpoints: query counts at which ``result.history`` records the best norm.
        seed: seed of the random probes.
    """
    check_positive(init_evals, "init_evals", integer=True)
    check_positive(max_evals, "max_evals", integer=True)
    check_positive(gamma, "gamma")
    check_positive(init_tries, "init_tries", integer=True)
    dev = x.device if isinstance(x, torch.Tensor) else "cpu"
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    d = x[0].numel() if isinstance(x, torch.Tensor) else 1
    theta = gamma / (d * math.sqrt(d))
    steps = int(math.ceil(math.log2(1 / theta)))
    reserve = steps + 4

    def body(prob: DecisionProblem, idx, xb, lab, state):
        best, best_x = state["best"], state["best_x"]
        x0 = prob.x
        lo_b, hi_b = prob.bounds
        t = 0
        while idx.numel():
            rem = prob.remaining(idx)
            go = rem >= reserve + 2
            if state["eps"] is not None:
                go &= best[idx] > state["eps"]
            idx, xb, rem = idx[go], xb[go], rem[go]
            if idx.numel() == 0:
                break
            dist = (xb - x0[idx]).flatten(1).norm(dim=1)
            delta = torch.full_like(dist, 0.1 * (hi_b - lo_b)) if t == 0 else math.sqrt(d) * theta * dist
            n_eval = torch.clamp(rem - reserve, max=min(int(init_evals * math.sqrt(t + 1)), max_evals))
            g, _, _ = estimate_normal(prob, xb, idx, n_eval, delta, subspace=None, generator=gen)
            v = g / bcast(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
            # geometric step-size search
            xi = dist / math.sqrt(t + 1)
            found = torch.zeros(idx.shape[0], dtype=torch.bool, device=xb.device)
            cand = xb.clone()
            for _ in range(30):
                sel = (~found & (prob.remaining(idx) > steps)).nonzero().squeeze(1)
                if sel.numel() == 0:
                    break
                pt = (xb[sel] + bcast(xi[sel], v) * v[sel]).clamp(lo_b, hi_b)
                adv = prob.adversarial(pt, idx[sel])
                found[sel[adv]] = True
                cand[sel[adv]] = pt[adv]
                xi[sel[~adv]] = xi[sel[~adv]] / 2
            fi = found.nonzero().squeeze(1)
            if fi.numel():
                xb[fi], _ = prob.bisect_segment(cand[fi], idx[fi], tol=theta, relative=False)
            nrm = (xb - x0[idx]).flatten(1).norm(dim=1)
            better = nrm < best[idx]
            best_x[idx[better]] = xb[better]
            best[idx[better]] = nrm[better]
            record(state["history"], state["cps"], idx, prob.oracle.queries[idx], best[idx])
            t += 1

    start = Start(gen, scales=(), tries=init_tries, tol=theta)
    return run_decision_attack("hopskipjump", model, x, y, target, max_queries=max_queries, eps=eps, norm=norm,
                               bounds=bounds, batch_size=batch_size, checkpoints=checkpoints, x_init=x_init,
                               start=start, body=body)
