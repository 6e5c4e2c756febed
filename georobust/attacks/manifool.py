"""ManiFool (Kanbak, Moosavi-Dezfooli & Frossard, "Geometric robustness of deep networks: analysis and
improvement", CVPR 2018): the smallest geometric transformation that fools a classifier, measured by the
geodesic distance on the image's transformation manifold.

The manifold of ``x`` is ``{warp(x, M) : M ∈ G}`` for a transformation group ``G``
(:mod:`georobust.core.transforms`: translation, rotation, rotation+translation, similarity, affine,
projective), parameterised through its Lie algebra. ManiFool walks on it, composing transformations.

Binary problem (original class ``k̂``, target class ``t``, ``g = f_k̂ − f_t > 0`` at the clean image). At the
current transformation ``M_i`` and image ``x_i = warp(x, M_i)``:

1. ``J`` — the tangent space at ``x_i``: the Jacobian ``(P × d)`` of ``u ↦ warp(x, exp(Σ u_j G_j)·M_i)`` at ``0``,
   analytic through the image gradient (``∂x_i/∂u_j = ∇I(q)·∂q/∂u_j``) or by finite differences
   (``jacobian="numerical"``, a check);
2. the gradient of ``g`` projected on the tangent space by least squares, ``ũ = argmin_u ‖J u − ∇g(x_i)‖``
   (the Riemannian gradient in the Lie-algebra coordinates);
3. the step to the linearised boundary along it, ``δ = −(1+η)·g/‖J ũ‖² · ũ`` (DeepFool's step on the manifold,
   overshoot ``η``),
   with momentum ``v_i = β·v_{i−1} + δ``, shortened if needed so that ``‖J v_i‖ <= max_step·‖x‖`` (a trust
   region: where the projected gradient nearly vanishes the linearised step would jump across the group);
4. a backtracking line search on ``λ ∈ {step, step/2, step/4, step/8}``: the largest that fools or decreases
   ``g``;
5. composition: ``M_{i+1} = exp(Σ λ v_j G_j) · M_i``.

A sample stops as soon as ``warp(x, M_i)`` is misclassified; the last step is then backed off to just past
the boundary by bisection on ``λ`` (``backoff_steps`` halvings, keeping the fooling end). Multi-class: the
binary search runs towards each of the ``candidates`` classes with the largest clean logits (other than the
clean prediction), batched together, and the fooling transformation with the smallest geodesic distance is
kept. Everything is batched over samples × candidates; finished rows leave the batch.

Reported per sample: ``size`` — the geodesic distance (:func:`georobust.core.transforms.geodesic_distance`:
the length of the image path along the straight Lie-algebra path ``t·θ``, ``t ∈ [0, 1]``, from ``x`` to the
adversarial image, divided by ``‖x‖₂``, computed as a polyline of ``segments`` pieces); ``params["theta"]``
— the Lie-algebra coordinates ``θ`` of the fooling transformation (principal matrix logarithm,
``params["parameter_names"]`` names them; ``None`` for samples not fooled); ``params["target_class"]``.
:func:`invariance_score` is the paper's invariance score over a set: the mean geodesic distance of the fooled
samples.

The default set is ``rotation-translation``: the paper measures MNIST invariance for rotation+translation and
similarity; rotation+translation is also the group of the spatial grid attack (Engstrom et al.), so the two
compare directly.
"""

from __future__ import annotations

import logging
import math

import torch

from ..checks import check_images, check_iterations, check_positive, prepare
from ..core import transforms as T
from ..engine.protocol import Run, attack
from ..errors import InputError, OptionError, unknown_name

log = logging.getLogger(__name__)

JACOBIANS = ("analytic", "numerical")
LINE_SEARCH = (1.0, 0.5, 0.25, 0.125)


def _margin(logits: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, k[:, None])[:, 0] - logits.gather(1, t[:, None])[:, 0]


def _fooled(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) != y


def _lie(name: str, u: torch.Tensor) -> torch.Tensor:
    g = T.generators(name, dtype=torch.float64, device=u.device)
    return torch.linalg.matrix_exp(torch.einsum("nd,dij->nij", u.to(torch.float64), g))


