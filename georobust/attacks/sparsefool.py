"""SparseFool (Modas, Moosavi-Dezfooli & Frossard, "SparseFool: a few pixels make a big difference",
CVPR 2019): sparse adversarial perturbations from the low curvature of the decision boundary.

The L0 problem is relaxed to ``min ‖r‖₁`` subject to crossing the boundary and the box ``l ≤ x + r ≤ u``
(the model's bounds intersected with ``[x − δ, x + δ]`` when ``delta`` is given). Near ``x`` the boundary
is nearly flat, so it is replaced by its tangent hyperplane at a boundary point, and the L1 problem under a
linear constraint has a sparse, closed-form greedy solution. From ``x_0 = x``:

1. DeepFool (L2) from ``x_i`` gives ``r_i`` and the boundary point ``x_i + r_i``; the boundary normal ``w``
   is ``∇(f_k − f_y)`` there (``k`` the class reached). The hyperplane is taken through
   ``x_B = x_i + λ·r_i`` (``λ ≥ 1``, default 3: larger is faster and less sparse; paper Sec. 4.2).
2. The linear solver (paper Alg. 2) finds ``min ‖x' − x_i‖₁`` s.t. ``wᵀ(x' − x_B) = 0``, ``l ≤ x' ≤ u`` by
   greedy coordinate steps on the largest ``|w_j|``, each coordinate used once and clipped to the box:
   every coordinate but the last moves to its bound, the last exactly onto the plane (this greedy order
   is the L1-optimal vertex — a fractional knapsack). It is computed for the whole batch at once by a
   sort and a cumulative sum, with no loop over coordinates.
3. Stop when ``x + (1+ε)(x_{i+1} − x)`` (ε = 0.02, clipped to the box) is misclassified, else repeat
   (``max_iter`` 20).

Batched over samples with per-sample stopping. Sparsity is reported by :func:`changed_pixels` (pixel
*positions* changed in any channel, over ``H·W``) beside the L0/L1 norms of the result.
"""

from __future__ import annotations

import logging

import torch

from ..checks import check_candidates, check_norm, check_positive, prepare
from ..core.ops import bcast
from ..engine.protocol import Run, attack
from ..errors import InputError, OptionError
from .deepfool import deepfool_batch

log = logging.getLogger(__name__)


def box_bounds(x: torch.Tensor, bounds: tuple[float, float], delta: float | None):
    """The box ``[l, u]``: the model's ``bounds`` intersected with ``[x − δ, x + δ]`` (``delta=None``: no δ)."""
    lo, hi = bounds
    if delta is None:
        return torch.full_like(x, lo), torch.full_like(x, hi)
    return (x - delta).clamp_min(lo), (x + delta).clamp_max(hi)


