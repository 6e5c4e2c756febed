"""SPSA: a gradient-free attack with simultaneous-perturbation gradient estimates (Uesato, O'Donoghue, van den
Oord & Kohli, "Adversarial risk and the dangers of evaluating against weak attacks", ICML 2018).

Uesato et al. use SPSA (Spall, 1992) to show that defences whose gradients are masked — zero, noisy or
saturated — are not robust: the attack only queries scores, so it sees the loss surface the gradients hide.
Per sample and step, with the current point ``x_t`` (in the ε-ball around ``x`` and in the box):

1. query ``x_t``; a misclassified ``x_t`` ends the sample (early stop per sample);
2. draw ``samples/2`` Rademacher directions ``v_j ∈ {±1}^d`` and query the antithetic pairs ``x_t ± δ·v_j``
   (clipped to the box): ``samples`` queries, all samples and all pairs in one batch;
3. estimate the gradient of the C&W margin ``max_{k≠y} z_k − z_y`` (ascended) as
   ``ĝ = mean_j (L(x_t + δv_j) − L(x_t − δv_j)) / (2δ) · v_j``;
4. one Adam step (Kingma & Ba, ICLR 2015; ``lr``, β = (0.9, 0.999)) on the perturbation, ascending ``ĝ``;
5. project onto the ε-ball (L∞ or L2) and clip to the box.

Every query goes through a counting :class:`~georobust.engine.oracle.ScoreOracle`: at most
``steps·(samples + 1)`` per sample (or ``max_queries``: a sample whose budget cannot pay for a whole step stops).
Samples the model already misclassifies are not attacked (0 queries). Success is re-verified by the protocol
on the model itself.
"""

from __future__ import annotations

import logging

import torch

from ..checks import check_iterations, check_norm, check_positive, prepare
from ..core import ops
from ..core.losses import margin_loss
from ..engine.oracle import ScoreOracle
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)

#: Adam's moment decays and denominator guard (Kingma & Ba's defaults, as Uesato et al. use them)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _spsa_chunk(oracle: ScoreOracle, x0: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, *, eps: float,
                norm: str, steps: int, samples: int, delta: float, lr: float, gen: torch.Generator,
                bounds: tuple[float, float]) -> torch.Tensor:
    """Attack the samples ``idx`` (clean inputs ``x0``); returns their final points."""
    lo, hi = bounds
    b1, b2 = ADAM_BETAS
    xc = x0.clone()
    m1 = torch.zeros_like(x0)
    m2 = torch.zeros_like(x0)
    live = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
    half = samples // 2
    for t in range(1, steps + 1):
        live &= oracle.remaining(idx) >= samples + 1            # a whole step: its point and its estimate
        act = live.nonzero().squeeze(1)
        if act.numel() == 0:
            break
        logits = oracle(xc[act], idx[act])
        adv = logits.argmax(1) != y[act]
        live[act[adv]] = False
        act = act[~adv]
        if act.numel() == 0:
            break
        m = act.numel()
        xa = xc[act]
        v = torch.randint(0, 2, (m, half, *x0.shape[1:]), generator=gen, device=x0.device).to(x0.dtype) * 2 - 1
        probes = torch.cat([(xa[:, None] + delta * v), (xa[:, None] - delta * v)], 1).clamp(lo, hi)
        owner = idx[act].repeat_interleave(samples)
        out = oracle(probes.flatten(0, 1), owner)
        loss = margin_loss(out, y[act].repeat_interleave(samples)).view(m, samples)
        diff = (loss[:, :half] - loss[:, half:]) / (2 * delta)    # (m, half)
        g = (ops.bcast(diff.flatten(), v.flatten(0, 1)) * v.flatten(0, 1)).view_as(v).mean(1)
        m1[act] = b1 * m1[act] + (1 - b1) * g
        m2[act] = b2 * m2[act] + (1 - b2) * g * g
        step = lr * (m1[act] / (1 - b1 ** t)) / ((m2[act] / (1 - b2 ** t)).sqrt() + ADAM_EPS)
        pert = ops.project(xa + step - x0[act], eps, norm)
        xc[act] = (x0[act] + pert).clamp(lo, hi)
    return xc


@attack("spsa", threat="bounded-lp", norms=("inf", "2"), chunking="remaining", access="scores")
def spsa(model, x, y=None, *, eps: float, norm="inf", steps: int = 100, samples: int = 128, delta: float = 0.01,
         lr: float = 0.01, max_queries: int | None = None, seed: int | None = 0, batch_size: int = 64) -> Run:
    """SPSA attack (Uesato, O'Donoghue, van den Oord & Kohli, ICML 2018), untargeted, L∞ (or L2), scores only.

    Args:
        model: the classifier; the attack reaches it only through a counting :class:`ScoreOracle`.
        x: inputs in the model's bounds; y: labels (default: the clean prediction).
        eps: the radius of the ball (``0``: nothing is queried, the inputs are returned).
        norm: ``"inf"`` (the paper's) or ``"2"``.
        steps: Adam steps; samples: queries per gradient estimate (even: ``samples/2`` antithetic pairs);
        delta: the size of the Rademacher perturbations; lr: Adam's learning rate.
        max_queries: per-sample query budget (default ``steps·(samples + 1)``, the most the attack asks).
        seed: seed of the perturbations (``None``: random).
        batch_size: samples attacked together (each brings ``samples`` queries per step).

    The result's ``queries`` holds the exact per-sample count; module docstring for the algorithm.
    """
    norm = check_norm(norm)
    check_positive(eps, "eps", allow_zero=True)
    check_iterations(steps, "steps")
    check_iterations(samples, "samples")
    if samples % 2:
        raise OptionError(f"samples must be even (samples/2 antithetic pairs x ± delta·v), got {samples}")
    check_positive(delta, "delta")
    check_positive(lr, "lr")
    if max_queries is None:
        max_queries = steps * (samples + 1)
    check_iterations(max_queries, "max_queries")
    if max_queries < samples + 1:
        raise OptionError(f"max_queries={max_queries} cannot pay for one SPSA step (the point and its estimate: "
                          f"samples + 1 = {samples + 1} queries); raise max_queries or lower samples")
    check_positive(batch_size, "batch_size", integer=True)
    p = prepare(model, x, y)
    eps = float(eps)
    oracle = ScoreOracle.from_model(p.clf, p.n, budget=max_queries, device=p.x.device)
    x_adv = p.x.clone()
    run = Run(p, x_adv, queries=oracle.queries, params={"eps": eps, "norm": norm, "max_queries": max_queries})
    if eps == 0:
        return run
    gen = ops.make_generator(p.x.device, seed)
    todo = (p.pred == p.y).nonzero().squeeze(1)   # already misclassified: reported with r = 0, never queried
    for first in range(0, todo.numel(), batch_size):
        idx = todo[first:first + batch_size]
        x_adv[idx] = _spsa_chunk(oracle, p.x[idx], p.y[idx], idx, eps=eps, norm=norm, steps=steps, samples=samples,
                                 delta=float(delta), lr=float(lr), gen=gen, bounds=p.clf.bounds)
    return run
