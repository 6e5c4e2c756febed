"""Differentiable geometric transformations of images: a matrix Lie group acting on ``(N, C, H, W)`` images.

Pure torch (no torchvision). A transformation is a ``3 × 3`` homogeneous matrix ``M`` acting on **centred pixel
coordinates**: the origin is the image centre, ``x`` points right, ``y`` points down, the unit is one pixel.
The transformed image samples the input at ``M⁻¹ p`` for each output pixel ``p`` (divided by the third
homogeneous coordinate, so projective maps work), with bilinear interpolation by
:func:`torch.nn.functional.grid_sample` (``align_corners=False``); outside the image it reads black
(``padding="zeros"``, default), the nearest border pixel (``"border"``) or the mirror image (``"reflection"``).

Each transformation set is a Lie group parameterised through its Lie algebra: ``M = expm(Σ θ_i G_i)`` with the
basis :func:`generators` (Kanbak, Moosavi-Dezfooli & Frossard, "Geometric robustness of deep networks: analysis
and improvement", CVPR 2018, use the same parameterisation for ManiFool). Parameters, in order:

=======================  ==  ==========================================================================
set                      d   parameters ``θ``
=======================  ==  ==========================================================================
``translation``          2   ``tx, ty`` (pixels)
``rotation``             1   ``angle`` (radians, about the image centre; positive turns the picture
                             counter-clockwise as displayed, as :func:`torch.rot90` with ``k=1``)
``rotation-translation`` 3   ``tx, ty, angle``
``similarity``           4   ``tx, ty, angle, log-scale``
``affine``               6   ``tx, ty, angle, log-scale, aspect`` (``diag(1, -1)``), ``shear`` (symmetric)
``projective``           8   the affine six, then ``px, py`` (the perspective row, per pixel); its
                             log-scale generator is made traceless (``sl(3)``), same action on images
=======================  ==  ==========================================================================

Besides :func:`matrix`, :func:`warp` and :func:`transform`, the module gives what ManiFool needs and is plain
tensor maths: :func:`log_params` (the Lie-algebra coordinates of a group element, by the matrix logarithm),
:func:`tangent` (the Jacobian of the transformed image with respect to a left composition ``exp(Σ u_i G_i)·M``,
analytic through the image gradient or by finite differences) and :func:`geodesic_distance` (the length of the
image path along the straight Lie-algebra path, divided by ``‖x‖``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError, OptionError, unknown_name

TRANSFORM_SETS: dict[str, int] = {
    "translation": 2,
    "rotation": 1,
    "rotation-translation": 3,
    "similarity": 4,
    "affine": 6,
    "projective": 8,
}

PADDINGS = ("zeros", "border", "reflection")
#: offset (pixels) of the one-sided derivatives of the bilinear interpolant averaged by :func:`tangent`
_KNOT_STEP = 1e-6
MODES = ("bilinear", "nearest")

# The basis of gl(3) used by every set, by name: each set takes the first ``d`` of its list.
_BASIS = {
    "tx": ((0, 2, 1.0),),
    "ty": ((1, 2, 1.0),),
    # x' = x cos a - y sin a, y' = x sin a + y cos a: with y pointing down this turns the picture clockwise as
    # displayed; the generator below has the opposite sign, so positive angles turn it counter-clockwise.
    "angle": ((0, 1, 1.0), (1, 0, -1.0)),
    "scale": ((0, 0, 1.0), (1, 1, 1.0)),
    "aspect": ((0, 0, 1.0), (1, 1, -1.0)),
    "shear": ((0, 1, 1.0), (1, 0, 1.0)),
    # the projective set's scale: traceless (sl(3), the algebra of homographies); it differs from "scale" by a
    # multiple of the identity, which acts trivially on images, so both scale the picture by exp(s).
    "pscale": ((0, 0, 1.0 / 3), (1, 1, 1.0 / 3), (2, 2, -2.0 / 3)),
    "px": ((2, 0, 1.0),),
    "py": ((2, 1, 1.0),),
}
_SET_BASIS = {
    "translation": ("tx", "ty"),
    "rotation": ("angle",),
    "rotation-translation": ("tx", "ty", "angle"),
    "similarity": ("tx", "ty", "angle", "scale"),
    "affine": ("tx", "ty", "angle", "scale", "aspect", "shear"),
    "projective": ("tx", "ty", "angle", "pscale", "aspect", "shear", "px", "py"),
}


def check_set(name: str) -> str:
    """``name`` if it is a known transformation set, else an :class:`OptionError` listing the known ones."""
    if not isinstance(name, str) or name not in TRANSFORM_SETS:
        raise unknown_name("transformation set", str(name), TRANSFORM_SETS)
    return name


def parameter_names(name: str) -> tuple[str, ...]:
    """The names of the parameters of set ``name``, in order (``("tx", "ty", "angle")`` ...)."""
    return _SET_BASIS[check_set(name)]


def generators(name: str, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """A basis ``(d, 3, 3)`` of the Lie algebra of set ``name``, acting on centred pixel coordinates."""
    names = parameter_names(name)
    g = torch.zeros(len(names), 3, 3, dtype=dtype, device=device)
    for i, n in enumerate(names):
        for r, c, v in _BASIS[n]:
            g[i, r, c] = v
    return g


def _check_theta(name: str, theta: torch.Tensor) -> torch.Tensor:
    d = TRANSFORM_SETS[check_set(name)]
    if not isinstance(theta, torch.Tensor):
        raise InputError(f"theta must be a torch.Tensor of shape (N, {d}), got {type(theta).__name__}")
    if theta.ndim != 2 or theta.shape[1] != d:
        raise InputError(f"theta for the {name!r} set must have shape (N, {d}), got {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise InputError(f"theta must be a floating-point tensor, got {theta.dtype}")
    if not torch.isfinite(theta).all():
        raise InputError("theta contains NaN or inf; give finite transformation parameters")
    return theta


def algebra(name: str, theta: torch.Tensor) -> torch.Tensor:
    """The Lie-algebra element ``Σ θ_i G_i`` ``(N, 3, 3)`` for ``theta`` ``(N, d)``."""
    theta = _check_theta(name, theta)
    g = generators(name, dtype=theta.dtype, device=theta.device)
    return torch.einsum("nd,dij->nij", theta, g)


def matrix(name: str, theta: torch.Tensor) -> torch.Tensor:
    """The group element ``expm(Σ θ_i G_i)`` ``(N, 3, 3)`` for ``theta`` ``(N, d)``."""
    return torch.linalg.matrix_exp(algebra(name, theta))


def _check_image(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}; a flat (N, D) input "
                         f"has no geometry: reshape it to images first")
    if not x.is_floating_point():
        raise InputError(f"images must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError("images contain NaN or inf")


def _check_matrix(M: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(M, torch.Tensor) or not M.is_floating_point():
        raise InputError("M must be a floating-point torch.Tensor of shape (3, 3) or (N, 3, 3)")
    if M.ndim == 2:
        M = M.unsqueeze(0)
    if M.ndim != 3 or M.shape[1:] != (3, 3) or M.shape[0] not in (1, n):
        raise InputError(f"M must have shape (3, 3) or ({n}, 3, 3), got {tuple(M.shape)}")
    if not torch.isfinite(M).all():
        raise InputError("M contains NaN or inf")
    return M.expand(n, 3, 3)


def pixel_coordinates(h: int, w: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Homogeneous centred coordinates ``(H, W, 3)`` of the pixel centres: ``(j − (W−1)/2, i − (H−1)/2, 1)``."""
    ys = torch.arange(h, dtype=dtype, device=device) - (h - 1) / 2
    xs = torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy, torch.ones_like(xx)], dim=-1)


