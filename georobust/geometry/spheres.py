"""Adversarial spheres (Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg & Goodfellow, "Adversarial spheres",
ICLR 2018 workshop; arXiv:1801.02774): small test error implies errors close to most points.

Data: the ``spheres`` data set (:mod:`georobust.data.synthetic`), two concentric spheres in ``R^d`` mapped into the
unit box: centre ``0.5·1``, radii ``r_inner/(2 r_outer)`` (class 0) and ``0.5`` (class 1) — :func:`sphere_radii`.

* :class:`QuadraticNet` — the paper's quadratic network: one hidden layer ``h = (W(x − c))²`` (element-wise
  square, no bias), output ``g(x) = αᵀh + b``; class 1 (outer) when ``g > 0``. Its decision function is exactly
  the quadratic form ``g(x) = (x − c)ᵀ A (x − c) + b`` with ``A = Wᵀ diag(α) W`` (:meth:`QuadraticNet.quadratic_form`).
* :func:`quadric_distance` — the *exact* L2 distance from ``x`` to the quadric ``{g = 0}`` (the nearest point of the
  decision boundary of the quadratic network): minimise ``‖p − u‖²`` subject to ``pᵀAp + b = 0`` (``u = x − c``).
  The stationary points are ``p(λ) = (I + λA)⁻¹ u``; the global minimiser is the one with ``I + λA ⪰ 0`` (one
  quadratic constraint: the S-lemma gives strong duality, as for trust-region problems, Moré & Sorensen 1983), and
  on that interval ``φ(λ) = Σᵢ aᵢ zᵢ² / (1 + λaᵢ)² + b`` (``z = Qᵀu`` in the eigenbasis of ``A``) is strictly
  decreasing, so its root is unique and found by bisection in float64. (The "hard case", ``zᵢ = 0`` for an
  extreme eigenvalue, has probability zero; it is reported as NaN when the root is not bracketed.)
* :func:`monte_carlo_error` — the test error on each sphere from fresh uniform samples.
* :func:`nearest_errors` — the distance to the nearest *verified* error found by DeepFool and by PGD (a grid of
  L2 radii), each candidate re-run through the model; the reported distance is the minimum over verified
  candidates (zero for a misclassified input), so it is an upper bound on the true distance.
* The isoperimetric bound (Gilmer et al., Theorem 5.1, from Lévy's isoperimetric inequality on the sphere): among
  all subsets ``E`` of the sphere with normalised measure ``μ``, a spherical cap has the smallest ε-neighbourhood
  for every ε, so for a uniform point ``x`` on the sphere of radius ``r`` in ``R^d``

      P(dist(x, E) > ε) ≤ P(dist(x, C_μ) > ε)   for all ε,   C_μ = {x : x₁ ≥ r·t_μ},  P(x₁/r ≥ t_μ) = μ,

  with ``dist`` the chord (Euclidean) distance, a monotone function of the geodesic one. Hence the mean and the
  median distance to the errors on the sphere are at most those to the cap: :func:`cap_mean_distance` (exact,
  by quadrature over ``x₁/r``, whose law is ``2·Beta((d−1)/2, (d−1)/2) − 1``) and :func:`cap_median_distance`
  (``2r·sin(arcsin(t_μ)/2)``, the chord from the cap's rim to the equator, for ``μ < ½``). Gilmer et al. state it
  asymptotically: ``d(E) ≲ r·Φ⁻¹(1 − μ)/√d`` (:func:`gilmer_bound`), since ``t_μ ≈ Φ⁻¹(1 − μ)/√d`` for large
  ``d``. The nearest error in ``R^d`` (what attacks find) is at most the nearest error on the sphere, so a model
  whose measured distances exceed the bound has errors the attacks did not find.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attacks.deepfool import deepfool_batch
from ..checks import check_positive, prepare
from ..engine.pgd import WorstCase, pgd_kernel
from ..errors import InputError, OptionError
from ..results import Saveable
from ._report import Report

log = logging.getLogger(__name__)

__all__ = ["QuadraticNet", "sphere_radii", "quadric_distance", "monte_carlo_error", "quadratic_error", "nearest_errors",
           "NearestErrors",
           "cap_threshold", "cap_mean_distance", "cap_median_distance", "gilmer_bound"]


def sphere_radii(r_inner: float = 1.0, r_outer: float = 1.3) -> tuple[float, float]:
    """The radii of the ``spheres`` data set's two spheres in the toolkit's unit-box coordinates."""
    if not 0 < r_inner < r_outer:
        raise OptionError(f"need 0 < r_inner < r_outer, got {r_inner}, {r_outer}")
    return r_inner / (2 * r_outer), 0.5


class QuadraticNet(nn.Module):
    """Gilmer et al.'s quadratic network on ``R^dim``: ``g(x) = Σⱼ αⱼ (Wⱼ·(x − c))² + b``, logits ``(−g/2, g/2)``.

    ``hidden`` units (default ``dim``); ``W`` starts Gaussian with variance ``1/hidden`` (so ``‖W u‖ ≈ ‖u‖``),
    ``α = 1``, and ``b = −threshold²`` (default 0): with ``threshold`` between the two radii the initial boundary
    is a sphere between the classes.
    """

    def __init__(self, dim: int, hidden: int | None = None, *, centre: float = 0.5, threshold: float = 0.0,
                 seed: int = 0):
        super().__init__()
        check_positive(dim, "dim", integer=True)
        hidden = dim if hidden is None else hidden
        check_positive(hidden, "hidden", integer=True)
        g = torch.Generator().manual_seed(seed)
        self.dim, self.centre = int(dim), float(centre)
        self.W = nn.Parameter(torch.randn(hidden, dim, generator=g) / math.sqrt(hidden))
        self.alpha = nn.Parameter(torch.ones(hidden))
        self.b = nn.Parameter(torch.tensor(-float(threshold) ** 2))

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """``g(x)`` per sample."""
        u = x.flatten(1) - self.centre
        return ((u @ self.W.T) ** 2) @ self.alpha + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.decision(x)
        return torch.stack([-0.5 * g, 0.5 * g], 1)

    def quadratic_form(self) -> tuple[torch.Tensor, float, float]:
        """``(A, b, c)`` in float64 with ``g(x) = (x − c·1)ᵀ A (x − c·1) + b`` exactly (``A = Wᵀ diag(α) W``)."""
        W, a = self.W.detach().double(), self.alpha.detach().double()
        return W.T @ (a[:, None] * W), float(self.b.detach()), self.centre


def quadric_distance(A: torch.Tensor, b: float, centre: float | torch.Tensor, x: torch.Tensor, *,
                     iters: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact L2 distance from each row of ``x`` to ``{p : (p − c)ᵀA(p − c) + b = 0}`` and the nearest points.

    Returns ``(distance (N,), point (N, d))`` in float64; ``inf`` where the quadric does not exist on the far side
    (``φ`` never changes sign, e.g. ``A ≻ 0`` with ``b > 0``), NaN in the (measure-zero) hard case. See the module
    docstring for the method.
    """
    A = torch.as_tensor(A).double()
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise InputError(f"A must be a square matrix, got shape {tuple(A.shape)}")
    xf = x.flatten(1).double().to(A.device)
    if xf.shape[1] != A.shape[0]:
        raise InputError(f"x has {xf.shape[1]} features, A is {A.shape[0]}x{A.shape[0]}")
    A = 0.5 * (A + A.T)
    lam_a, Q = torch.linalg.eigh(A)
    u = xf - torch.as_tensor(centre, dtype=torch.float64, device=A.device)
    z = u @ Q
    z2 = z ** 2
    amax, amin = float(lam_a.max()), float(lam_a.min())

    def phi(lam: torch.Tensor) -> torch.Tensor:
        return (lam_a * z2 / (1 + lam[:, None] * lam_a) ** 2).sum(1) + b

    n = xf.shape[0]
    g0 = phi(torch.zeros(n, dtype=torch.float64, device=A.device))
    # the interval where I + λA ≻ 0
    lo_edge = -1.0 / amax if amax > 0 else -math.inf
    hi_edge = -1.0 / amin if amin < 0 else math.inf
    # g0 < 0: the root is at λ < 0 (φ decreasing, +∞ at a finite left edge); g0 > 0: at λ > 0
    neg, pos = g0 < 0, g0 > 0
    lo = torch.zeros_like(g0)
    hi = torch.zeros_like(g0)
    for mask, side, edge, sign in ((neg, lo, lo_edge, -1.0), (pos, hi, hi_edge, 1.0)):
        if math.isfinite(edge):
            side[mask] = edge * (1 - 1e-12)  # just inside the interval where I + λA ≻ 0
            continue
        side[mask] = sign  # an infinite end: expand until φ changes sign (or give up: no boundary there)
        for _ in range(1100):
            v = phi(side)
            need = mask & ((v < 0) if sign < 0 else (v > 0))
            if not bool(need.any()):
                break
            side[need] *= 2
    bracketed = (phi(lo) >= 0) & (phi(hi) <= 0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        right = phi(mid) > 0  # φ decreasing: the root is to the right
        lo = torch.where(right, mid, lo)
        hi = torch.where(right, hi, mid)
    lam = 0.5 * (lo + hi)
    p_eig = z / (1 + lam[:, None] * lam_a)
    point = p_eig @ Q.T + torch.as_tensor(centre, dtype=torch.float64, device=A.device)
    dist = (p_eig - z).norm(dim=1)
    dist = torch.where(g0 == 0, torch.zeros_like(dist), dist)
    # not bracketed: no boundary on that side (an infinite end) or the hard case (a finite edge)
    infinite_end = torch.where(neg, torch.tensor(not math.isfinite(lo_edge)), torch.tensor(not math.isfinite(hi_edge)))
    bad = ~bracketed & (g0 != 0)
    dist = torch.where(bad & infinite_end.to(dist.device), torch.full_like(dist, math.inf), dist)
    dist = torch.where(bad & ~infinite_end.to(dist.device), torch.full_like(dist, math.nan), dist)
    return dist, point


def monte_carlo_error(model: nn.Module, dim: int, *, r_inner: float = 1.0, r_outer: float = 1.3, n: int = 100_000,
                      seed: int = 12345, batch_size: int = 8192) -> dict:
    """Test error on each sphere from ``n`` fresh uniform samples (half per sphere, seeded): ``{"inner", "outer",
    "total", "n", "errors_inner", "errors_outer"}``. ``model`` returns logits; class 1 is the outer sphere."""
    check_positive(n, "n", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    r_in, r_out = sphere_radii(r_inner, r_outer)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    errs = [0, 0]
    counts = [0, 0]
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            m = min(batch_size, n - i)
            z = torch.randn(m, dim, generator=g, dtype=torch.float64)
            z = z / z.norm(dim=1, keepdim=True)
            y = torch.arange(i, i + m) % 2
            x = (0.5 + z * torch.where(y == 0, r_in, r_out).double()[:, None]).float().to(dev)
            pred = model(x).argmax(1).cpu()
            for k in (0, 1):
                sel = y == k
                errs[k] += int((pred[sel] != k).sum())
                counts[k] += int(sel.sum())
    return {"inner": errs[0] / counts[0], "outer": errs[1] / counts[1], "total": (errs[0] + errs[1]) / n, "n": n,
            "errors_inner": errs[0], "errors_outer": errs[1]}


def quadratic_error(A: torch.Tensor, b: float, *, r_inner: float = 1.0, r_outer: float = 1.3, n: int = 10_000_000,
                    seed: int = 12345, batch_size: int | None = None) -> dict:
    """The error of the quadratic network ``g(x) = (x − c)ᵀA(x − c) + b`` on each sphere, by Monte Carlo in the
    eigenbasis of ``A`` (the paper's device for tiny error rates): on the sphere of radius ``r``,
    ``g = r²·Σᵢ λᵢ wᵢ² / Σᵢ wᵢ² + b`` with ``w ~ N(0, I)``, ``d`` operations per sample instead of ``d²``, so ``n`` of
    10⁷ resolves error rates near 10⁻⁶. Class 0 (inner) errs where ``g > 0``, class 1 (outer) where ``g ≤ 0``
    (the network's arg-max: a tie goes to class 0). Returns ``{"inner", "outer", "n", "errors_inner",
    "errors_outer"}`` with ``n`` samples per sphere. ``batch_size`` (default: 2²² / d rows, 32 MiB per batch
    tensor) bounds the memory."""
    check_positive(n, "n", integer=True)
    A = torch.as_tensor(A).double()
    batch_size = max(1, (1 << 22) // max(1, A.shape[0])) if batch_size is None else batch_size
    check_positive(batch_size, "batch_size", integer=True)
    lam = torch.linalg.eigvalsh(0.5 * (A + A.T))
    radii = sphere_radii(r_inner, r_outer)
    g = torch.Generator(device=lam.device).manual_seed(seed)
    errs = [0, 0]
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        w2 = torch.randn(m, lam.numel(), generator=g, dtype=torch.float64, device=lam.device) ** 2
        q = (w2 @ lam) / w2.sum(1)
        for k, r in enumerate(radii):
            val = r * r * q + b
            errs[k] += int((val > 0).sum()) if k == 0 else int((val <= 0).sum())
    return {"inner": errs[0] / n, "outer": errs[1] / n, "n": n, "errors_inner": errs[0], "errors_outer": errs[1]}


@dataclass
class NearestErrors(Saveable, Report):
    """Distances to the nearest verified error per sample: ``distances (N, M)`` for ``methods`` (``inf`` where the
    method found none), ``minimum (N,)`` their minimum (0 for misclassified inputs), ``correct (N,)``, and
    ``exact (N,)`` the exact distance to the boundary when known (the quadratic network), else ``None``."""

    methods: list[str]
    distances: torch.Tensor
    minimum: torch.Tensor
    correct: torch.Tensor
    y: torch.Tensor
    exact: torch.Tensor | None = None
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        out = {"n": int(self.minimum.numel()), "correct": int(self.correct.sum())}
        fin = torch.isfinite(self.minimum)
        out["found"] = int(fin.sum())
        out["mean_min"] = float(self.minimum[fin].mean()) if bool(fin.any()) else None
        out["median_min"] = float(self.minimum[fin].median()) if bool(fin.any()) else None
        for j, m in enumerate(self.methods):
            d = self.distances[:, j]
            f = torch.isfinite(d)
            out[f"mean_{m}"] = float(d[f].mean()) if bool(f.any()) else None
        if self.exact is not None:
            f = torch.isfinite(self.exact)
            out["mean_exact"] = float(self.exact[f].mean()) if bool(f.any()) else None
        return out


def nearest_errors(model, x, y, *, methods: tuple[str, ...] = ("deepfool", "pgd"), pgd_eps=None,
                   pgd_steps: int = 20, deepfool_iter: int = 50, quadratic: tuple | None = None) -> NearestErrors:
    """The L2 distance from each input to the nearest *verified* error found by ``methods`` (``deepfool``:
    DeepFool, box-clipped, overshoot 0.02; ``pgd``: L2 PGD without random start at each radius of ``pgd_eps``
    (default: 16 radii, geometric from 0.002 to 0.5), the smallest verified one kept). Each candidate ``x'`` is
    re-run through the model and counts only when its label differs from ``y``; its distance is ``‖x' − x‖₂``. A
    misclassified input has distance 0. ``quadratic=(A, b, c)`` adds the exact distance to the quadric
    (:func:`quadric_distance`), which is never larger than a verified candidate's."""
    known = ("deepfool", "pgd")
    for m in methods:
        if m not in known:
            raise OptionError(f"unknown method {m!r} of nearest_errors; choose from {', '.join(known)}")
    if not methods:
        raise OptionError("nearest_errors needs at least one method (deepfool, pgd)")
    check_positive(pgd_steps, "pgd_steps", integer=True)
    check_positive(deepfool_iter, "deepfool_iter", integer=True)
    if pgd_eps is None:
        pgd_eps = torch.logspace(math.log10(0.002), math.log10(0.5), 16).tolist()
    pgd_eps = sorted(float(e) for e in pgd_eps)
    if not pgd_eps or pgd_eps[0] <= 0:
        raise OptionError(f"pgd_eps must be positive radii, got {pgd_eps}")
    p = prepare(model, x, y, labels_required=True)
    clf, x, y = p.clf, p.x, p.y
    correct = p.pred == y
    n, dev = p.n, x.device
    dists = torch.full((n, len(methods)), math.inf, dtype=torch.float64, device=dev)

    def offer(j: int, xa: torch.Tensor, mask: torch.Tensor) -> None:
        with torch.inference_mode():
            lab = clf(xa).argmax(1)
        ok = mask & (lab != y)
        d = (xa - x).flatten(1).double().norm(dim=1)
        dists[:, j] = torch.where(ok, torch.minimum(dists[:, j], d), dists[:, j])

    for j, m in enumerate(methods):
        if m == "deepfool":
            out = deepfool_batch(clf, x, max_iter=deepfool_iter, candidates=10, active=correct)
            offer(j, out.x_adv, correct)
        else:
            for eps in pgd_eps:
                todo = correct & ~torch.isfinite(dists[:, j])
                if not bool(todo.any()):
                    break
                idx = todo.nonzero().squeeze(1)
                tr = WorstCase(x[idx], early_stop=True)
                pgd_kernel(clf, x[idx], y[idx], eps=eps, norm="2", steps=pgd_steps, step_size=2.5 * eps / pgd_steps,
                           bounds=clf.bounds, tracker=tr)
                xa = x.clone()
                xa[idx] = tr.best_x
                offer(j, xa, todo)
    dists[~correct] = 0.0
    minimum = dists.min(1).values
    exact = None
    if quadratic is not None:
        A, b, c = quadratic
        exact, _ = quadric_distance(A, b, c, x)
        exact = torch.where(correct, exact.to(dev), torch.zeros_like(exact).to(dev))
    return NearestErrors(methods=list(methods), distances=dists.cpu(), minimum=minimum.cpu(), correct=correct.cpu(),
                         y=y.cpu(), exact=None if exact is None else exact.cpu(),
                         params={"pgd_eps": pgd_eps, "pgd_steps": pgd_steps, "deepfool_iter": deepfool_iter})


def _check_mu(mu: float) -> None:
    if not 0 < mu < 1:
        raise OptionError(f"the error measure mu must lie in (0, 1), got {mu}")


def cap_threshold(mu: float, dim: int) -> float:
    """``t`` with ``P(x₁/r ≥ t) = μ`` for ``x`` uniform on a sphere in ``R^dim`` (the cap of measure ``μ``)."""
    from scipy import stats

    _check_mu(mu)
    check_positive(dim, "dim", integer=True)
    a = (dim - 1) / 2
    return float(2 * stats.beta.isf(mu, a, a) - 1)


def cap_median_distance(mu: float, dim: int, radius: float = 1.0) -> float:
    """The median chord distance from a uniform point of the sphere (``radius``, ``R^dim``) to a cap of measure
    ``μ < ½``: ``2r·sin(arcsin(t_μ)/2)``. By the isoperimetric inequality, an upper bound on the median distance
    to any error set of measure ``μ`` on that sphere."""
    if not 0 < mu < 0.5:
        raise OptionError(f"the median bound needs 0 < mu < 0.5, got {mu}")
    t = cap_threshold(mu, dim)
    return 2 * radius * math.sin(math.asin(t) / 2)


def cap_mean_distance(mu: float, dim: int, radius: float = 1.0) -> float:
    """The mean chord distance from a uniform point of the sphere to a cap of measure ``μ`` (exact up to
    quadrature): ``E[2r·sin(max(0, θ − θ_μ)/2)]`` with ``cos θ = x₁/r``; an upper bound on the mean distance to
    any error set of measure ``μ`` on that sphere (the isoperimetric inequality)."""
    from scipy import integrate, stats

    t = cap_threshold(mu, dim)
    a = (dim - 1) / 2
    th_c = math.acos(t)

    def integrand(v):  # v = (s + 1)/2, s = cos θ
        s = 2 * v - 1
        th = math.acos(min(1.0, max(-1.0, s)))
        return 2 * math.sin(max(0.0, th - th_c) / 2) * stats.beta.pdf(v, a, a)

    sd = 0.5 / math.sqrt(dim)  # the width of the law of v around 1/2
    pts = [min(max(0.5 + k * sd, 1e-9), (t + 1) / 2) for k in (-6, -3, -1, 0, 1, 3)]
    val, _ = integrate.quad(integrand, 0.0, (t + 1) / 2, points=sorted(set(pts)), limit=500)
    return radius * val


def gilmer_bound(mu: float, dim: int, radius: float = 1.0) -> float:
    """Gilmer et al.'s asymptotic form of the bound: ``r·Φ⁻¹(1 − μ)/√d`` (the cap threshold for large ``d``)."""
    from scipy import stats

    _check_mu(mu)
    return radius * float(stats.norm.isf(mu)) / math.sqrt(dim)
