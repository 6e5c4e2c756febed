"""Why universal perturbations exist: the flat and the curved models, compared with the UAP at equal norm.

Moosavi-Dezfooli, Fawzi, Fawzi & Frossard, "Universal adversarial perturbations", CVPR 2017, §4, and
Moosavi-Dezfooli, Fawzi, Fawzi, Frossard & Soatto, "Robustness of classifiers to universal perturbations: a
geometric perspective", ICLR 2018. Four perturbations of the same L2 norm ξ, and their fooling rates:

1. **random**: an isotropic random direction;
2. **flat model**: a random direction in the span of the top ``m`` right singular vectors of the matrix of unit
   boundary normals ``N = [n_1 … n_N]ᵀ`` at the DeepFool boundary points of the training images — the normals
   are correlated, so a low-dimensional subspace holds most of them (CVPR 2017, Fig. 8 and §4);
3. **curved model**: a random direction in the span of the top ``m`` eigenvectors of the *averaged* Hessian
   ``H̄ = (1/N) Σ_i ∇²(f_l − f_k̂)(x_i + r_i)`` at the boundary points (ICLR 2018, §4): directions along which
   the boundary is, on average, positively curved (it bends towards the inputs, so moving either way along
   them leaves the class). ``H̄`` is never formed: its products are batched Hessian-vector products
   (:func:`~georobust.geometry.hessian.averaged_hvp`) and its top eigenvectors come from Lanczos;
4. **UAP**: the universal perturbation rescaled to L2 norm ξ.

The random directions are drawn independently for each evaluated image (the expected fooling rate of one
random vector of the family, with less variance than one draw shared by all images). The paper's ImageNet
ordering is 13% < 38% < 67% < 85%.

ReLU/max-pool networks are piecewise linear, so ``∇²(f_l − f_k̂)`` is zero almost everywhere; like
:mod:`~georobust.geometry.curvature`, the curved model then uses a Softplus(β) copy of the network
(``softplus_beta``, default 10; ``None`` uses the network itself — all-zero for a ReLU network). The boundary
points and the normals are always those of the network itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from .. import registry
from ..checks import check_positive, prepare
from ..errors import InputError, OptionError
from ..evaluation.metrics import fooling_rate
from ..results import Saveable, UniversalResult
from ._report import Report, fmt
from .curvature import smoothed
from .hessian import averaged_hvp, lanczos, logit_diff_fn
from .normals import _boundary_points, unit_normals

log = logging.getLogger(__name__)

KINDS = ("random", "flat", "curved", "uap")


@dataclass
class UniversalGeometry(Saveable, Report):
    """Fooling rates at L2 norm ``xi`` of the four perturbations (``fooling[kind]``, kinds in :data:`KINDS`),
    the singular values of the normal matrix, the top eigenvalues of the averaged boundary Hessian, and the
    subspaces used (``flat_basis`` ``(m_flat, d)``, ``curved_basis`` ``(m_curved, d)``)."""

    xi: float
    fooling: dict
    m_flat: int
    m_curved: int
    normal_singular_values: torch.Tensor
    hessian_eigenvalues: torch.Tensor
    flat_basis: torch.Tensor
    curved_basis: torch.Tensor
    n_points: int
    n_eval: int
    softplus_beta: float | None
    elapsed: float = 0.0

    def summary(self) -> dict:
        return {"xi": self.xi, **{f"fooling_{k}": self.fooling.get(k) for k in KINDS}, "m_flat": self.m_flat,
                "m_curved": self.m_curved, "n_points": self.n_points, "n_eval": self.n_eval,
                "softplus_beta": self.softplus_beta, "elapsed": self.elapsed}

    def table(self) -> list[list[str]]:
        """The fooling rate at ``‖v‖₂ = ξ`` of each perturbation (the paper's ordering is top to bottom)."""
        return [["perturbation", "fooling rate"]] + [[k, fmt(self.fooling[k])] for k in KINDS if k in self.fooling]

    def plot_data(self, label: str) -> dict:
        """:func:`georobust.plots.universal_comparison` takes the fooling rates per model."""
        return {label: dict(self.fooling)}


def _random_in_span(basis: torch.Tensor | None, n: int, d: int, xi: float, g: torch.Generator,
                    like: torch.Tensor) -> torch.Tensor:
    """``n`` random vectors of L2 norm ``xi`` in the span of the rows of ``basis`` (isotropic if ``None``)."""
    if basis is None:
        z = torch.randn(n, d, generator=g, dtype=torch.float64)
    else:
        z = torch.randn(n, basis.shape[0], generator=g, dtype=torch.float64) @ basis.cpu().double()
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-30) * xi
    return z.to(like.device, like.dtype).reshape(n, *like.shape[1:])


@registry.analyses.register(
    "universal-geometry", summary="random, flat, curved and universal perturbations compared at equal L2 norm",
    plot="universal_comparison", plot_file="universal_comparison.png")
