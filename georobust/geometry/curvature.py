"""Curvature of the loss and of the decision boundary.

* **Curvature profile** (Moosavi-Dezfooli, Fawzi, Uesato & Frossard, "Robustness via curvature regularization,
  and vice versa", CVPR 2019, Fig. 2): for each input, the sorted eigenvalues of the input Hessian of the loss
  ``∇²ₓ ℓ(f(x), y)``; averaged over a data set it compares how curved models are (adversarially trained models
  have flatter profiles).
* **Principal curvatures of the decision boundary** (Fawzi, Moosavi-Dezfooli & Frossard, "Robustness of
  classifiers: from adversarial to random noise", NIPS 2016; Moosavi-Dezfooli et al., ICLR 2018): at the
  DeepFool boundary point ``x_b = x + r*`` between the predicted class ``k̂`` and the class ``l`` reached, with
  ``φ = f_k̂ − f_l`` (zero on the boundary, positive on ``x``'s side), the principal curvatures are the
  eigenvalues of ``P ∇²φ(x_b) P / ‖∇φ(x_b)‖`` on the tangent space (``P = I − n nᵀ``, ``n = ∇φ/‖∇φ‖``).
  A positive curvature ``κ`` along a tangent direction ``u`` means ``φ(x_b + t u) ≈ ½ κ ‖∇φ‖ t² > 0``: the
  boundary bends away from ``x`` (towards the other class) along ``u``. Their size is compared with
  ``1/‖r*‖``: the boundary is "almost flat" where ``|κ|·‖r*‖ ≪ 1``.

A network of ReLUs and max-pools is piecewise linear: the Hessian of ``φ`` is zero almost everywhere, so its
boundary curvatures are exactly zero at every point where they are defined (its loss Hessian is not: it is
``Jᵀ(diag p − ppᵀ)J``, of rank ≤ K−1). ``softplus_beta`` measures instead a smoothed copy of the model whose
``nn.ReLU`` modules are replaced by ``Softplus(β)`` (→ ReLU as β → ∞), the usual way to give a piecewise-linear
network second derivatives.

Each public function validates its inputs once (:func:`~georobust.checks.prepare`) and runs a trusting
internal (:func:`_boundary_curvature`, also used by the cross-sections).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..checks import check_positive, predict, prepare
from ..errors import OptionError
from ..results import Saveable
from ._report import Report, median
from .hessian import gradient, hessian_eigs, logit_diff_fn, loss_fn
from .normals import _boundary_points

log = logging.getLogger(__name__)


def smoothed(model: nn.Module, beta: float) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU`` module replaced by ``nn.Softplus(beta)`` (eval mode)."""
    check_positive(beta, "softplus_beta")
    m = copy.deepcopy(model)
    n_rep = 0
    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(mod, name, nn.Softplus(beta=beta))
                n_rep += 1
    if n_rep == 0:
        log.warning("smoothed(): the model has no nn.ReLU module; it is unchanged")
    return m.eval()


@dataclass
class CurvatureProfile(Saveable, Report):
    """``values`` ``(N, 2k)``: the ``k`` largest then the ``k`` smallest eigenvalues of each input Hessian of
    the loss, sorted in decreasing order (CURE's profile); ``mean_profile`` their mean over samples."""

    values: torch.Tensor
    k: int
    steps: int

    @property
    def mean_profile(self) -> torch.Tensor:
        return self.values.mean(0)

    def summary(self) -> dict:
        v = self.values
        return {"n": int(v.shape[0]), "mean_top": float(v[:, 0].mean()), "median_top": float(v[:, 0].median()),
                "mean_bottom": float(v[:, -1].mean()), "mean_abs_sum": float(v.abs().sum(1).mean())}


@registry.analyses.register(
    "curvature-profile", summary="CURE's curvature profile: the extreme eigenvalues of the input Hessian of the loss",
    plot="loss_curvature_profiles", plot_file="curvature_profile.png")
