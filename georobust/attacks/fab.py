"""FAB, the fast adaptive boundary attack (Croce & Hein, "Minimally distorted adversarial examples with a fast
adaptive boundary attack", ICML 2020), untargeted (``fab``) and targeted as in AutoAttack (``fab-t``), for the
L∞ and L2 norms.

FAB searches the *minimal* perturbation. At the iterate ``x_k`` it linearises the decision function
``g = f_t − f_y`` (``y`` the true class, ``t`` the target; untargeted: the class ``t`` whose linearised boundary
is closest, ``argmin_t |g_t| / ‖∇g_t‖_q`` with ``q`` the dual exponent, as DeepFool does) and projects onto the
linearised boundary ``π = {z : g(x_k) + ∇g(x_k)·(z − x_k) = 0}`` *intersected with the box* ``[lo, hi]``
(the paper's box-constrained projection, :func:`project_hyperplane_box`), both from ``x_k`` (``δ_k``) and from
the original point ``x_orig`` (``δ_orig``). The biased step is::

    α       = min(‖δ_k‖ / (‖δ_k‖ + ‖δ_orig‖), α_max)
    x_{k+1} = clip_[lo,hi]( (1 − α)(x_k + η δ_k) + α (x_orig + η δ_orig) )

(overshoot ``η``, paper 1.05; ``α_max`` 0.1). Once ``x_{k+1}`` is adversarial it is kept if its norm is the
smallest so far, and the paper's backward step pulls it towards the original point,
``x_{k+1} ← (1 − β) x_orig + β x_{k+1}`` (``β`` = 0.9), so the walk approaches the boundary from both sides.

**FAB-T** (AutoAttack's targeted version, Croce & Hein ICML 2020 "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks"): the targets are the ``n_target_classes``
classes with the largest clean logits other than the true one, tried one after another; a target's run needs
one backward pass per step instead of ``K − 1``. With ``eps`` given, a sample is *broken* once it has an
adversarial point of norm ``<= eps``: it leaves the active set at once (per-sample early stop, also inside a
target's steps) and later targets and restarts run only on the samples not yet broken; the run is then a
``bounded-lp`` one (robust accuracy at ``eps``), and samples without such a point are returned unperturbed.
Without ``eps`` the attack is a minimal-norm search (``minimal-lp``): every sample runs every target (and
restart) and keeps its smallest adversarial perturbation, the minimum over targets being the answer.

Restarts after the first start at a random point at radius ``0.5·min(best norm, eps)`` from ``x_orig`` (the
paper's random start; at ``x_orig`` itself while neither is known).

Implementation, batched over the *active* samples (those not yet broken, each doing its own steps): per
step one forward and backward pass for the linearisation (one backward for a target, ``K − 1`` untargeted)
and one forward pass for the adversarial test of the new iterate, as the reference code; the linearisation's
logits also test the stepped-back point, which is kept when it is still adversarial (free, and never worse).
The projection solver is exact and batched (sort the breakpoints, one cumulative sum; no per-sample loop).
"""

from __future__ import annotations

import logging

import torch

from ..checks import check_iterations, check_norm, check_positive, prepare
from ..core import ops
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)

#: the smallest projection length counted in the bias ``α`` (guards ``0/0`` when ``x_k`` lies on ``π``)
MIN_LENGTH = 1e-12