def linear_solver(x: torch.Tensor, w: torch.Tensor, x_b: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched greedy solution of ``min ‖x' − x‖₁`` s.t. ``wᵀ(x' − x_B) = 0`` and ``lb ≤ x' ≤ ub`` (per sample).

    Coordinates are taken in decreasing ``|w_j|``; each moves toward the plane as far as its box allows
    (to ``ub_j`` or ``lb_j``), the last one only as far as the plane. This is the optimum of the linear
    program (a fractional knapsack: ``|w_j|`` is the progress per unit of L1). Returns ``(x', reached)``;
    where the box cannot reach the plane, every useful coordinate sits at its bound and ``reached`` is False.
    """
    n = x.shape[0]
    xf, wf = x.flatten(1), w.flatten(1)
    lbf, ubf = lb.flatten(1), ub.flatten(1)
    gap = ((x_b.flatten(1) - xf) * wf).sum(1)  # wᵀ(x_B − x): the progress needed, signed
    s = gap.sign()
    direction = wf.sign() * s[:, None]  # move coordinate j this way to make progress
    room = torch.where(direction > 0, ubf - xf, xf - lbf).clamp_min(0)  # how far it may move
    gain = wf.abs() * room  # progress if moved to its bound
    order = wf.abs().argsort(dim=1, descending=True)
    g_sorted = gain.gather(1, order)
    csum = g_sorted.cumsum(1)
    need = gap.abs()
    full = (csum <= need[:, None])  # coordinates that move all the way to their bound
    before = csum - g_sorted  # progress made before coordinate (in order)
    # the first coordinate that is not moved fully: it covers the rest, if it can
    k = full.sum(1).clamp_max(xf.shape[1] - 1)
    rows = torch.arange(n, device=x.device)
    rest = (need - before[rows, k]).clamp_min(0)
    j = order[rows, k]
    wj = wf[rows, j].abs().clamp_min(1e-30)
    step_j = torch.minimum(rest / wj, room[rows, j])
    move = torch.zeros_like(xf)
    move.scatter_(1, order, full.to(xf.dtype) * room.gather(1, order))
    partial = ~full[rows, k]
    move[rows[partial], j[partial]] = step_j[partial]
    out = xf + direction * move
    out = torch.minimum(torch.maximum(out, lbf), ubf)
    reached = csum[:, -1] >= need * (1 - 1e-6)
    return out.view_as(x), reached


def changed_pixels(x: torch.Tensor, x_adv: torch.Tensor, *, tol: float = 0.0) -> torch.Tensor:
    """Per sample, the fraction of pixel positions changed in any channel: over ``H·W`` for ``(N, C, H, W)``,
    over ``D`` for ``(N, D)``."""
    r = (x_adv - x).abs() > tol
    if r.ndim >= 4:
        r = r.any(1)
    return r.flatten(1).double().mean(1)


def _normal(model, xq: torch.Tensor, k: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∇(f_k − f_y)`` at ``xq``, normalised, batched."""
    with torch.enable_grad():
        xr = xq.detach().requires_grad_(True)
        z = model(xr)
        diff = z.gather(1, k[:, None]) - z.gather(1, y[:, None])
        (g,) = torch.autograd.grad(diff.sum(), xr)
    return g / bcast(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)


@attack("sparsefool", threat="minimal-lp", norms=("1", "0"), chunking="position")
def sparsefool(model, x, y=None, *, lambda_: float = 3.0, epsilon: float = 0.02, max_iter: int = 20,
               delta: float | None = None, overshoot: float = 0.02, deepfool_iter: int = 50,
               candidates: int = 10, norm="1", batch_size: int = 1024) -> Run:
    """SparseFool (Modas, Moosavi-Dezfooli & Frossard, CVPR 2019): sparse (few-pixel) minimal perturbations.

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode); inputs may
            have any number of channels.
        x: inputs inside the model's bounds; y: labels (default: the model's predictions).
        lambda_: ``λ``, the hyperplane is taken through ``x_i + λ·r_DeepFool`` (paper: 1–3, default 3).
        epsilon: ``ε``, the final example is ``x + (1+ε)(x_i − x)`` (paper: 0.02).
        max_iter: outer iterations (paper: 20).
        delta: optional per-coordinate limit ``|r_j| ≤ δ`` (intersected with the model's bounds).
        overshoot, deepfool_iter, candidates: of the inner DeepFool (0.02, 50, 10).
        norm: the norm this minimal attack is measured in by the evaluation suite (``1`` or ``0``; the
            algorithm is the same).
    """
    norm = check_norm(norm, ("1", "0"))
    check_positive(lambda_, "lambda_")
    if lambda_ < 1:
        raise OptionError(f"lambda_ must be >= 1 (the hyperplane is taken beyond the boundary), got {lambda_}")
    check_positive(epsilon, "epsilon", allow_zero=True)
    check_positive(max_iter, "max_iter", integer=True)
    check_positive(overshoot, "overshoot", allow_zero=True)
    check_positive(deepfool_iter, "deepfool_iter", integer=True)
    check_candidates(candidates)
    check_positive(batch_size, "batch_size", integer=True)
    if delta is not None:
        check_positive(delta, "delta")
    p = prepare(model, x, y)
    clf, x, y, k_cls, pred = p.clf, p.x, p.y, p.num_classes, p.pred
    if x.ndim == 5:
        raise InputError("sparsefool takes (N, D) or (N, C, H, W) inputs")
    x_adv = x.clone()
    iters = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for b in range(0, x.shape[0], batch_size):
        sl = slice(b, b + batch_size)
        xa, it = _sparsefool_batch(clf, x[sl], y[sl], pred[sl] == y[sl], lambda_=float(lambda_),
                                   epsilon=float(epsilon), max_iter=max_iter, delta=delta,
                                   overshoot=float(overshoot), deepfool_iter=deepfool_iter,
                                   candidates=min(candidates, k_cls))
        x_adv[sl], iters[sl] = xa, it
    return Run(p, x_adv, iterations=iters, params={"norm": norm, "candidates": min(candidates, k_cls)})


def _sparsefool_batch(clf, x, y, todo, *, lambda_, epsilon, max_iter, delta, overshoot, deepfool_iter,
                      candidates):
    n = x.shape[0]
    lb, ub = box_bounds(x, clf.bounds, delta)
    x_i = x.clone()
    x_adv = x.clone()
    iters = torch.zeros(n, dtype=torch.long, device=x.device)
    idx = todo.nonzero().squeeze(1)
    for _ in range(max_iter):
        if idx.numel() == 0:
            break
        xs, ys = x_i[idx], y[idx]
        with torch.inference_mode():
            logits = clf(xs)
        # candidate classes at x_i, the attacked class y first (x_i itself may already sit on the boundary)
        ranked = logits.scatter(1, ys[:, None], float("inf")).topk(candidates, dim=1).indices
        out = deepfool_batch(clf, xs, norm="2", overshoot=overshoot, max_iter=deepfool_iter, classes=ranked,
                             clip=False)
        k = torch.where(out.converged, out.label, out.boundary_class)
        w = _normal(clf, xs + out.r_tot, k, ys)
        x_b = xs + lambda_ * out.r_tot
        x_new, _ = linear_solver(xs, w, x_b, lb[idx], ub[idx])
        x_i[idx] = x_new
        x0 = x[idx]
        cand = torch.minimum(torch.maximum(x0 + (1 + epsilon) * (x_new - x0), lb[idx]), ub[idx])
        x_adv[idx] = cand
        iters[idx] += 1
        with torch.inference_mode():
            fooled = clf(cand).argmax(1) != ys
        idx = idx[~fooled]
    return x_adv, iters