def curvature_profile(model, x, y=None, *, k: int = 10, steps: int | None = None, seed: int = 0,
                      batch_size: int = 256) -> CurvatureProfile:
    """CURE's curvature profile: the ``k`` largest and ``k`` smallest eigenvalues of ``∇²ₓ ℓ(f(x), y)`` per
    sample (Lanczos over HVPs, batched), sorted in decreasing order. ``y`` defaults to the predictions."""
    check_positive(k, "k", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    p = prepare(model, x, y)
    clf, x, y = p.clf, p.x, p.y
    d = x[0].numel()
    if k > d:
        raise OptionError(f"k = {k} exceeds the input dimension d = {d}: the input Hessian has only {d} "
                          f"eigenvalues; use k <= {d}")
    vals = []
    for i in range(0, x.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        fn = loss_fn(clf, y[sl])
        top = hessian_eigs(fn, x[sl], k=k, which="largest", steps=steps, seed=seed).values
        if 2 * k >= d:  # the whole spectrum
            vals.append(top)
            continue
        bot = hessian_eigs(fn, x[sl], k=k, which="smallest", steps=steps, seed=seed + 1).values.flip(1)
        vals.append(torch.cat([top, bot], 1))
    return CurvatureProfile(values=torch.cat(vals), k=k, steps=int(steps or 0))


@dataclass
class BoundaryCurvature(Saveable, Report):
    """Principal curvatures of the boundary at ``x + r*``: ``largest`` and ``smallest`` ``(N, k)`` (in units
    of 1/input-norm), ``r_norm`` ``‖r*‖``, ``converged`` (DeepFool reached the boundary), and optional
    principal directions ``directions`` ``(N, k, d)`` for the largest curvatures."""

    largest: torch.Tensor
    smallest: torch.Tensor
    r_norm: torch.Tensor
    grad_norm: torch.Tensor
    converged: torch.Tensor
    points: torch.Tensor
    normals: torch.Tensor
    directions: torch.Tensor | None = None
    softplus_beta: float | None = None

    @property
    def max_abs(self) -> torch.Tensor:
        return torch.maximum(self.largest[:, 0].abs(), self.smallest[:, 0].abs())

    @property
    def relative(self) -> torch.Tensor:
        """``max |κ| · ‖r*‖`` per sample: ≪ 1 means the boundary is almost flat on the scale of ``r*``."""
        return self.max_abs * self.r_norm

    def summary(self) -> dict:
        c = self.converged
        return {"n": int(c.numel()), "converged": int(c.sum()), "median_r": median(self.r_norm, c),
                "median_kappa_max": median(self.largest[:, 0], c), "median_kappa_min": median(self.smallest[:, 0], c),
                "median_abs_kappa_r": median(self.relative, c), "softplus_beta": self.softplus_beta}


@registry.analyses.register(
    "curvature", summary="principal curvatures of the decision boundary at the DeepFool boundary point",
    plot="boundary_curvatures", plot_file="boundary_curvature.png")
def boundary_curvature(model, x, y=None, *, k: int = 5, steps: int | None = None, seed: int = 0,
                       softplus_beta: float | None = None, directions: bool = False, overshoot: float = 0.02,
                       max_iter: int = 50, candidates: int = 10, clip: bool = False,
                       batch_size: int = 256) -> BoundaryCurvature:
    """The ``k`` largest and ``k`` smallest principal curvatures of the decision boundary at the DeepFool
    boundary point of each sample (the Hessian of ``f_k̂ − f_l`` on the tangent space over ``‖∇(f_k̂ − f_l)‖``;
    see the module docstring). ``softplus_beta`` measures a Softplus(β)-smoothed copy of a ReLU model;
    ``directions=True`` also returns the principal directions of the ``k`` largest curvatures."""
    check_positive(k, "k", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    if softplus_beta is not None:
        check_positive(softplus_beta, "softplus_beta")
    p = prepare(model, x, y)
    check_tangent_k(k, p.x[0].numel())
    return _boundary_curvature(p.clf, p.x, p.pred, k=k, steps=steps, seed=seed, softplus_beta=softplus_beta,
                               directions=directions, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
                               clip=clip, batch_size=batch_size)


def check_tangent_k(k: int, d: int) -> None:
    """Refuse ``k`` principal curvatures on inputs of dimension ``d`` when the tangent space (``d − 1``) is
    smaller."""
    if d < 2:
        raise OptionError("the boundary of a 1-D input has no tangent space")
    if k > d - 1:
        raise OptionError(f"k = {k} exceeds the dimension of the boundary's tangent space, d − 1 = {d - 1}; "
                          f"use k <= {d - 1}")


def _boundary_curvature(clf, x: torch.Tensor, pred: torch.Tensor, *, k: int, steps: int | None, seed: int,
                        softplus_beta: float | None, directions: bool, overshoot: float, max_iter: int,
                        candidates: int, clip: bool, batch_size: int) -> BoundaryCurvature:
    """:func:`boundary_curvature` on inputs already validated (``clf`` a validated classifier, ``pred`` its
    clean predictions on ``x``; options checked). With ``softplus_beta`` the boundary points are those of the
    smoothed copy, attacked from its own predictions."""
    if softplus_beta is not None:
        clf = smoothed(clf, softplus_beta)
        pred = predict(clf, x)
    bp = _boundary_points(clf, x, pred, overshoot=overshoot, max_iter=max_iter, candidates=candidates, clip=clip,
                          batch_size=batch_size)
    kk = k
    big, small, gns, nrm, dirs = [], [], [], [], []
    for i in range(0, x.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        fn = logit_diff_fn(clf, bp.orig[sl], bp.other[sl])
        g = gradient(fn, bp.point[sl]).flatten(1)
        gn = g.norm(dim=1).clamp_min(1e-30)
        nvec = g / gn[:, None]
        # the normal itself is an eigenvector of P H P with eigenvalue 0 (it shows as a 0 only when all the
        # tangent curvatures on that side have the other sign)
        top = hessian_eigs(fn, bp.point[sl], k=kk, which="largest", steps=steps, seed=seed, project=nvec,
                           vectors=directions)
        bot = hessian_eigs(fn, bp.point[sl], k=kk, which="smallest", steps=steps, seed=seed + 1, project=nvec)
        big.append(top.values / gn[:, None])
        small.append(bot.values / gn[:, None])
        gns.append(gn)
        nrm.append(-nvec)  # pointing from x towards the other class
        if directions:
            dirs.append(top.vectors)
    return BoundaryCurvature(largest=torch.cat(big), smallest=torch.cat(small), r_norm=bp.r_norm,
                             grad_norm=torch.cat(gns), converged=bp.converged, points=bp.point,
                             normals=torch.cat(nrm), directions=torch.cat(dirs) if directions else None,
                             softplus_beta=softplus_beta)