def universal_geometry(model, x, *, uap=None, xi: float | None = None, x_eval=None, m_flat: int = 10,
                       m_curved: int = 10, softplus_beta: float | None = 10.0, lanczos_steps: int | None = None,
                       overshoot: float = 0.02, max_iter: int = 50, clip: bool = True, seed: int = 0,
                       hvp_batch: int = 256) -> UniversalGeometry:
    """The four-way comparison of CVPR 2017 §4 / ICLR 2018 at equal L2 norm ξ (see the module docstring).

    Args:
        model: the classifier (eval mode).
        x: the images whose boundary points give the normals and the averaged Hessian (e.g. the UAP's
            training set, or a few hundred of it).
        uap: the universal perturbation (a :class:`UniversalResult` or a tensor shaped like one input); it is
            rescaled to L2 norm ξ. Without it the ``"uap"`` entry is left out.
        xi: the common L2 norm; default: the UAP's own L2 norm (required without ``uap``).
        x_eval: the images the fooling rates are measured on (default ``x``).
        m_flat, m_curved: dimensions of the flat (normals) and curved (Hessian) subspaces.
        softplus_beta: the Softplus(β) smoothing used for the Hessian of a ReLU network; ``None``: none.
        lanczos_steps: Krylov dimension of Lanczos (default ``max(2·m_curved + 20, 40)``).
        overshoot, max_iter: the DeepFool run that finds the boundary points (L2, unclipped, + bisection).
        clip: clamp ``x + v`` into the bounds when measuring fooling rates.
        seed: the random directions and the Lanczos start.
    """
    check_positive(m_flat, "m_flat", integer=True)
    check_positive(m_curved, "m_curved", integer=True)
    check_positive(seed, "seed", integer=True, allow_zero=True)
    check_positive(hvp_batch, "hvp_batch", integer=True)
    p = prepare(model, x)
    clf, x = p.clf, p.x
    d0 = x[0].numel()
    if m_flat > min(x.shape[0], d0):
        raise OptionError(f"m_flat = {m_flat} exceeds min(N, d) = {min(x.shape[0], d0)}: {x.shape[0]} images give at "
                          f"most that many independent boundary normals; use a smaller m_flat or more images")
    if m_curved > d0:
        raise OptionError(f"m_curved = {m_curved} exceeds the input dimension d = {d0}; use m_curved <= {d0}")
    pe = p if x_eval is None else prepare(clf, x_eval)
    xe, pred = pe.x, pe.pred
    v = None
    if uap is not None:
        v = uap.v if isinstance(uap, UniversalResult) else uap
        if not isinstance(v, torch.Tensor) or v.shape != x.shape[1:]:
            raise InputError(f"uap must be a UniversalResult or a tensor of shape {tuple(x.shape[1:])}")
        v = v.to(x.device, x.dtype)
        if float(v.norm()) == 0:
            raise InputError("the universal perturbation is zero; nothing to compare")
    if xi is None:
        if v is None:
            raise OptionError("give xi (the common L2 norm) or uap (whose L2 norm is then used)")
        xi = float(v.norm())
    check_positive(xi, "xi")
    t0 = time.perf_counter()
    d = x[0].numel()
    bp = _boundary_points(clf, x, p.pred, overshoot=overshoot, max_iter=max_iter)
    ok = bp.converged
    if int(ok.sum()) < 2:
        raise OptionError("fewer than two boundary points were found; use more images or a larger max_iter")
    pts, k_hat, other = bp.point[ok], bp.orig[ok], bp.other[ok]
    # flat model: unit normals ∇(f_l − f_k̂)/‖·‖ at the boundary points, their top right singular vectors
    normals, _ = unit_normals(clf, pts, k_hat, other, batch_size=hvp_batch)
    _, s, vh = torch.linalg.svd(normals.double(), full_matrices=False)
    mf = min(m_flat, vh.shape[0])
    if mf < m_flat:
        log.warning("universal_geometry: only %d boundary normals were found, so the flat subspace has dimension "
                    "%d, not m_flat = %d (the result records it as m_flat); use more images or a larger max_iter",
                    vh.shape[0], mf, m_flat)
    flat = vh[:mf].float()
    # curved model: top eigenvectors of the averaged Hessian of f_l − f_k̂ at the boundary points
    hmodel = smoothed(clf, softplus_beta) if softplus_beta is not None else clf
    mv = averaged_hvp(logit_diff_fn(hmodel, other, k_hat), pts, batch_size=hvp_batch)
    eig = lanczos(mv, 1, d, k=m_curved, which="largest", steps=lanczos_steps, vectors=True, seed=seed,
                  device=x.device, dtype=x.dtype)
    curved = eig.vectors[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_e = xe.shape[0]
    fool = {}
    for kind, basis in (("random", None), ("flat", flat), ("curved", curved)):
        fool[kind] = fooling_rate(clf, xe, _random_in_span(basis, n_e, d, xi, g, xe), pred=pred, clip=clip)
    if v is not None:
        fool["uap"] = fooling_rate(clf, xe, v / v.norm() * xi, pred=pred, clip=clip)
    out = UniversalGeometry(xi=float(xi), fooling=fool, m_flat=mf, m_curved=int(curved.shape[0]),
                            normal_singular_values=s.float().cpu(), hessian_eigenvalues=eig.values[0].cpu(),
                            flat_basis=flat.cpu(), curved_basis=curved.cpu(), n_points=int(ok.sum()), n_eval=n_e,
                            softplus_beta=softplus_beta, elapsed=time.perf_counter() - t0)
    log.info("universal geometry at ξ=%.4g: %s", xi, ", ".join(f"{k} {r:.3f}" for k, r in fool.items()))
    return out
