"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Algorithm 1): APGD-CE, APGD-DLR and the targeted APGD-T, L∞ and L2.

APGD is PGD with momentum and a step size that needs no tuning. With ``P`` the projection onto the ``eps``
ball around ``x`` followed by the clamp to the box, ``d`` the steepest direction of the norm (``sign(g)`` for
L∞, ``g/‖g‖₂`` for L2) and ``f`` the per-sample loss (:func:`~georobust.core.losses.attack_loss`)::

    x⁽¹⁾ = P(x⁽⁰⁾ + η d(∇f(x⁽⁰⁾))),   η⁽⁰⁾ = 2·eps
    z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η⁽ᵏ⁾ d(∇f(x⁽ᵏ⁾)))
    x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾)),   α = 0.75

At the checkpoints ``w_j = ⌈p_j·N⌉`` (:func:`checkpoints`; ``p_0 = 0``, ``p_1 = 0.22``,
``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``) each sample's step size is halved, and its iterate
restarted from its best point ``x_max`` so far, when (:func:`halving_decision`)

1. the loss increased in at most ``ρ·(w_j − w_{j−1})`` of the steps since the last checkpoint (``ρ = 0.75``), or
2. the step size was not halved at the last checkpoint and the best loss ``f_max`` has not improved since.

Condition 2 reads the paper literally at the first checkpoint (``w_0 = 0`` halved nothing, so it may fire at
``w_1``; the authors' code starts as if ``w_0`` had halved), and condition 1 compares ``f(x⁽ʷ¹⁾)`` with
``f(x⁽⁰⁾)`` where that code compares with an unset entry. After a restart the momentum term is
``x_max − x⁽ᵏ⁾`` (``x⁽ᵏ⁺¹⁾ ← x_max``, as in Algorithm 1).

Losses: ``"ce"`` (APGD-CE); ``"dlr"`` (APGD-DLR), the difference of logits ratio
(:func:`~georobust.core.losses.dlr_loss`), invariant to shifts and scalings of the logits; APGD-T runs the
targeted DLR loss towards each of the ``n_target_classes`` classes with the highest clean logits other than
the label, one target after another, each run only on the samples still robust.

**Batched, stopping per sample.** The samples still to attack are processed in batches of ``batch_size``;
every iterate is offered to a :class:`~georobust.engine.pgd.WorstCase` (success first, then the highest
loss), and a sample leaves the active set at its first successful iterate (misclassified; classified as the
target when ``target`` is given). Restarts (and APGD-T's targets) run only on the samples still robust.
Success is verified by the attack protocol, never taken from this bookkeeping.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import torch

from ..checks import check_iterations, check_norm, check_positive, prepare
from ..core import ops
from ..core.losses import attack_loss, loss_grad
from ..engine.pgd import WorstCase
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)

#: the losses :func:`apgd` knows, by the attack that ascends them
APGD_LOSSES = {"ce": "apgd-ce", "dlr": "apgd-dlr", "dlr-targeted": "apgd-t"}


def checkpoints(n_iter: int) -> list[int]:
    """The checkpoints ``w_0 = 0 < w_1 < … < n_iter`` of APGD's step-size schedule (Croce & Hein, ICML 2020).

    ``w_j = ⌈p_j · n_iter⌉`` with ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
    0.06)``, computed in exact rational arithmetic (``0.22·100`` is 22, not 23 by float round-off); the
    points ``>= n_iter`` are dropped (no step follows them) and repeated ones (small ``n_iter``) merged.
    ``checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    check_iterations(n_iter, "n_iter")
    p_prev, p = Fraction(0), Fraction(22, 100)
    out = [0]
    while p < 1:
        w = math.ceil(p * n_iter)
        if w >= n_iter:
            break
        if w != out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - Fraction(3, 100), Fraction(6, 100))
    return out


def halving_decision(increases: torch.Tensor, length: int, best: torch.Tensor, best_last: torch.Tensor,
                     reduced_last: torch.Tensor, rho: float = 0.75) -> torch.Tensor:
    """Which samples halve their step size at a checkpoint ``w_j`` (Croce & Hein, ICML 2020, Section 3.1).

    Args:
        increases: per sample, how many of the ``length = w_j − w_{j−1}`` steps since the last checkpoint
            increased the loss (``f(x⁽ⁱ⁺¹⁾) > f(x⁽ⁱ⁾)``).
        best, best_last: the best loss ``f_max`` now and at the last checkpoint.
        reduced_last: whether the step size was halved at the last checkpoint.
        rho: the fraction of condition 1.

    Returns:
        ``(increases <= rho·length) | (~reduced_last & (best <= best_last))`` — condition 1 or condition 2.
    """
    cond1 = increases <= rho * length
    cond2 = ~reduced_last & (best <= best_last)
    return cond1 | cond2


def halving_from_trace(trace: torch.Tensor, best_last: torch.Tensor, reduced_last: torch.Tensor,
                       rho: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`halving_decision` from a loss trace ``(w_j − w_{j−1} + 1, N)``: the losses ``f(x⁽ʷʲ⁻¹⁾) …
    f(x⁽ʷʲ⁾)`` of the iterates since the last checkpoint. Returns ``(halve, best)``, ``best`` the new
    ``f_max`` (``max(best_last, trace[1:])``)."""
    if trace.ndim != 2 or trace.shape[0] < 2:
        raise OptionError(f"a loss trace is (steps + 1, N) with at least one step, got shape {tuple(trace.shape)}")
    increases = (trace[1:] > trace[:-1]).sum(0)
    best = torch.maximum(best_last, trace[1:].amax(0))
    return halving_decision(increases, trace.shape[0] - 1, best, best_last, reduced_last, rho), best


def apgd_kernel(model, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, *, eps: float, norm: str,
                steps: int, bounds: tuple[float, float], loss: str = "ce", target: torch.Tensor | None = None,
                success_target: bool = True, rho: float = 0.75, alpha: float = 0.75,
                tracker: WorstCase | None = None, index: torch.Tensor | None = None,
                compact_every: int = 1, on_step=None) -> None:
    """One run of Algorithm 1 from ``start`` on a batch; every iterate is offered to ``tracker``.

    Nothing is validated (the public attacks validate once). ``target`` is the target of a targeted loss;
    with ``success_target`` a sample succeeds when classified as it, otherwise when misclassified (APGD-T:
    the targeted loss is a means to an untargeted end). A successful sample leaves the active set (the set
    is compacted every ``compact_every`` steps). ``on_step(k, index, x, loss, eta)``, if given, sees every
    iterate ``x⁽ᵏ⁾`` of the active samples with the step size that will move it (tests trace runs with it).
    """
    lo, hi = bounds
    if tracker is None:
        tracker = WorstCase(x, early_stop=True)
    if index is None:
        index = torch.arange(x.shape[0], device=x.device)
    ok_target = target if success_target else None
    marks = set(checkpoints(steps)[1:])

    def proj(v, x0):
        return (x0 + ops.project(v - x0, eps, norm)).clamp(lo, hi)

    x0, ya, ta = x.detach(), y, target
    xk = start.detach().clone()
    g, f, logits = loss_grad(model, xk, ya, ta, loss)
    tracker.iterations[index] += 1
    ok = tracker.update(index, xk, logits, f, ya, None if ok_target is None else ta)
    eta = torch.full((x0.shape[0],), 2.0 * eps, device=x0.device, dtype=x0.dtype)
    if on_step is not None:
        on_step(0, index, xk, f, eta)
    x_prev = xk
    x_max, f_max, g_max = xk.clone(), f.clone(), g.clone()
    f_max_last, f_last = f_max.clone(), f.clone()
    reduced_last = torch.zeros_like(ok)
    increases = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
    last_mark = 0
    for k in range(steps):
        if (k + 1) % compact_every == 0 or k == 0:
            keep = (~ok).nonzero().squeeze(1)
            if keep.numel() == 0:
                return
            if keep.numel() < index.numel():
                index, x0, ya, xk, x_prev, g, eta = (t[keep] for t in (index, x0, ya, xk, x_prev, g, eta))
                x_max, f_max, g_max, f_max_last, f_last = (t[keep] for t in (x_max, f_max, g_max, f_max_last,
                                                                             f_last))
                reduced_last, increases, ok = reduced_last[keep], increases[keep], ok[keep]
                ta = None if ta is None else ta[keep]
        e = ops.bcast(eta, xk)
        z = proj(xk + e * ops.steepest_direction(g, norm), x0)
        a = 1.0 if k == 0 else alpha
        x_new = proj(xk + a * (z - xk) + (1 - a) * (xk - x_prev), x0)
        x_prev, xk = xk, x_new
        if k + 1 < steps:
            g, f, logits = loss_grad(model, xk, ya, ta, loss)
            tracker.iterations[index] += 1
        else:
            with torch.inference_mode():
                logits = model(xk)
                f = attack_loss(logits, ya, ta, loss)
        ok = tracker.update(index, xk, logits, f, ya, None if ok_target is None else ta)
        increases += (f > f_last).long()
        f_last = f
        better = f > f_max
        if k + 1 < steps:
            b = ops.bcast(better, xk)
            x_max, g_max = torch.where(b, xk, x_max), torch.where(b, g, g_max)
            f_max = torch.where(better, f, f_max)
        if k + 1 in marks:
            halve = halving_decision(increases, k + 1 - last_mark, f_max, f_max_last, reduced_last, rho)
            eta = torch.where(halve, eta / 2, eta)
            hb = ops.bcast(halve, xk)
            xk, g = torch.where(hb, x_max, xk), torch.where(hb, g_max, g)
            f_last = torch.where(halve, f_max, f_last)
            reduced_last, f_max_last = halve, f_max.clone()
            increases = torch.zeros_like(increases)
            last_mark = k + 1
        if on_step is not None:
            on_step(k + 1, index, xk, f_last, eta)


def _check_common(eps, norm, steps, restarts, rho, alpha, batch_size) -> str:
    norm = check_norm(norm)
    check_positive(eps, "eps", allow_zero=True)
    check_iterations(steps, "steps")
    check_iterations(restarts, "restarts")
    check_positive(batch_size, "batch_size", integer=True)
    for name, v in (("rho", rho), ("alpha", alpha)):
        check_positive(v, name)
        if v > 1:
            raise OptionError(f"{name} is a fraction in (0, 1], got {v!r} (the paper uses 0.75)")
    return norm


def _run(p, *, eps, norm, steps, restarts, loss, rho, alpha, random_start, seed, generator, batch_size,
         targets=None) -> Run:
    """The batched restarts (and APGD-T's targets ``(N, T)``) of :func:`apgd_kernel` over ``p``."""
    gen = ops.make_generator(p.x.device, seed, generator) if random_start else None
    eps = float(eps)
    x, y = p.x, p.y
    track = WorstCase(x, early_stop=True)
    run = Run(p, track.best_x, iterations=track.iterations, params={"eps": eps, "norm": norm})
    if eps == 0:
        return run
    todo = torch.arange(p.n, device=x.device)
    if p.target is None:  # already misclassified: the result reports them with r = 0
        todo = todo[p.pred == y]
    compact_every = 1 if x.device.type == "cpu" else 4
    rounds = [None] if targets is None else list(range(targets.shape[1]))
    for first in range(0, todo.numel(), batch_size):
        chunk = todo[first:first + batch_size]
        for r in rounds:
            for _ in range(restarts):
                pos = chunk[~track.success[chunk]]
                if pos.numel() == 0:
                    break
                x0 = x[pos]
                start = (x0 + ops.random_start(x0, eps, norm, gen)).clamp(*p.clf.bounds) if random_start else x0
                if r is None:
                    tgt, own = (None if p.target is None else p.target[pos]), True
                else:
                    tgt, own = targets[pos, r], False
                apgd_kernel(p.clf, x0, y[pos], start, eps=eps, norm=norm, steps=steps, bounds=p.clf.bounds,
                            loss=loss, target=tgt, success_target=own, rho=rho, alpha=alpha, tracker=track,
                            index=pos, compact_every=compact_every)
    return run


@attack("apgd-ce", threat="bounded-lp", norms=("inf", "2"), chunking="remaining")
def apgd_ce(model, x, y=None, *, eps: float, norm="inf", steps: int = 100, restarts: int = 1, target=None,
            rho: float = 0.75, alpha: float = 0.75, random_start: bool = True, seed: int | None = None,
            generator: torch.Generator | None = None, batch_size: int = 1024) -> Run:
    """APGD-CE (Croce & Hein, ICML 2020): Auto-PGD on the cross-entropy, per-sample worst case.

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: inputs inside the model's bounds; y: labels (default: the model's predictions).
        eps: radius of the ball (``0`` returns ``x``).
        norm: ``"inf"`` or ``2``.
        steps: iterations ``N_iter`` per restart (default 100; gradient evaluations per restart).
        restarts: runs from independent random starts, each only on the samples still robust.
        target: target labels (int or ``(N,)``): descend the target's cross-entropy, success = the target.
        rho: condition 1's fraction of loss increases (0.75). alpha: the momentum weight (0.75).
        random_start: start uniformly in the ball (default); otherwise at ``x``.
        seed, generator: the randomness of the random starts (one of them). Same seed, same result.
        batch_size: samples per forward/backward pass.
    """
    norm = _check_common(eps, norm, steps, restarts, rho, alpha, batch_size)
    p = prepare(model, x, y, target=target)
    return _run(p, eps=eps, norm=norm, steps=steps, restarts=restarts, loss="ce", rho=rho, alpha=alpha,
                random_start=random_start, seed=seed, generator=generator, batch_size=batch_size)


@attack("apgd-dlr", threat="bounded-lp", norms=("inf", "2"), chunking="remaining")
def apgd_dlr(model, x, y=None, *, eps: float, norm="inf", steps: int = 100, restarts: int = 1, target=None,
             rho: float = 0.75, alpha: float = 0.75, random_start: bool = True, seed: int | None = None,
             generator: torch.Generator | None = None, batch_size: int = 1024) -> Run:
    """APGD-DLR (Croce & Hein, ICML 2020): Auto-PGD on the difference-of-logits-ratio loss.

    The options are those of :func:`apgd_ce`. The DLR loss needs at least 3 classes (4 with ``target``,
    which ascends the targeted DLR loss towards it).
    """
    norm = _check_common(eps, norm, steps, restarts, rho, alpha, batch_size)
    p = prepare(model, x, y, target=target)
    need = 4 if p.target is not None else 3
    if p.num_classes < need:
        raise OptionError(f"apgd-dlr needs a model with at least {need} classes (the DLR loss), this one has "
                          f"{p.num_classes}; use apgd-ce")
    return _run(p, eps=eps, norm=norm, steps=steps, restarts=restarts, loss="dlr", rho=rho, alpha=alpha,
                random_start=random_start, seed=seed, generator=generator, batch_size=batch_size)


@attack("apgd-t", threat="bounded-lp", norms=("inf", "2"), chunking="remaining")
def apgd_t(model, x, y=None, *, eps: float, norm="inf", steps: int = 100, restarts: int = 1,
           n_target_classes: int = 9, rho: float = 0.75, alpha: float = 0.75, random_start: bool = True,
           seed: int | None = None, generator: torch.Generator | None = None, batch_size: int = 1024) -> Run:
    """APGD-T (Croce & Hein, ICML 2020): targeted APGD-DLR towards each of the top other classes in turn.

    For every sample, the targets are the ``n_target_classes`` classes with the highest clean logits other
    than its label, tried in that order; each target's run (with ``restarts`` random starts) sees only the
    samples still robust. Success is untargeted: a sample is broken when it is misclassified. The other
    options are those of :func:`apgd_ce`; ``n_target_classes`` must be below the number of classes (which
    must be at least 4, for the targeted DLR loss).
    """
    norm = _check_common(eps, norm, steps, restarts, rho, alpha, batch_size)
    check_iterations(n_target_classes, "n_target_classes")
    p = prepare(model, x, y)
    k = p.num_classes
    if k < 4:
        raise OptionError(f"apgd-t needs a model with at least 4 classes (the targeted DLR loss), this one has "
                          f"{k}; use apgd-ce or apgd-dlr")
    if n_target_classes >= k:
        raise OptionError(f"n_target_classes={n_target_classes} but the model has {k} classes: at most {k - 1} "
                          f"classes differ from the label; give n_target_classes <= {k - 1}")
    with torch.inference_mode():
        logits = torch.cat([p.clf(p.x[i:i + batch_size]) for i in range(0, p.n, batch_size)])
    logits = logits.clone()
    logits.scatter_(1, p.y[:, None], float("-inf"))
    targets = logits.sort(dim=1, descending=True, stable=True).indices[:, :n_target_classes]
    return _run(p, eps=eps, norm=norm, steps=steps, restarts=restarts, loss="dlr", rho=rho, alpha=alpha,
                random_start=random_start, seed=seed, generator=generator, batch_size=batch_size,
                targets=targets)


def apgd(model, x, y=None, *, loss: str = "ce", **options):
    """Auto-PGD (Croce & Hein, ICML 2020) by loss: ``"ce"`` → :func:`apgd_ce`, ``"dlr"`` → :func:`apgd_dlr`,
    ``"dlr-targeted"`` → :func:`apgd_t`; ``options`` are those of the attack chosen."""
    if loss not in APGD_LOSSES:
        raise OptionError(f"unknown APGD loss {loss!r}; choose one of {', '.join(APGD_LOSSES)}")
    fn = {"ce": apgd_ce, "dlr": apgd_dlr, "dlr-targeted": apgd_t}[loss]
    return fn(model, x, y, **options)