def project_hyperplane_box(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, lo: float, hi: float,
                           norm: str) -> torch.Tensor:
    """The box-constrained projection of FAB (Croce & Hein, ICML 2020, Sec. 2), batched, L∞ or L2.

    For each row solves ``min ‖δ‖_p  s.t.  w·δ = c,  lo <= t + δ <= hi`` exactly. If the hyperplane does not
    meet the box (no feasible ``δ``) it returns the box point closest to the hyperplane that is nearest to
    ``t``: every coordinate with ``w_i ≠ 0`` moved to the face of the box in the direction of ``sign(c)·w_i``,
    the others left at 0.

    Both norms have the same structure. With ``c >= 0`` (else flip ``w`` and ``c``), ``a = |w|`` and
    ``u_i`` the room from ``t_i`` to the box face in direction ``sign(w_i)``, the optimum is
    ``δ_i = sign(w_i)·min(τ, u_i)`` for L∞ (Lagrange: all coordinates share one size, capped by the box)
    and ``δ_i = sign(w_i)·min(τ a_i, u_i)`` for L2 (KKT: ``δ = clip(τ w)``), where ``τ >= 0`` solves
    ``G(τ) = Σ_i ω_i min(τ, β_i) = c``: L∞ ``β = u, ω = a``; L2 ``β = u/a, ω = a²``. ``G`` is piecewise
    linear and non-decreasing: sorting the breakpoints ``β`` gives ``G`` at each of them by one cumulative
    sum, the segment holding ``c``, and ``τ`` on it in closed form.

    Args:
        t: points ``(N, D)`` inside the box.
        w: hyperplane normals ``(N, D)``.
        c: right-hand sides ``(N,)``.
        lo, hi: the box.
        norm: ``"inf"`` or ``"2"``.

    Returns:
        ``δ`` of shape ``(N, D)``.
    """
    if norm not in ("inf", "2"):
        raise OptionError(f"the box-constrained projection supports norm inf or 2, got {norm!r}")
    c = c.to(w.dtype)
    sgn = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    ws = w * sgn[:, None]
    cc = c.abs()
    a = ws.abs()
    active = a > 0
    room = torch.where(ws > 0, hi - t, t - lo).clamp_min(0)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    if norm == "inf":
        brk, wt = torch.where(active, room, zero), a
    else:
        brk = torch.where(active, room / torch.where(active, a, torch.ones_like(a)), zero)
        wt = a * a
    brk_s, order = brk.sort(1)
    wt_s = wt.gather(1, order)
    cum_wb = (wt_s * brk_s).cumsum(1)  # Σ_{i<=j} ω_i β_i
    cum_w = wt_s.cumsum(1)  # Σ_{i<=j} ω_i
    total_w = cum_w[:, -1:]
    g_at = cum_wb + brk_s * (total_w - cum_w)  # G(β_(j))
    j = (g_at < cc[:, None]).sum(1)  # the first breakpoint where G reaches c (D: never, infeasible)
    d = t.shape[1]
    feasible = j < d
    jm = (j - 1).clamp_min(0)[:, None]
    before = j[:, None] > 0
    p_sum = torch.where(before, cum_wb.gather(1, jm), zero)[:, 0]
    r_sum = (total_w - torch.where(before, cum_w.gather(1, jm), zero))[:, 0]
    tau = (cc - p_sum) / r_sum.clamp_min(torch.finfo(w.dtype).tiny)
    tau = torch.where(feasible, tau, brk_s[:, -1])
    tau = torch.where(cc > 0, tau.clamp_min(0), zero)
    if norm == "inf":
        mag = torch.minimum(tau[:, None].expand_as(room), room)
    else:
        mag = torch.minimum(tau[:, None] * a, room)
    return torch.where(active, ws.sign() * mag, zero)


