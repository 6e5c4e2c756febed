"""Robustness in random subspaces and to random noise (Fawzi, Moosavi-Dezfooli & Frossard, "Robustness of
classifiers: from adversarial to random noise", NIPS 2016).

For a random ``m``-dimensional subspace ``S`` (drawn independently per sample, uniformly: an orthonormal basis
from the QR factorisation of a Gaussian ``d × m`` matrix), ``r*_S`` is the minimal perturbation inside ``S``.
The paper shows that, for classifiers whose boundary is flat or curved in a bounded way,
``‖r*_S‖ ≈ √(d/m)·‖r*‖``: ``β = √(m/d)·‖r*_S‖/‖r*‖ ≈ 1`` (Theorem 1 for linear classifiers, where
``‖r*_S‖ = |f|/‖P_S w‖`` and ``E‖P_S w‖² = (m/d)‖w‖²``). ``r*_S`` is found with DeepFool whose gradients are
projected onto ``S`` at every step (``deepfool_batch``'s ``project`` hook), ``r*`` with plain DeepFool — the
same loop, so the ratio compares like with like. Both are unconstrained by default (``clip=False``), as in
the paper's analysis: the box ``[0, 1]^d`` is not part of the boundary's geometry.

Random noise (``m = 1``) is a line search along ``±v`` for a random unit ``v``: the smallest ``t`` at which
the label changes, searched up to where the line leaves the box of valid inputs (``bounded=True``) — the
fraction of directions that never cross inside the box is reported, since for most directions
``√d·‖r*‖`` is far larger than the box.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .. import registry
from ..attacks.deepfool import deepfool_batch
from ..checks import check_positive, predict, prepare
from ..core.ops import bcast
from ..errors import OptionError
from ..results import Saveable
from ._report import Report, median

log = logging.getLogger(__name__)


def random_bases(n: int, d: int, m: int, *, generator: torch.Generator, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """``n`` independent uniformly random orthonormal bases ``(n, d, m)`` of ``m``-dim subspaces of R^d."""
    g = torch.randn(n, d, m, generator=generator, device=generator.device, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)  # Haar: fix the signs
    return q.to(device=device, dtype=dtype)


def subspace_deepfool(model, x, y=None, *, m: int, seed: int = 0, generator: torch.Generator | None = None,
                      overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10, clip: bool = False,
                      basis: torch.Tensor | None = None):
    """DeepFool restricted to a random ``m``-dim subspace per sample (NIPS 2016, §4); returns ``(r_S, converged,
    basis)`` with ``r_S`` the boundary perturbation ``r_tot`` (without the overshoot) in the subspace.

    ``basis`` (``(N, d, m)`` orthonormal) replaces the random draw. ``m = d`` is plain DeepFool.
    """
    check_positive(m, "m", integer=True)
    p = prepare(model, x, y)
    d = p.x[0].numel()
    if m > d:
        raise OptionError(f"m = {m} is larger than the input dimension d = {d}")
    if basis is None and m < d and generator is None:
        generator = torch.Generator().manual_seed(seed)
    return _subspace_deepfool(p.clf, p.x, m=m, generator=generator, overshoot=overshoot, max_iter=max_iter,
                              candidates=candidates, clip=clip, basis=basis)


def _subspace_deepfool(clf, x: torch.Tensor, *, m: int, generator: torch.Generator | None, overshoot: float,
                       max_iter: int, candidates: int, clip: bool, basis: torch.Tensor | None = None):
    """:func:`subspace_deepfool` on inputs already validated (``clf`` a validated classifier, ``1 <= m <= d``);
    ``generator`` draws the bases when ``basis`` is ``None`` and ``m < d``."""
    n, d = x.shape[0], x[0].numel()
    if basis is None and m < d:
        basis = random_bases(n, d, m, generator=generator, device=x.device, dtype=x.dtype)

    def project(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        b = basis[idx]
        wf = w.flatten(2)
        return torch.einsum("ncm,ndm->ncd", torch.einsum("ncd,ndm->ncm", wf, b), b).reshape(w.shape)

    out = deepfool_batch(clf, x, norm="2", overshoot=float(overshoot), max_iter=max_iter, candidates=candidates,
                         clip=clip, active=None, project=None if basis is None else project)
    return out.r_tot, out.converged, basis


@dataclass
class SubspaceRobustness(Saveable, Report):
    """``r_norm`` ``(N,)`` = ‖r*‖; ``r_sub`` ``(N, R)`` = ‖r*_S‖ per ratio ``m/d`` in ``ratios`` (``dims`` the m);
    ``converged`` ``(N, R)``; ``beta`` (mean over converged) and ``beta_median`` per ratio."""

    ratios: list
    dims: list
    d: int
    r_norm: torch.Tensor
    r_sub: torch.Tensor
    converged: torch.Tensor
    converged_full: torch.Tensor
    beta: list
    beta_median: list

    def summary(self) -> dict:
        out = {"n": int(self.r_norm.numel()), "d": self.d, "converged_full": int(self.converged_full.sum()),
               "median_r": median(self.r_norm, self.converged_full)}
        for j, m in enumerate(self.dims):
            out[f"beta_m{m}"] = self.beta[j]
            out[f"beta_median_m{m}"] = self.beta_median[j]
        return out

    def table(self) -> list[list[str]]:
        rows = [["m/d", "m", "mean β", "median β", "mean ‖r*_S‖/‖r*‖", "√(d/m)", "converged"]]
        for j, (q, m) in enumerate(zip(self.ratios, self.dims)):
            ok = self.converged[:, j] & self.converged_full
            ratio = float((self.r_sub[ok, j] / self.r_norm[ok]).mean()) if bool(ok.any()) else float("nan")
            rows.append([f"{q:.4g}", str(m), f"{self.beta[j]:.3f}", f"{self.beta_median[j]:.3f}", f"{ratio:.3f}",
                         f"{math.sqrt(self.d / m):.3f}", f"{int(ok.sum())}/{ok.numel()}"])
        return rows


@registry.analyses.register(
    "subspace", summary="β = √(m/d)·‖r*_S‖/‖r*‖: minimal perturbations in random subspaces",
    plot="subspace_ratios", plot_file="subspace.png")
def subspace_robustness(model, x, y=None, *, ratios=(1 / 4, 1 / 16, 1 / 49, 1 / 100), seed: int = 0,
                        overshoot: float = 0.02, max_iter: int = 100, candidates: int = 10,
                        clip: bool = False) -> SubspaceRobustness:
    """``β = √(m/d)·‖r*_S‖/‖r*‖`` for each ``m/d`` in ``ratios`` (NIPS 2016, Table 1; paper: β ≈ 1 for deep
    nets). Each sample gets its own random subspace per ratio (seeded). Means/medians are over samples
    where both DeepFool runs reached the boundary."""
    check_positive(seed, "seed", integer=True, allow_zero=True)
    p = prepare(model, x, y)
    clf, x = p.clf, p.x
    d = x[0].numel()
    dims = []
    for q in ratios:
        check_positive(q, "ratio")
        if q > 1:
            raise OptionError(f"subspace ratios m/d must be in (0, 1], got {q}")
        if round(q * d) < 1:
            raise OptionError(f"subspace ratio {q:g} gives m = {q * d:.3g} < 1 dimension on inputs of d = {d}; "
                              f"use ratios >= {1 / d:.3g} (m = 1)")
        dims.append(round(q * d))
    gen = torch.Generator().manual_seed(seed)
    r_full, conv_full, _ = _subspace_deepfool(clf, x, m=d, generator=None, overshoot=overshoot, max_iter=max_iter,
                                              candidates=candidates, clip=clip)
    rn = r_full.flatten(1).norm(dim=1)
    subs, convs = [], []
    for m in dims:
        r_s, c_s, _ = _subspace_deepfool(clf, x, m=m, generator=gen, overshoot=overshoot, max_iter=max_iter,
                                         candidates=candidates, clip=clip)
        subs.append(r_s.flatten(1).norm(dim=1))
        convs.append(c_s)
    r_sub, conv = torch.stack(subs, 1), torch.stack(convs, 1)
    beta, beta_med = [], []
    for j, m in enumerate(dims):
        ok = conv[:, j] & conv_full & (rn > 0)
        b = math.sqrt(m / d) * r_sub[ok, j] / rn[ok]
        beta.append(float(b.mean()) if b.numel() else float("nan"))
        beta_med.append(float(b.median()) if b.numel() else float("nan"))
    return SubspaceRobustness(ratios=[float(q) for q in ratios], dims=dims, d=d, r_norm=rn, r_sub=r_sub,
                              converged=conv, converged_full=conv_full, beta=beta, beta_median=beta_med)


@dataclass
class NoiseRobustness(Saveable, Report):
    """Per direction (``N·directions`` rows, sample-major): ``r_noise`` the smallest ``|t|`` at which the label
    changes along ``±v`` (``inf`` where it never does inside the search range), ``t_max`` that range."""

    r_noise: torch.Tensor
    t_max: torch.Tensor
    sample: torch.Tensor
    directions: int
    bounded: bool

    @property
    def crossed(self) -> torch.Tensor:
        return torch.isfinite(self.r_noise)

    @property
    def never_crossed(self) -> float:
        """Fraction of directions along which the label never changes inside the search range."""
        return float((~self.crossed).double().mean())

    def summary(self) -> dict:
        return {"n": int(self.sample.unique().numel()), "directions": self.directions, "bounded": self.bounded,
                "never_crossed": self.never_crossed, "median_r_noise": median(self.r_noise, self.crossed),
                "median_t_max": median(self.t_max)}


@registry.analyses.register(
    "random-noise", summary="robustness to random noise: the distance to the boundary along random lines",
    plot=None, plot_file=None)
def noise_robustness(model, x, y=None, *, directions: int = 1, seed: int = 0, bounded: bool = True,
                     max_norm: float | None = None, grid: int = 32, bisection: int = 20,
                     batch_size: int = 4096) -> NoiseRobustness:
    """Robustness to random noise (the ``m = 1`` case): for ``directions`` random unit vectors ``v`` per sample,
    the smallest ``t > 0`` with ``label(x ± t v) ≠ label(x)`` — a geometric grid of ``grid`` values of ``t``
    then ``bisection`` halvings. ``bounded=True`` searches until the line leaves the box (both signs);
    else up to ``max_norm`` (default the box's diameter ``(hi − lo)·√d``)."""
    check_positive(directions, "directions", integer=True)
    check_positive(grid, "grid", integer=True)
    check_positive(bisection, "bisection", integer=True, allow_zero=True)
    p = prepare(model, x, y)
    clf, x, pred = p.clf, p.x, p.pred
    lo, hi = clf.bounds
    n, d = x.shape[0], x[0].numel()
    gen = torch.Generator().manual_seed(seed)
    xs = x.repeat_interleave(directions, 0)
    lab0 = pred.repeat_interleave(directions, 0)
    v = torch.randn(xs.shape[0], d, generator=gen).to(x.device, x.dtype)
    v = (v / v.norm(dim=1, keepdim=True)).reshape(xs.shape)
    if bounded:
        # largest t with x + s t v inside the box, for each sign s; the search goes to the larger one
        vf, xf = v.flatten(1), xs.flatten(1)
        up = torch.where(vf > 0, (hi - xf) / vf, torch.where(vf < 0, (lo - xf) / vf, torch.full_like(vf, math.inf)))
        dn = torch.where(vf < 0, (hi - xf) / -vf, torch.where(vf > 0, (lo - xf) / -vf, torch.full_like(vf, math.inf)))
        t_up, t_dn = up.amin(1), dn.amin(1)
    else:
        tm = max_norm if max_norm is not None else (hi - lo) * math.sqrt(d)
        check_positive(tm, "max_norm")
        t_up = t_dn = torch.full((xs.shape[0],), float(tm), device=x.device, dtype=x.dtype)
    t_max = torch.maximum(t_up, t_dn)

    def changed(t: torch.Tensor) -> torch.Tensor:
        # label changes at +t (within the + range) or at -t (within the - range)
        out = torch.zeros_like(t, dtype=torch.bool)
        for s, lim in ((1.0, t_up), (-1.0, t_dn)):
            ok = t <= lim * (1 + 1e-6)
            xa = xs + bcast(s * t, xs) * v
            out |= ok & (predict(clf, xa, batch_size) != lab0)
        return out

    frac = torch.logspace(-4, 0, grid, device=x.device, dtype=x.dtype)
    hi_t = torch.full_like(t_max, math.inf)
    lo_t = torch.zeros_like(t_max)
    for f in frac:  # coarse grid, smallest first
        t = f * t_max
        c = changed(t) & ~torch.isfinite(hi_t)
        hi_t = torch.where(c, t, hi_t)
        lo_t = torch.where(~torch.isfinite(hi_t), t, lo_t)
    found = torch.isfinite(hi_t)
    for _ in range(bisection):
        mid = torch.where(found, 0.5 * (lo_t + hi_t), lo_t)
        c = changed(mid) & found
        hi_t = torch.where(c, mid, hi_t)
        lo_t = torch.where(c | ~found, lo_t, mid)
    sample = torch.arange(n, device=x.device).repeat_interleave(directions)
    return NoiseRobustness(r_noise=hi_t, t_max=t_max, sample=sample, directions=directions, bounded=bounded)