def _sample(x: torch.Tensor, q: torch.Tensor, padding: str, mode: str) -> torch.Tensor:
    """Sample ``x`` at centred pixel coordinates ``q`` ``(N, H', W', 2)``."""
    h, w = x.shape[-2:]
    # align_corners=False: pixel j's centre is at normalised (2j + 1)/W − 1 = 2·(j − (W−1)/2)/W.
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=q.dtype, device=q.device)
    grid = (q * scale).to(x.dtype)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


def _source_points(M: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Where each output pixel reads the input: ``M⁻¹ p`` dehomogenised, ``(N, H, W, 2)``."""
    p = pixel_coordinates(h, w, dtype=M.dtype, device=M.device)
    q = torch.einsum("nij,hwj->nhwi", torch.linalg.inv(M), p)
    return q[..., :2] / q[..., 2:]


def _check_kw(padding: str, mode: str) -> None:
    if padding not in PADDINGS:
        raise unknown_name("padding", str(padding), PADDINGS)
    if mode not in MODES:
        raise unknown_name("interpolation mode", str(mode), MODES)


def warp(x: torch.Tensor, M: torch.Tensor, *, padding: str = "zeros", mode: str = "bilinear") -> torch.Tensor:
    """The images ``x`` ``(N, C, H, W)`` transformed by ``M`` (``(3, 3)`` or ``(N, 3, 3)``): output pixel ``p``
    samples the input at ``M⁻¹ p``. Differentiable in ``x`` and ``M``; the identity returns ``x`` to round-off."""
    _check_image(x)
    _check_kw(padding, mode)
    M = _check_matrix(M, x.shape[0])
    return _sample(x, _source_points(M, *x.shape[-2:]), padding, mode)


def transform(x: torch.Tensor, name: str, theta: torch.Tensor, **kw) -> torch.Tensor:
    """``warp(x, matrix(name, theta), **kw)``."""
    return warp(x, matrix(name, theta), **kw)


def _logm(A: torch.Tensor, terms: int = 24) -> torch.Tensor:
    """Principal matrix logarithm of a batch ``(N, 3, 3)`` by inverse scaling and squaring: square roots
    (Denman–Beavers) until ``‖A − I‖ < 0.05``, then the Gregory series of ``log(I + X)``."""
    eye = torch.eye(3, dtype=A.dtype, device=A.device).expand_as(A)
    k = 0
    while bool((torch.linalg.matrix_norm(A - eye) >= 0.05).any()) and k < 40:
        y, z = A, eye.clone()
        for _ in range(60):
            y, z = 0.5 * (y + torch.linalg.inv(z)), 0.5 * (z + torch.linalg.inv(y))
        A, k = y, k + 1
    X = A - eye
    out, power = torch.zeros_like(A), eye
    for j in range(1, terms + 1):
        power = power @ X
        out = out + ((-1) ** (j + 1) / j) * power
    return out * (2.0 ** k)


def log_params(name: str, M: torch.Tensor) -> torch.Tensor:
    """The Lie-algebra coordinates ``θ`` ``(N, d)`` with ``expm(Σ θ_i G_i) = M`` for ``M`` ``(N, 3, 3)`` in the
    group of set ``name`` (the principal logarithm, projected on the set's basis by least squares: for a
    member of the group the projection is exact; rotations must be below π)."""
    d = TRANSFORM_SETS[check_set(name)]
    if M.ndim != 3 or M.shape[1:] != (3, 3):
        raise InputError(f"M must have shape (N, 3, 3), got {tuple(M.shape)}")
    L = _logm(M.to(torch.float64))
    g = generators(name, dtype=torch.float64, device=M.device).reshape(d, 9)
    sol = torch.linalg.lstsq(g.T.expand(M.shape[0], 9, d), L.reshape(-1, 9, 1)).solution
    return sol.squeeze(-1).to(M.dtype)


def _vector_fields(name: str, M: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``∂q/∂u_i`` ``(N, d, H, W, 2)``: how the source point ``q(p) = π((exp(Σu G) M)⁻¹ p)`` of each output
    pixel moves when the transformation is composed on the left with ``exp(Σ u_i G_i)``, at ``u = 0``.
    With ``s = M⁻¹ p`` (homogeneous): ``∂s/∂u_i = −M⁻¹ G_i p`` and ``π(s) = s_xy / s_z``."""
    g = generators(name, dtype=M.dtype, device=M.device)
    p = pixel_coordinates(h, w, dtype=M.dtype, device=M.device)
    Minv = torch.linalg.inv(M)
    s = torch.einsum("nij,hwj->nhwi", Minv, p)                                 # (N, H, W, 3)
    ds = -torch.einsum("nij,djk,hwk->ndhwi", Minv, g, p)                       # (N, d, H, W, 3)
    sz = s[..., 2:].unsqueeze(1)
    return ds[..., :2] / sz - s[..., :2].unsqueeze(1) * ds[..., 2:] / sz ** 2


def tangent(x: torch.Tensor, name: str, M: torch.Tensor, *, padding: str = "zeros", method: str = "analytic",
            fd_step: float = 1e-4) -> torch.Tensor:
    """The Jacobian ``(N, d, C, H, W)`` of ``u ↦ warp(x, expm(Σ u_i G_i) · M)`` at ``u = 0``: the tangent space
    of the transformation manifold of ``x`` at the image ``warp(x, M)``, in left-composition coordinates.

    ``method="analytic"``: the chain rule ``∂I(q)/∂u_i = ∇I(q) · ∂q/∂u_i``, with ``∇I(q)`` the gradient of the
    bilinear interpolant at the source point ``q`` (from grid_sample's backward pass, one per channel, in
    float64; on a grid line, where the interpolant has a kink, the mean of the two one-sided derivatives, so
    that at the identity it is the central difference of the image) and ``∂q/∂u_i`` in closed form. ``method="numerical"``: central finite differences with step ``fd_step``
    (a check of the analytic one). Bilinear interpolation is not differentiable where a source point crosses
    the pixel grid; the two agree away from such points.
    """
    _check_image(x)
    _check_kw(padding, "bilinear")
    d = TRANSFORM_SETS[check_set(name)]
    n, c, h, w = x.shape
    M = _check_matrix(M, n).to(torch.float64)
    xd = x.detach().to(torch.float64)
    if method == "numerical":
        g = generators(name, dtype=torch.float64, device=x.device)
        cols = []
        for i in range(d):
            e = torch.linalg.matrix_exp(fd_step * g[i])
            plus = _sample(xd, _source_points(e @ M, h, w), padding, "bilinear")
            minus = _sample(xd, _source_points(torch.linalg.inv(e) @ M, h, w), padding, "bilinear")
            cols.append((plus - minus) / (2 * fd_step))
        return torch.stack(cols, dim=1).to(x.dtype)
    if method != "analytic":
        raise unknown_name("Jacobian method", str(method), ("analytic", "numerical"))
    # The bilinear interpolant is not differentiable across the pixel grid, and at the identity every source
    # point lies on it: each partial derivative is the mean of its two one-sided values (the central difference
    # at a pixel centre, the exact derivative elsewhere), from grid_sample's backward at q ± h along that axis.
    q = _source_points(M, h, w)
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=q.dtype, device=q.device)
    grads = torch.zeros(n, c, h, w, 2, dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        for axis in (0, 1):
            for sign in (1.0, -1.0):
                shift = torch.zeros(2, dtype=q.dtype, device=q.device)
                shift[axis] = sign * _KNOT_STEP
                grid = ((q + shift) * scale).detach().requires_grad_(True)
                out = F.grid_sample(xd, grid, mode="bilinear", padding_mode=padding, align_corners=False)
                for ch in range(c):
                    (gq,) = torch.autograd.grad(out[:, ch].sum(), grid, retain_graph=ch < c - 1)
                    grads[:, ch, ..., axis] += 0.5 * gq[..., axis] * scale[axis]      # d I / d q, pixel units
    v = _vector_fields(name, M, h, w)                                      # (N, d, H, W, 2)
    return torch.einsum("nchwk,ndhwk->ndchw", grads, v).to(x.dtype)


def geodesic_distance(x: torch.Tensor, name: str, theta: torch.Tensor, *, padding: str = "zeros",
                      segments: int = 100) -> torch.Tensor:
    """The length of the image path ``t ↦ transform(x, name, t·θ)``, ``t ∈ [0, 1]``, divided by ``‖x‖₂``: the
    geodesic distance of ManiFool along the straight Lie-algebra path (Kanbak et al., CVPR 2018, §3).

    Computed as the length of the polyline through ``segments + 1`` equally spaced points of the path
    (converges from below as ``segments`` grows; 100 is within a fraction of a percent on 28×28 images).
    """
    _check_image(x)
    theta = _check_theta(name, theta)
    if theta.shape[0] != x.shape[0]:
        raise InputError(f"theta has {theta.shape[0]} rows but there are {x.shape[0]} images")
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise OptionError(f"segments must be a positive integer, got {segments!r}")
    n = x.shape[0]
    length = torch.zeros(n, dtype=torch.float64, device=x.device)
    prev = x
    for k in range(1, segments + 1):
        cur = transform(x, name, theta * (k / segments), padding=padding)
        length += (cur - prev).flatten(1).to(torch.float64).norm(dim=1)
        prev = cur
    norm = x.flatten(1).to(torch.float64).norm(dim=1)
    return (length / norm.clamp_min(1e-12)).to(x.dtype)


def degrees(angle: float) -> float:
    """Radians to degrees (a convenience for reports)."""
    return angle * 180.0 / math.pi
