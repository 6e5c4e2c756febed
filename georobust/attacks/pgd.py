"""Projected gradient descent (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models
resistant to adversarial attacks", ICLR 2018), L∞ and L2, with random start, restarts, targets and the
cross-entropy or Carlini–Wagner margin loss.

Each step ascends the per-sample loss ``J`` along its steepest direction for the norm and projects back:

    x_{t+1} = clip_[lo, hi]( x + Π_eps( x_t + α · d(∇ₓJ(x_t)) − x ) ),   d = sign(·) (L∞) or ·/‖·‖₂ (L2)

``Π_eps`` is the exact Euclidean projection onto the ``eps`` ball (coordinate clamp for L∞, radial scaling
for L2); the clip to the box keeps the point inside the ball (it only moves coordinates towards ``x``).
The random start draws uniformly from the L∞ ball; for L2 it takes a uniform direction and a radius
uniform in ``[0, eps]``: a start uniform in the L2 ball's *volume* would lie almost surely next to its
sphere in high dimension (the radius of a uniform point concentrates at ``eps``), far from ``x``.

**Per-sample worst case.** Every iterate ``x_0 … x_T`` of every restart is scored by ``(success, J)``
lexicographically: a misclassified iterate beats any correctly classified one, and between two iterates
of the same status the higher loss wins. With ``early_stop=True`` (the default) a sample stops at its
*first* successful iterate (this is exactly what robust accuracy needs, and is much cheaper); later
restarts run only on the samples that are still robust. With ``early_stop=False`` every sample runs every
step of every restart and the highest-loss successful iterate is returned.

Defaults: ``steps=40`` and ``step_size = 2.5·eps/steps`` (Madry et al.'s MNIST setting is 40 steps of
0.01 at eps = 0.3, i.e. 1.33·eps/steps; 2.5·eps/steps is the rule of their ``robustness`` library, which
lets a walk from a random start reach the opposite face of the ball).
"""

from __future__ import annotations

import logging

import torch

from ..checks import check_iterations, check_norm, check_positive, prepare
from ..core import ops
from ..core.losses import LOSSES
from ..engine.pgd import WorstCase, pgd_kernel
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)



@attack("pgd", threat="bounded-lp", norms=("inf", "2"), chunking="remaining")
def pgd(model, x, y=None, *, eps: float, norm="inf", steps: int = 40, step_size: float | None = None,
        random_start: bool = True, restarts: int = 1, target=None, loss: str = "ce", early_stop: bool = True,
        seed: int | None = None, generator: torch.Generator | None = None,
        batch_size: int = 1024) -> Run:
    """PGD (Madry et al., ICLR 2018) within the ``norm`` ball of radius ``eps``; the per-sample worst case.

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: inputs inside the model's bounds; y: labels (default: the model's predictions).
        eps: radius of the ball (``0`` returns ``x``).
        norm: ``"inf"`` or ``2``.
        steps: gradient steps per restart (default 40).
        step_size: ``α`` (default ``2.5·eps/steps``).
        random_start: start uniformly inside the ball (Madry et al.); otherwise at ``x``.
        restarts: independent runs; each sample keeps its worst case over all of them.
        target: target labels (int or ``(N,)``) for the targeted variant (descends the target's loss).
        loss: ``"ce"`` (cross-entropy, the paper) or ``"cw"`` (Carlini–Wagner logit margin).
        early_stop: stop each sample at its first successful iterate (default); ``False`` runs all steps
            and keeps the highest-loss successful iterate.
        seed, generator: the randomness of the random start (one of them; default drawn from torch's
            global generator). Same seed, same result.
        batch_size: samples per forward/backward pass.

    Returns:
        an :class:`AttackResult` (``iterations`` = gradient evaluations per sample, all restarts).
    """
    norm = check_norm(norm)
    check_positive(eps, "eps", allow_zero=True)
    check_iterations(steps, "steps")
    check_iterations(restarts, "restarts")
    check_positive(batch_size, "batch_size", integer=True)
    if step_size is None:
        step_size = 2.5 * float(eps) / max(steps, 1)
    else:
        check_positive(step_size, "step_size", allow_zero=True)
    if loss not in LOSSES:
        raise OptionError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    p = prepare(model, x, y, target=target)
    gen = ops.make_generator(p.x.device, seed, generator) if random_start else None
    eps, step_size = float(eps), float(step_size)
    x, y, target = p.x, p.y, p.target
    track = WorstCase(x, early_stop=early_stop)
    run = Run(p, track.best_x, iterations=track.iterations, params={"eps": eps, "norm": norm, "step_size": step_size})
    if eps == 0:
        return run
    todo = torch.arange(p.n, device=x.device)
    if target is None:  # already misclassified: the result reports them with r = 0
        todo = todo[p.pred == y]
    # on an accelerator, compact the active set (a host sync) only every few steps
    compact_every = 1 if x.device.type == "cpu" else 4
    for first in range(0, todo.numel(), batch_size):
        chunk = todo[first:first + batch_size]
        for _ in range(restarts):
            pos = chunk[~track.success[chunk]] if early_stop else chunk
            if pos.numel() == 0:
                break
            x0 = x[pos]
            start = (x0 + ops.random_start(x0, eps, norm, gen)).clamp(*p.clf.bounds) if random_start else None
            pgd_kernel(p.clf, x0, y[pos], eps=eps, norm=norm, steps=steps, step_size=step_size,
                       bounds=p.clf.bounds, target=None if target is None else target[pos], loss=loss,
                       start=start, tracker=track, index=pos, compact_every=compact_every)
    return run
