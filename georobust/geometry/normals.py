"""Boundary points and boundary normals, and the correlations of the normals (the "flat model").

Moosavi-Dezfooli, Fawzi, Fawzi, Frossard & Soatto, "Robustness of classifiers to universal perturbations: a
geometric perspective", ICLR 2018 (and "Universal adversarial perturbations", CVPR 2017, §4): the unit normals
to the decision boundary at points ``x + r*(x)`` near many inputs are strongly correlated — the matrix of
normals has a fast-decaying singular value spectrum, unlike random unit vectors — so random vectors drawn from
the span of the top singular vectors fool the classifier far more often than isotropic random vectors of the
same norm.

:func:`boundary_points` (DeepFool, then a bisection on the segment ``[x, x_adv]`` that puts the point on the
boundary to ``2⁻ᵇ·‖r‖``) and :func:`boundary_normals` (the gradient of ``f_l − f_k̂`` there, normalised) are
the building blocks of the curvature, cross-section and universal-perturbation analyses.

Validation happens once per public call: each public function runs :func:`~georobust.checks.prepare` on
its inputs and hands the validated classifier, inputs and clean predictions to trusting internals
(:func:`_boundary_points`, :func:`_boundary_normals`), which the other geometry tools call directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .. import registry
from ..attacks.deepfool import deepfool_batch
from ..checks import check_positive, predict, prepare
from ..core.ops import bcast
from ..errors import OptionError
from ..evaluation.metrics import fooling_rate
from ..results import Saveable
from ._report import Report, fmt, median
from .hessian import gradient, logit_diff_fn

log = logging.getLogger(__name__)


@dataclass
class BoundaryPoints(Saveable, Report):
    """Per sample: the boundary point ``x_b = x + r``, ``r``, the class ``k̂`` attacked, the class ``l`` on the
    other side, and whether DeepFool converged (non-converged samples keep ``r = 0`` and ``x_b = x``)."""

    x: torch.Tensor
    point: torch.Tensor
    r: torch.Tensor
    orig: torch.Tensor
    other: torch.Tensor
    converged: torch.Tensor

    @property
    def r_norm(self) -> torch.Tensor:
        return self.r.flatten(1).norm(dim=1)

    def summary(self) -> dict:
        return {"n": int(self.converged.numel()), "converged": int(self.converged.sum()),
                "median_r": median(self.r_norm, self.converged)}


def boundary_points(model, x, y=None, *, overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10,
                    clip: bool = False, bisection: int = 25, batch_size: int = 512) -> BoundaryPoints:
    """Points on the decision boundary next to ``x``: DeepFool's ``x + (1+η)·r_tot``, then ``bisection`` halvings
    of the segment from ``x`` so that the point lies on the boundary (on the adversarial side, within
    ``2^-bisection`` of the segment's length).

    ``clip=False`` (default) is the paper's unconstrained DeepFool — geometry is a property of the function,
    the box does not bend the boundary; ``clip=True`` keeps every point inside the model's bounds. Samples
    the model misclassifies (labels given) are attacked from their predicted class like the others.
    """
    check_positive(bisection, "bisection", integer=True, allow_zero=True)
    check_positive(batch_size, "batch_size", integer=True)
    p = prepare(model, x, y)
    return _boundary_points(p.clf, p.x, p.pred, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
                            clip=clip, bisection=bisection, batch_size=batch_size)


def _boundary_points(clf, x: torch.Tensor, pred: torch.Tensor, *, overshoot: float = 0.02, max_iter: int = 50,
                     candidates: int = 10, clip: bool = False, bisection: int = 25,
                     batch_size: int = 512) -> BoundaryPoints:
    """:func:`boundary_points` on inputs already validated: ``clf`` a validated classifier, ``x`` its inputs,
    ``pred`` ``clf``'s clean predictions on ``x``."""
    pts, rs, others, conv = [], [], [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        out = deepfool_batch(clf, xb, norm="2", overshoot=float(overshoot), max_iter=max_iter,
                             candidates=candidates, clip=clip)
        step = out.x_adv - xb
        lo_t = torch.zeros(xb.shape[0], device=x.device, dtype=x.dtype)
        hi_t = torch.ones_like(lo_t)
        for _ in range(bisection):
            mid = 0.5 * (lo_t + hi_t)
            lab = predict(clf, xb + bcast(mid, xb) * step)
            crossed = lab != out.orig
            hi_t = torch.where(crossed, mid, hi_t)
            lo_t = torch.where(crossed, lo_t, mid)
        hi_t = torch.where(out.converged, hi_t, torch.zeros_like(hi_t))
        r = bcast(hi_t, xb) * step
        pt = xb + r
        lab = predict(clf, pt)
        pts.append(pt)
        rs.append(r)
        others.append(torch.where(out.converged, lab, out.boundary_class))
        conv.append(out.converged & (lab != out.orig))
    bp = BoundaryPoints(x=x, point=torch.cat(pts), r=torch.cat(rs), orig=pred.clone(), other=torch.cat(others).clone(),
                        converged=torch.cat(conv))
    log.info("boundary points: %d/%d converged, median ‖r‖ %.4g", int(bp.converged.sum()), x.shape[0],
             float(bp.r_norm[bp.converged].median()) if bool(bp.converged.any()) else float("nan"))
    return bp


def boundary_function(model, bp: BoundaryPoints):
    """The scalar function ``φ = f_k̂ − f_l`` per sample whose zero set is the boundary at ``bp.point``."""
    return logit_diff_fn(model, bp.orig, bp.other)


@dataclass
class Normals(Saveable, Report):
    """Unit boundary normals ``(N, d)`` (pointing from ``x`` towards the other class), at ``points``."""

    normals: torch.Tensor
    points: torch.Tensor
    r_norm: torch.Tensor
    grad_norm: torch.Tensor
    orig: torch.Tensor
    other: torch.Tensor
    converged: torch.Tensor

    def summary(self) -> dict:
        c = self.converged
        return {"n": int(c.numel()), "converged": int(c.sum()), "median_r": median(self.r_norm, c),
                "median_grad_norm": median(self.grad_norm, c)}


def boundary_normals(model, x, y=None, *, overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10,
                     clip: bool = False, batch_size: int = 512) -> Normals:
    """Unit normals to the decision boundary at the DeepFool boundary points of ``x`` (ICLR 2018, §3):
    ``n = ∇(f_l − f_k̂)/‖∇(f_l − f_k̂)‖`` at ``x + r*``, for every sample, batched. Non-converged samples
    (and misclassified ones alike) are flagged in ``converged``; their normal is the gradient at ``x``."""
    check_positive(batch_size, "batch_size", integer=True)
    p = prepare(model, x, y)
    return _boundary_normals(p.clf, p.x, p.pred, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
                             clip=clip, batch_size=batch_size)


def _boundary_normals(clf, x: torch.Tensor, pred: torch.Tensor, *, overshoot: float = 0.02, max_iter: int = 50,
                      candidates: int = 10, clip: bool = False, batch_size: int = 512) -> Normals:
    """:func:`boundary_normals` on inputs already validated (as :func:`_boundary_points`)."""
    bp = _boundary_points(clf, x, pred, overshoot=overshoot, max_iter=max_iter, candidates=candidates, clip=clip,
                          batch_size=batch_size)
    n, gn = unit_normals(clf, bp.point, bp.orig, bp.other, batch_size=batch_size)
    return Normals(normals=n, points=bp.point, r_norm=bp.r_norm, grad_norm=gn, orig=bp.orig, other=bp.other,
                   converged=bp.converged)


def unit_normals(clf, points: torch.Tensor, orig: torch.Tensor, other: torch.Tensor, *,
                 batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, ‖g‖)``: the unit normals ``n = g/‖g‖``, ``g = ∇(f_other − f_orig)`` at ``points`` (boundary points,
    e.g. of :class:`BoundaryPoints`), flattened to ``(N, d)``, batched; ``clf`` is a validated classifier."""
    g = torch.cat([gradient(logit_diff_fn(clf, other[i : i + batch_size], orig[i : i + batch_size]),
                            points[i : i + batch_size]).flatten(1) for i in range(0, points.shape[0], batch_size)])
    gn = g.norm(dim=1)
    return g / gn.clamp_min(1e-30)[:, None], gn


# --------------------------------------------------------------------------------------- correlations
@dataclass
class NormalSpectrum(Saveable, Report):
    """Singular values of the matrix of unit normals and of as many random unit vectors; the right singular
    vectors of the normals (``basis``, ``(r, d)``, the top ones first); flat-model fooling rates."""

    singular_values: torch.Tensor
    random_singular_values: torch.Tensor
    basis: torch.Tensor
    dims: list
    eps: float
    fooling_subspace: list
    fooling_isotropic: float
    n_normals: int
    n_eval: int

    #: the indices (1-based) of the singular values shown in :meth:`table` besides ``dims``
    INDICES = (1, 2, 5, 10, 25, 50)

    def _sigma(self, s: torch.Tensor, m: int) -> float:
        return float(s[m - 1] / s[0]) if m <= s.numel() and float(s[0]) > 0 else float("nan")

    def summary(self) -> dict:
        out = {"n_normals": self.n_normals, "n_eval": self.n_eval, "eps": self.eps,
               "fooling_isotropic": self.fooling_isotropic}
        out.update({f"fooling_m{m}": f for m, f in zip(self.dims, self.fooling_subspace)})
        for m in (2, 10):
            out[f"sigma{m}_over_sigma1"] = self._sigma(self.singular_values, m)
            out[f"random_sigma{m}_over_sigma1"] = self._sigma(self.random_singular_values, m)
        return out

    def table(self) -> list[list[str]]:
        """Per index ``m``: ``σ_m/σ₁`` of the normals and of random unit vectors, and where ``m`` is one of
        ``dims`` the fooling rate at ``‖v‖₂ = eps`` of random vectors in the span of the top ``m`` right
        singular vectors (``—`` elsewhere), beside that of isotropic random vectors."""
        rows = [["m", "σ_m/σ₁ normals", "σ_m/σ₁ random", "fooling (span of top m)", "fooling (isotropic)"]]
        fool = dict(zip(self.dims, self.fooling_subspace))
        for m in sorted({i for i in self.INDICES if i <= self.singular_values.numel()} | set(fool)):
            rows.append([str(m), fmt(self._sigma(self.singular_values, m)),
                         fmt(self._sigma(self.random_singular_values, m)), fmt(fool.get(m)),
                         fmt(self.fooling_isotropic)])
        return rows


def random_unit(n: int, d: int, *, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    v = torch.randn(n, d, generator=generator, device=generator.device, dtype=dtype).to(device)
    return v / v.norm(dim=1, keepdim=True)


def _check_dims(dims, x) -> list[int]:
    """``dims`` as a list of positive ints, each at most ``min(N, d)`` of ``x`` — refused otherwise."""
    if isinstance(dims, (int, float)) and not isinstance(dims, bool):
        dims = [dims]
    try:
        dims = list(dims)
    except TypeError:
        raise OptionError(f"dims must be a sequence of positive integers, got {dims!r}") from None
    if not dims:
        raise OptionError("dims is empty; give at least one subspace dimension, e.g. dims=(1, 5, 10)")
    for m in dims:
        check_positive(m, "each of dims", integer=True)
    if isinstance(x, torch.Tensor) and x.ndim >= 2:
        cap = min(int(x.shape[0]), int(x[0].numel()))
        big = [m for m in dims if m > cap]
        if big:
            raise OptionError(
                f"dims {big} exceed min(N, d) = {cap}: {x.shape[0]} samples give at most {cap} independent "
                f"boundary normals; use dims <= {cap} or more samples"
            )
    return [int(m) for m in dims]


@registry.analyses.register(
    "normals", summary="singular values of the boundary normals and the flat model's fooling rates",
    plot="normal_spectrum", plot_file="normals.png")
def normal_spectrum(model, x, y=None, *, x_eval=None, dims=(1, 5, 10, 25, 50), eps: float | None = None,
                    seed: int = 0, overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10,
                    clip: bool = False) -> NormalSpectrum:
    """Normal correlations (ICLR 2018, Fig. 3–4): singular values of the unit boundary normals at ``x`` against
    those of random unit vectors, and the fooling rate on ``x_eval`` (default ``x``) of random vectors of
    L2 norm ``eps`` drawn uniformly from the span of the top ``m`` right singular vectors, for each ``m`` in
    ``dims``, against isotropic random vectors of the same norm (clipped into the bounds).

    ``eps`` defaults to ``2 ×`` the median DeepFool norm ``‖r*‖`` at ``x``. Every ``m`` in ``dims`` must be
    a positive integer at most ``min(N, d)`` (the rank of the normals' matrix), else it is refused before any
    work; an ``m`` above the number of normals actually found (not every sample converges) is left out
    of ``dims`` with a logged warning.
    """
    check_positive(seed, "seed", integer=True, allow_zero=True)
    dims = _check_dims(dims, x)
    if eps is not None:
        check_positive(eps, "eps")
    p = prepare(model, x, y)
    pe = p if x_eval is None else prepare(p.clf, x_eval)
    return _normal_spectrum(p.clf, p.x, p.pred, pe.x, pe.pred, dims=dims, eps=eps, seed=seed, overshoot=overshoot,
                            max_iter=max_iter, candidates=candidates, clip=clip)


def _normal_spectrum(clf, x: torch.Tensor, pred: torch.Tensor, xe: torch.Tensor, pred_e: torch.Tensor, *,
                     dims: list[int], eps: float | None, seed: int, overshoot: float, max_iter: int,
                     candidates: int, clip: bool) -> NormalSpectrum:
    """:func:`normal_spectrum` on inputs already validated: ``x`` (``pred`` its clean predictions) gives the
    normals, ``xe`` (``pred_e``) the fooling rates."""
    nr = _boundary_normals(clf, x, pred, overshoot=overshoot, max_iter=max_iter, candidates=candidates, clip=clip)
    nm = nr.normals[nr.converged]
    if nm.shape[0] < 2:
        raise OptionError("fewer than two boundary normals were found; use more samples or a larger max_iter")
    d = nm.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    _, s, vh = torch.linalg.svd(nm.double(), full_matrices=False)
    rnd = random_unit(nm.shape[0], d, generator=gen, dtype=torch.float64)
    s_rand = torch.linalg.svdvals(rnd)
    if eps is None:
        eps = 2.0 * float(nr.r_norm[nr.converged].median())
    check_positive(eps, "eps")
    n_e = xe.shape[0]
    dropped = [m for m in dims if m > vh.shape[0]]
    if dropped:
        log.warning("normal_spectrum: only %d boundary normals were found (of %d samples), so dims %s are left "
                    "out; use more samples or a larger max_iter", nm.shape[0], x.shape[0], dropped)
    dims = [m for m in dims if m <= vh.shape[0]]
    fs = []
    iso = random_unit(n_e, d, generator=gen, device=xe.device, dtype=xe.dtype) * eps
    fi = fooling_rate(clf, xe, iso.reshape(xe.shape), pred=pred_e)
    for m in dims:
        z = torch.randn(n_e, m, generator=gen, dtype=torch.float64)
        v = (z @ vh[:m]).to(xe.device, xe.dtype)
        v = v / v.norm(dim=1, keepdim=True) * eps
        fs.append(fooling_rate(clf, xe, v.reshape(xe.shape), pred=pred_e))
    return NormalSpectrum(singular_values=s.float(), random_singular_values=s_rand.float(), basis=vh.float(),
                          dims=dims, eps=float(eps), fooling_subspace=fs, fooling_isotropic=fi,
                          n_normals=int(nm.shape[0]), n_eval=n_e)