def manifool_batch(clf, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, t: torch.Tensor, *,
                   transform: str = "rotation-translation", step: float = 1.0, momentum: float = 0.5,
                   overshoot: float = 0.02, max_step: float = 0.2, max_iter: int = 100, padding: str = "zeros", jacobian: str = "analytic",
                   backoff_steps: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The binary ManiFool loop, batched, without validation (callers validate; see :func:`manifool`).

    Rows ``x`` ``(R, C, H, W)`` are pushed from class ``k`` towards class ``t`` until the prediction differs
    from ``y``. Returns ``(M (R, 3, 3) float64, fooled (R,) bool, iterations (R,) int64)``: ``M`` is the
    backed-off fooling transformation of fooled rows, the last one reached for the others.
    """
    r = x.shape[0]
    dev = x.device
    M = torch.eye(3, dtype=torch.float64, device=dev).repeat(r, 1, 1)
    v = torch.zeros(r, T.TRANSFORM_SETS[transform], dtype=torch.float64, device=dev)
    fooled = torch.zeros(r, dtype=torch.bool, device=dev)
    iters = torch.zeros(r, dtype=torch.long, device=dev)
    prev = M.clone()              # the transformation before the last step (for the back-off)
    last = torch.zeros_like(v)    # the last step taken, λ·v
    active = torch.ones(r, dtype=torch.bool, device=dev)
    with torch.no_grad():
        fooled |= _fooled(clf(x), y)
    active &= ~fooled
    for _ in range(max_iter):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        xa, Ma, ka, ta, ya = x[idx], M[idx], k[idx], t[idx], y[idx]
        with torch.enable_grad():
            xi = T.warp(xa, Ma, padding=padding).detach().requires_grad_(True)
            logits = clf(xi)
            g = _margin(logits, ka, ta)
            (grad,) = torch.autograd.grad(g.sum(), xi)
        g = g.detach().to(torch.float64)
        J = T.tangent(xa, transform, Ma, padding=padding, method=jacobian).flatten(2).to(torch.float64)  # (A,d,P)
        JJ = J @ J.transpose(1, 2)                                                   # (A, d, d)
        Jg = J @ grad.flatten(1).to(torch.float64)[:, :, None]                         # (A, d, 1)
        ridge = 1e-10 * JJ.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-30)[:, None, None]
        eye = torch.eye(JJ.shape[1], dtype=JJ.dtype, device=dev)
        ut = torch.linalg.solve(JJ + ridge * eye, Jg)[:, :, 0]                         # projected gradient
        slope = (ut[:, :, None] * Jg).sum((1, 2)).clamp_min(1e-30)                     # ‖J ũ‖² = ũᵀ J ∇g
        delta = -((1 + overshoot) * g / slope)[:, None] * ut
        va = momentum * v[idx] + delta
        # trust region: one step moves the image by at most max_step·‖x‖ to first order, ‖J v‖ <= max_step·‖x‖
        # (where the projected gradient nearly vanishes, e.g. a rotation of a blob at the identity, the
        # linearised step is huge and would jump around the group instead of walking along it)
        jv = torch.einsum("nd,ndp->np", va, J).norm(dim=1)
        cap = max_step * xa.flatten(1).to(torch.float64).norm(dim=1)
        va = va * torch.clamp(cap / jv.clamp_min(1e-30), max=1.0)[:, None]
        # backtracking line search: the largest λ that fools or decreases the margin
        chosen = torch.full((idx.numel(),), LINE_SEARCH[-1] * step, dtype=torch.float64, device=dev)
        decided = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
        for frac in LINE_SEARCH:
            lam = frac * step
            with torch.no_grad():
                lg = clf(T.warp(xa, _lie(transform, lam * va) @ Ma, padding=padding))
            ok = (_fooled(lg, ya) | (_margin(lg, ka, ta).to(torch.float64) < g)) & ~decided
            chosen[ok] = lam
            decided |= ok
            if bool(decided.all()):
                break
        s = chosen[:, None] * va
        newM = _lie(transform, s) @ Ma
        prev[idx], last[idx], v[idx], M[idx] = Ma, s, va, newM
        iters[idx] += 1
        with torch.no_grad():
            now = _fooled(clf(T.warp(xa, newM, padding=padding)), ya)
        fooled[idx] = now
        active[idx] = ~now
    # back-off: bisection on the fraction of the last step, keeping the fooling end
    idx = (fooled & (iters > 0)).nonzero().flatten()
    if idx.numel():
        xa, ya, Pa, sa = x[idx], y[idx], prev[idx], last[idx]
        lo = torch.zeros(idx.numel(), dtype=torch.float64, device=dev)
        hi = torch.ones_like(lo)
        for _ in range(backoff_steps):
            mid = (lo + hi) / 2
            with torch.no_grad():
                f = _fooled(clf(T.warp(xa, _lie(transform, mid[:, None] * sa) @ Pa, padding=padding)), ya)
            hi = torch.where(f, mid, hi)
            lo = torch.where(f, lo, mid)
        M[idx] = _lie(transform, hi[:, None] * sa) @ Pa
    return M, fooled, iters


@attack("manifool", threat="spatial", chunking="position", size_unit="geodesic distance", size_options=("transform",),
        summary="ManiFool: minimal geometric transformation (geodesic distance), Kanbak et al. 2018")
def manifool(model, x, y=None, *, transform: str = "rotation-translation", candidates: int = 3,
             step: float = 1.0, momentum: float = 0.5, overshoot: float = 0.02, max_step: float = 0.2,
             max_iter: int = 100,
             padding: str = "zeros",
             jacobian: str = "analytic", backoff_steps: int = 10, segments: int = 100,
             batch_size: int = 256) -> Run:
    """ManiFool (Kanbak, Moosavi-Dezfooli & Frossard, CVPR 2018): the smallest fooling transformation in a
    transformation group, by projected-gradient steps on the image's transformation manifold.

    Args:
        transform: the transformation set (``translation``, ``rotation``, ``rotation-translation``,
            ``similarity``, ``affine``, ``projective``).
        candidates: how many target classes are tried (the largest clean logits other than the prediction);
            the smallest fooling transformation is kept.
        step: the initial step of the backtracking line search (1 = the full linearised step to the boundary).
        momentum: momentum ``β`` of the steps in the Lie algebra (0 = none).
        overshoot: each linearised step aims ``1 + overshoot`` times as far (DeepFool's ``η``), so that a
            step crosses the boundary instead of converging to it; the back-off removes the excess.
        max_step: the largest step, as a first-order geodesic length relative to ``‖x‖`` (``‖J v‖ / ‖x‖``): a
            trust region, so that the walk follows the manifold and the final back-off is precise.
        max_iter: steps per target class before giving up.
        padding: what the transformed image reads outside the frame: ``zeros`` (black), ``border``,
            ``reflection``.
        jacobian: the tangent space, ``analytic`` (image gradients, chain rule) or ``numerical`` (finite
            differences; slower, a check).
        backoff_steps: bisection halvings of the final back-off to the boundary.
        segments: pieces of the polyline that measures the geodesic distance.
        batch_size: rows (samples × candidates) per batch.
    """
    check_images(x, "ManiFool", "transforms images")
    T.check_set(transform)
    check_positive(candidates, "candidates", integer=True)
    check_positive(step, "step")
    check_positive(momentum, "momentum", allow_zero=True)
    if momentum >= 1:
        raise OptionError(f"momentum must be in [0, 1), got {momentum!r}")
    check_positive(overshoot, "overshoot", allow_zero=True)
    check_positive(max_step, "max_step")
    check_iterations(max_iter, "max_iter")
    if padding not in T.PADDINGS:
        raise unknown_name("padding", str(padding), T.PADDINGS)
    if jacobian not in JACOBIANS:
        raise unknown_name("Jacobian method", str(jacobian), JACOBIANS)
    check_positive(backoff_steps, "backoff_steps", allow_zero=True, integer=True)
    check_positive(segments, "segments", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    p = prepare(model, x, y)
    if p.num_classes < 2:
        raise OptionError("ManiFool needs a classifier with at least 2 classes")
    clf, xs, n, dev = p.clf, p.x, p.n, p.x.device
    kc = min(candidates, p.num_classes - 1)
    with torch.no_grad():
        logits0 = clf(xs)
    masked = logits0.scatter(1, p.pred[:, None], -math.inf)
    targets = masked.topk(kc, dim=1).indices                                      # (N, kc)
    rows_x = xs.repeat_interleave(kc, 0)
    rows_y = p.y.repeat_interleave(kc, 0)
    rows_k = p.pred.repeat_interleave(kc, 0)
    rows_t = targets.flatten()
    R = rows_x.shape[0]
    Ms = torch.empty(R, 3, 3, dtype=torch.float64, device=dev)
    fooled = torch.empty(R, dtype=torch.bool, device=dev)
    iters = torch.empty(R, dtype=torch.long, device=dev)
    for s in range(0, R, batch_size):
        sl = slice(s, s + batch_size)
        Ms[sl], fooled[sl], iters[sl] = manifool_batch(
            clf, rows_x[sl], rows_y[sl], rows_k[sl], rows_t[sl], transform=transform, step=step,
            momentum=momentum, overshoot=overshoot, max_step=max_step, max_iter=max_iter, padding=padding, jacobian=jacobian, backoff_steps=backoff_steps)
    theta = torch.zeros(R, T.TRANSFORM_SETS[transform], dtype=torch.float64, device=dev)
    dist = torch.full((R,), math.inf, dtype=torch.float64, device=dev)
    dist[fooled & (iters == 0)] = 0.0                      # misclassified clean input: the identity
    fi = (fooled & (iters > 0)).nonzero().flatten()
    if fi.numel():
        theta[fi] = T.log_params(transform, Ms[fi])
        for s in range(0, fi.numel(), batch_size):
            b = fi[s:s + batch_size]
            dist[b] = T.geodesic_distance(rows_x[b].to(torch.float64), transform, theta[b], padding=padding,
                                          segments=segments)
    dist = dist.view(n, kc)
    best = dist.argmin(1)
    rows = torch.arange(n, device=dev) * kc + best
    ok = fooled[rows]
    x_adv = xs.clone()
    if bool(ok.any()):
        r_ok = rows[ok]
        x_adv[ok] = T.warp(rows_x[r_ok], Ms[r_ok], padding=padding)
    size = torch.where(ok, dist.view(-1)[rows], torch.full_like(dist.view(-1)[rows], math.inf))
    theta_list = [[float(v) for v in theta[r]] if bool(f) else None for r, f in zip(rows.tolist(), ok.tolist())]
    per_sample_iters = iters.view(n, kc).sum(1)
    log.debug("manifool: %d/%d fooled, mean geodesic distance %.4f", int(ok.sum()), n,
              float(size[ok].mean()) if bool(ok.any()) else float("nan"))
    params = {"transform": transform, "parameter_names": list(T.parameter_names(transform)),
              "theta": theta_list, "target_class": [int(t) for t in rows_t[rows].tolist()],
              "candidates": kc}
    return Run(p, x_adv, iterations=per_sample_iters, size=size, params=params)


def invariance_score(result) -> float:
    """The invariance score of Kanbak et al. over a set: the mean geodesic distance of the samples that a
    ManiFool ``result`` fooled (verified success) among those the model classified correctly (a misclassified
    clean input is "fooled" by the identity and would add a zero); ``nan`` when there is none."""
    if getattr(result, "size", None) is None or getattr(result, "success", None) is None:
        raise InputError("invariance_score takes a ManiFool result (an AttackResult with per-sample size)")
    ok = result.success.bool() & (result.label_clean == result.y)
    if not bool(ok.any()):
        return float("nan")
    return float(result.size.double()[ok].mean())