def _grads(diff: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Input gradients of each column of ``diff`` ``(M, C)``: ``(M, C, D)`` (one batched backward per column;
    samples do not mix in an eval-mode model)."""
    c = diff.shape[1]
    gs = [torch.autograd.grad(diff[:, j].sum(), xr, retain_graph=j < c - 1)[0].flatten(1) for j in range(c)]
    return torch.stack(gs, 1)


def _linearise(clf, x: torch.Tensor, y: torch.Tensor, others: torch.Tensor):
    """Logits at ``x``, ``g = f_others − f_y`` ``(M, C)`` and its input gradients ``(M, C, D)``."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = clf(xr)
        g = logits.gather(1, others) - logits.gather(1, y[:, None])
        w = _grads(g, xr)
    return logits.detach(), g.detach(), w.detach()


class _Best:
    """The smallest adversarial perturbation per sample so far (norm and point)."""

    def __init__(self, x: torch.Tensor, norm: str):
        self.norm = norm
        self.size = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
        self.x = x.clone()

    def offer(self, rows: torch.Tensor, x_adv: torch.Tensor, x_orig: torch.Tensor) -> None:
        size = ops.flat_norm((x_adv - x_orig).double(), self.norm)
        better = size < self.size[rows]
        if bool(better.any()):
            r = rows[better]
            self.size[r] = size[better]
            self.x[r] = x_adv[better]


def _fab_steps(clf, x_orig: torch.Tensor, y: torch.Tensor, others: torch.Tensor, start: torch.Tensor,
               rows: torch.Tensor, best: _Best, iterations: torch.Tensor, *, norm: str, steps: int,
               eps: float | None, alpha_max: float, eta: float, beta: float) -> None:
    """One FAB run (one target or untargeted, one start) on the samples ``rows`` of the whole batch.

    ``x_orig``, ``y``, ``others`` (the classes linearised against ``y``), ``start`` are those samples';
    ``best`` and ``iterations`` are indexed by ``rows``. Per step: one forward and backward pass at the
    iterates (the linearisation; its logits also show whether a stepped-back iterate is still adversarial,
    which is kept when smaller) and one forward pass at the new iterates (the adversarial test).
    """
    lo, hi = clf.bounds
    shape = x_orig.shape[1:]
    x0f = x_orig.flatten(1)
    cur = start.clone()
    act = torch.arange(rows.numel(), device=x_orig.device)
    q = "1" if norm == "inf" else "2"

    def record(adv: torch.Tensor, g=None, w=None):
        """Keep the adversarial iterates ``act[adv]``; with ``eps``, drop the samples now broken."""
        nonlocal act
        if not bool(adv.any()):
            return adv, g, w
        a_loc = act[adv]
        best.offer(rows[a_loc], cur[a_loc], x_orig[a_loc])
        if eps is not None:
            keep = best.size[rows[act]] > eps
            act, adv = act[keep], adv[keep]
            if g is not None:
                g, w = g[keep], w[keep]
        return adv, g, w

    for _ in range(steps):
        if act.numel() == 0:
            return
        logits, g, w = _linearise(clf, cur[act], y[act], others[act])
        _, g, w = record(logits.argmax(1) != y[act], g, w)
        if act.numel() == 0:
            return
        # the closest linearised boundary (one column for a target)
        if g.shape[1] > 1:
            wn = ops.flat_norm(w.reshape(-1, w.shape[2]), q).reshape(g.shape).clamp_min(1e-12)
            pick = (g.abs() / wn).argmin(1)
            m = torch.arange(act.numel(), device=g.device)
            g, w = g[m, pick], w[m, pick]
        else:
            g, w = g[:, 0], w[:, 0]
        xk = cur[act].flatten(1)
        xo = x0f[act]
        # π: g + w·(z − x_k) = 0; from x_k: w·δ = −g, from x_orig: w·δ = −g − w·(x_orig − x_k)
        d_k = project_hyperplane_box(xk, w, -g, lo, hi, norm)
        d_o = project_hyperplane_box(xo, w, -g - (w * (xo - xk)).sum(1), lo, hi, norm)
        n_k, n_o = ops.flat_norm(d_k, norm), ops.flat_norm(d_o, norm)
        alpha = (n_k / (n_k + n_o).clamp_min(MIN_LENGTH)).clamp(0.0, alpha_max)[:, None]
        xn = ((1 - alpha) * (xk + eta * d_k) + alpha * (xo + eta * d_o)).clamp(lo, hi)
        cur[act] = xn.reshape(-1, *shape)
        iterations[rows[act]] += 1
        with torch.inference_mode():
            adv = clf(cur[act]).argmax(1) != y[act]
        adv, _, _ = record(adv)
        if bool(adv.any()):  # the paper's backward step towards the original point
            a_loc = act[adv]
            cur[a_loc] = x_orig[a_loc] + beta * (cur[a_loc] - x_orig[a_loc])


def _random_start(x: torch.Tensor, radius: torch.Tensor, norm: str, gen: torch.Generator, lo: float,
                  hi: float) -> torch.Tensor:
    """``x`` plus a random direction of norm ``radius`` (per sample), clamped to the box (FAB's restarts)."""
    if norm == "inf":
        t = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
    else:
        t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    t = t / ops.bcast(ops.flat_norm(t, norm).clamp_min(1e-12), t)
    return (x + ops.bcast(radius.to(x.dtype), x) * t).clamp(lo, hi)


def _check_common(norm, steps, restarts, eps, alpha_max, eta, beta, seed, batch_size) -> str:
    norm = check_norm(norm)
    check_iterations(steps, "steps")
    check_iterations(restarts, "restarts")
    if eps is not None:
        check_positive(eps, "eps")
    check_positive(alpha_max, "alpha_max", allow_zero=True)
    if alpha_max > 1:
        raise OptionError(f"alpha_max is a convex weight and must be in [0, 1], got {alpha_max!r} (paper: 0.1)")
    check_positive(eta, "eta")
    check_positive(beta, "beta")
    if beta >= 1:
        raise OptionError(f"beta is the backward step's factor and must be in (0, 1), got {beta!r} (paper: 0.9)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OptionError(f"seed must be an integer or None, got {seed!r}")
    check_positive(batch_size, "batch_size", integer=True)
    return norm


def _fab(p, *, norm: str, targets: torch.Tensor | None, steps: int, restarts: int, eps: float | None,
         alpha_max: float, eta: float, beta: float, seed: int | None, batch_size: int) -> Run:
    """The FAB driver over chunks of the correctly classified samples; ``targets`` ``(N, T)`` for FAB-T."""
    x, y = p.x, p.y
    lo, hi = p.clf.bounds
    dev = x.device
    best = _Best(x, norm)
    iterations = torch.zeros(p.n, dtype=torch.long, device=dev)
    gen = ops.make_generator(dev, seed) if restarts > 1 else None
    todo = (p.pred == y).nonzero().squeeze(1)
    k = p.num_classes
    all_cls = torch.arange(k, device=dev)
    rounds = [None] if targets is None else list(range(targets.shape[1]))
    eps_f = None if eps is None else float(eps)
    for first in range(0, todo.numel(), batch_size):
        chunk = todo[first:first + batch_size]
        for j in rounds:
            for r in range(restarts):
                rows = chunk if eps_f is None else chunk[best.size[chunk] > eps_f]
                if rows.numel() == 0:
                    break
                yr = y[rows]
                if j is None:
                    others = all_cls.expand(rows.numel(), k)[all_cls[None] != yr[:, None]].reshape(-1, k - 1)
                else:
                    others = targets[rows, j:j + 1]
                if r == 0:
                    start = x[rows]
                else:
                    radius = best.size[rows].clamp_max(float("inf") if eps_f is None else eps_f)
                    radius = torch.where(torch.isfinite(radius), 0.5 * radius, torch.zeros_like(radius))
                    start = _random_start(x[rows], radius, norm, gen, lo, hi)
                _fab_steps(p.clf, x[rows], yr, others, start, rows, best, iterations, norm=norm, steps=steps,
                           eps=eps_f, alpha_max=float(alpha_max), eta=float(eta), beta=float(beta))
                log.debug("fab: target round %s, restart %d: %d samples, %d with an adversarial point", j, r,
                          rows.numel(), int(torch.isfinite(best.size[rows]).sum()))
    found = torch.isfinite(best.size) if eps_f is None else best.size <= eps_f
    x_adv = torch.where(ops.bcast(found, x), best.x, x)
    return Run(p, x_adv, iterations=iterations, params={"norm": norm},
               threat=None if eps_f is None else "bounded-lp")


@attack("fab-t", threat="minimal-lp", norms=("inf", "2"), chunking="remaining")
def fab_t(model, x, y=None, *, norm="inf", steps: int = 100, restarts: int = 1, eps: float | None = None,
          alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, n_target_classes: int = 9,
          seed: int | None = None, batch_size: int = 1024) -> Run:
    """FAB-T (Croce & Hein, ICML 2020; AutoAttack's targeted FAB): the minimal L∞ or L2 perturbation, one
    target after another among the ``n_target_classes`` largest clean logits other than the true class.

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: inputs inside the model's bounds; y: labels (default: the model's predictions). Misclassified
            samples are reported as successes with a zero perturbation.
        norm: ``"inf"`` (default) or ``2``.
        steps: steps per target and restart (default 100; AutoAttack's FAB-T).
        restarts: starts per target (default 1, at ``x``; later ones random, radius ``0.5·min(best, eps)``).
        eps: optional budget: a sample counts as broken only with a perturbation of norm ``<= eps`` and then
            stops; the run is ``bounded-lp`` (robust accuracy at ``eps``). ``None``: a minimal-norm search.
        alpha_max: the largest bias towards the original point's projection (paper: 0.1).
        eta: the overshoot of each projection (paper: 1.05).
        beta: the backward step's factor once adversarial, ``x ← (1 − β) x_orig + β x`` (paper: 0.9).
        n_target_classes: targets tried (default 9, AutoAttack's); at most ``K − 1``.
        seed: randomness of the restarts' random starts (used only when ``restarts > 1``).
        batch_size: samples per batch (the active set shrinks inside each batch).

    Returns:
        an :class:`AttackResult`, verified; ``iterations`` = gradient steps per sample over targets and restarts.
    """
    norm = _check_common(norm, steps, restarts, eps, alpha_max, eta, beta, seed, batch_size)
    check_positive(n_target_classes, "n_target_classes", integer=True)
    p = prepare(model, x, y)
    if n_target_classes >= p.num_classes:
        raise OptionError(f"n_target_classes must be at most K − 1 = {p.num_classes - 1} (the classes other than "
                          f"the true one of this {p.num_classes}-class model), got {n_target_classes}")
    with torch.inference_mode():
        logits = torch.cat([p.clf(p.x[i:i + batch_size]) for i in range(0, p.n, batch_size)])
    logits = logits.clone()
    logits[torch.arange(p.n, device=p.x.device), p.y] = -float("inf")
    targets = logits.topk(n_target_classes, dim=1).indices
    return _fab(p, norm=norm, targets=targets, steps=steps, restarts=restarts, eps=eps, alpha_max=alpha_max,
                eta=eta, beta=beta, seed=seed, batch_size=batch_size)


@attack("fab", threat="minimal-lp", norms=("inf", "2"), chunking="remaining")
def fab(model, x, y=None, *, norm="inf", steps: int = 100, restarts: int = 1, eps: float | None = None,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, seed: int | None = None,
        batch_size: int = 1024) -> Run:
    """FAB (Croce & Hein, ICML 2020), untargeted: each step projects onto the closest linearised boundary over
    all classes (``K − 1`` backward passes per step), the minimal L∞ or L2 perturbation.

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: inputs inside the model's bounds; y: labels (default: the model's predictions). Misclassified
            samples are reported as successes with a zero perturbation.
        norm: ``"inf"`` (default) or ``2``.
        steps: steps per restart (default 100).
        restarts: starts (default 1, at ``x``; later ones random, radius ``0.5·min(best, eps)``).
        eps: optional budget: a sample counts as broken only with a perturbation of norm ``<= eps`` and then
            stops; the run is ``bounded-lp`` (robust accuracy at ``eps``). ``None``: a minimal-norm search.
        alpha_max: the largest bias towards the original point's projection (paper: 0.1).
        eta: the overshoot of each projection (paper: 1.05).
        beta: the backward step's factor once adversarial, ``x ← (1 − β) x_orig + β x`` (paper: 0.9).
        seed: randomness of the restarts' random starts (used only when ``restarts > 1``).
        batch_size: samples per batch (the active set shrinks inside each batch).

    Returns:
        an :class:`AttackResult`, verified; ``iterations`` = gradient steps per sample over restarts.
    """
    norm = _check_common(norm, steps, restarts, eps, alpha_max, eta, beta, seed, batch_size)
    p = prepare(model, x, y)
    return _fab(p, norm=norm, targets=None, steps=steps, restarts=restarts, eps=eps, alpha_max=alpha_max,
                eta=eta, beta=beta, seed=seed, batch_size=batch_size)
