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
import math
import time

import torch

from .. import registry
from ..checks import check_iterations, check_norm, check_positive, prepare
from ..errors import OptionError
from ..results import AttackResult, make_result
from ._common import attack_loss, bcast, loss_grad, project, steepest_direction

log = logging.getLogger(__name__)

LOSSES = ("ce", "cw")


def make_generator(device: torch.device, seed: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Generator:
    """A generator on ``device`` from ``seed`` or ``generator`` (default: seeded from torch's global RNG,
    so ``torch.manual_seed`` makes the call reproducible)."""
    if seed is not None and generator is not None:
        raise OptionError("give either seed= or generator=, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise OptionError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if torch.device(generator.device).type != device.type:
            raise OptionError(f"generator is on {generator.device} but inputs are on {device}; "
                              f"create it with torch.Generator(device={str(device)!r})")
        return generator
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


def random_ball(shape: torch.Size, eps: float, norm: str, gen: torch.Generator, device, dtype) -> torch.Tensor:
    """Random starts in the ``norm`` ball of radius ``eps``: uniform in the L∞ cube; for L2 a uniform
    direction with a radius uniform in ``[0, eps]`` (not uniform in volume, which in high dimension puts
    every start on the sphere and measurably weakens the attack)."""
    if norm == "inf":
        return (torch.rand(shape, generator=gen, device=device, dtype=dtype) * 2 - 1) * eps
    g = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    radius = eps * torch.rand(shape[0], generator=gen, device=device, dtype=dtype)
    return g * bcast(radius / g.flatten(1).norm(dim=1).clamp_min(1e-12), g)


@registry.attacks.register("pgd", kind="bounded", norms=("inf", "2"))
def pgd(model, x, y=None, *, eps: float, norm="inf", steps: int = 40, step_size: float | None = None,
        random_start: bool = True, restarts: int = 1, target=None, loss: str = "ce", early_stop: bool = True,
        seed: int | None = None, generator: torch.Generator | None = None,
        batch_size: int = 1024) -> AttackResult:
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
    clf, x, y, target, _, pred = prepare(model, x, y, target=target)
    gen = make_generator(x.device, seed, generator) if random_start else None
    lo, hi = clf.bounds
    eps, step_size = float(eps), float(step_size)
    params = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "random_start": random_start,
              "restarts": restarts, "loss": loss, "early_stop": early_stop, "targeted": target is not None,
              "seed": seed}
    t0 = time.perf_counter()
    n = x.shape[0]
    iters = torch.zeros(n, dtype=torch.long, device=x.device)
    if eps == 0:
        return make_result("pgd", clf, x, x.clone(), y, pred, target=target, iterations=iters,
                           elapsed=time.perf_counter() - t0, params=params)

    best_x = x.clone()
    best_loss = torch.full((n,), -math.inf, device=x.device)
    best_ok = torch.zeros(n, dtype=torch.bool, device=x.device)
    todo = torch.arange(n, device=x.device)
    if target is None:  # already misclassified: make_result reports them with r = 0
        todo = todo[pred == y]
    # on an accelerator, compact the active set (a host sync) only every few steps
    compact_every = 1 if x.device.type == "cpu" else 4
    for start in range(0, todo.numel(), batch_size):
        chunk = todo[start:start + batch_size]
        for _ in range(restarts):
            pos = chunk[~best_ok[chunk]] if early_stop else chunk
            if pos.numel() == 0:
                break
            x0 = x[pos]
            ya = y[pos]
            ta = None if target is None else target[pos]
            if random_start:
                xa = (x0 + random_ball(x0.shape, eps, norm, gen, x.device, x.dtype)).clamp(lo, hi)
            else:
                xa = x0.clone()
            for t in range(steps + 1):
                if t < steps:
                    g, ell, logits = loss_grad(clf, xa, ya, ta, loss)
                    iters[pos] += 1
                else:
                    with torch.inference_mode():
                        logits = clf(xa)
                        ell = attack_loss(logits, ya, ta, loss)
                lab = logits.argmax(1)
                ok = lab == ta if ta is not None else lab != ya
                old_ok, old_loss = best_ok[pos], best_loss[pos]
                if early_stop:
                    better = ~old_ok & (ok | (ell > old_loss))
                else:
                    better = (ok & ~old_ok) | ((ok == old_ok) & (ell > old_loss))
                best_x[pos] = torch.where(bcast(better, xa), xa, best_x[pos])
                best_loss[pos] = torch.where(better, ell, old_loss)
                best_ok[pos] = old_ok | ok
                if t == steps:
                    break
                if early_stop and (t + 1) % compact_every == 0:
                    keep = (~ok).nonzero().squeeze(1)
                    if keep.numel() == 0:
                        break
                    if keep.numel() < pos.numel():
                        pos, x0, xa, ya, g = pos[keep], x0[keep], xa[keep], ya[keep], g[keep]
                        ta = None if ta is None else ta[keep]
                xa = xa + step_size * steepest_direction(g, norm)
                xa = (x0 + project(xa - x0, eps, norm)).clamp(lo, hi)
    res = make_result("pgd", clf, x, best_x, y, pred, target=target, iterations=iters,
                      elapsed=time.perf_counter() - t0, params=params)
    log.info("pgd: %s", res)
    return res
