"""The transformation group of ``georobust.core.transforms``: Lie algebra, exponential and logarithm against
scipy, warps against exact pixel operations (identity, rot90, integer shifts), the tangent space (analytic vs
finite differences) and the geodesic distance."""

import math

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from georobust.core import transforms as T
from georobust.errors import InputError, OptionError

SETS = list(T.TRANSFORM_SETS)


def _smooth(n=2, c=1, h=12, w=12, dtype=torch.float64, seed=0, sigma=1.5):
    """A smooth blob well inside the frame (so border effects vanish up to round-off)."""
    g = torch.Generator().manual_seed(seed)
    p = T.pixel_coordinates(h, w, dtype=dtype)
    out = []
    for _ in range(n * c):
        cx, cy = (torch.rand(2, generator=g, dtype=dtype) - 0.5) * 2
        out.append(torch.exp(-((p[..., 0] - cx) ** 2 + (p[..., 1] - cy) ** 2) / (2 * sigma ** 2)))
    return torch.stack(out).reshape(n, c, h, w)


def test_sets_and_generators_shapes():
    assert T.TRANSFORM_SETS == {"translation": 2, "rotation": 1, "rotation-translation": 3, "similarity": 4,
                                "affine": 6, "projective": 8}
    for name, d in T.TRANSFORM_SETS.items():
        g = T.generators(name)
        assert g.shape == (d, 3, 3) and g.dtype == torch.float64
        # linearly independent
        assert torch.linalg.matrix_rank(g.reshape(d, 9)) == d
        if name != "projective":
            assert torch.all(g[:, 2] == 0)  # affine: last row of the algebra is zero


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_identity_is_identity(name, dtype, padding):
    x = torch.rand(3, 2, 7, 10, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = T.transform(x, name, torch.zeros(3, T.TRANSFORM_SETS[name], dtype=dtype), padding=padding)
    tol = 4 * torch.finfo(dtype).eps
    assert torch.allclose(y, x, atol=tol, rtol=0)


@pytest.mark.parametrize("size", [8, 9])
def test_rotation_by_90_degrees_is_rot90(size):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for k in (1, -1, 2):
        y = T.transform(x, "rotation", torch.full((2, 1), k * math.pi / 2, dtype=torch.float64))
        r = torch.rot90(x, k, dims=(2, 3))
        # The rotated pixel centres land on pixel centres (up to cos(π/2) round-off): exact everywhere except the
        # border, where a source point a hair outside the frame mixes in padding.
        inner = (y - r)[..., 1:-1, 1:-1].abs().max()
        assert inner < 1e-12


def test_integer_translation_is_a_shift_with_black_fill():
    x = torch.rand(2, 1, 9, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = T.transform(x, "translation", torch.tensor([[2.0, -1.0], [2.0, -1.0]], dtype=torch.float64))
    expect = torch.zeros_like(x)
    expect[..., 0:8, 2:] = x[..., 1:9, :9]          # content moves right by 2, up by 1 (y points down)
    assert torch.allclose(y, expect, atol=1e-12)


@pytest.mark.parametrize("name", SETS)
def test_matrix_is_scipy_expm_and_composition_inverse_match_logm(name):
    d = T.TRANSFORM_SETS[name]
    g = torch.Generator().manual_seed(4)
    a = 0.2 * torch.randn(5, d, generator=g, dtype=torch.float64)
    b = 0.2 * torch.randn(5, d, generator=g, dtype=torch.float64)
    A, B = T.matrix(name, a), T.matrix(name, b)
    gen = T.generators(name).numpy()
    for i in range(5):
        la = np.einsum("d,dij->ij", a[i].numpy(), gen)
        np.testing.assert_allclose(A[i].numpy(), sl.expm(la), atol=1e-12)
        # inverse: exp(-X) = exp(X)^-1, and logm of the inverse is -X
        np.testing.assert_allclose(T.matrix(name, -a[i:i + 1])[0].numpy(), np.linalg.inv(sl.expm(la)), atol=1e-12)
        # composition: the group element A·B, its logarithm (ours) is scipy's logm and lies in the algebra
        AB = (A[i] @ B[i]).numpy()
        th = T.log_params(name, torch.from_numpy(AB)[None])[0].numpy()
        np.testing.assert_allclose(np.einsum("d,dij->ij", th, gen), np.real(sl.logm(AB)), atol=1e-10)
        np.testing.assert_allclose(sl.expm(np.einsum("d,dij->ij", th, gen)), AB, atol=1e-10)
    # log_params inverts matrix
    assert torch.allclose(T.log_params(name, A), a, atol=1e-10)


def test_composition_of_warps_translations_exact():
    # integer translations compose exactly (no interpolation): warp(warp(x, A), B) = warp(x, B·A) inside
    x = _smooth(2, 1, 12, 12)
    A = T.matrix("translation", torch.tensor([[1.0, 2.0]] * 2, dtype=torch.float64))
    B = T.matrix("translation", torch.tensor([[-3.0, 1.0]] * 2, dtype=torch.float64))
    two = T.warp(T.warp(x, A), B)
    one = T.warp(x, B @ A)
    assert torch.allclose(two[..., 4:-4, 4:-4], one[..., 4:-4, 4:-4], atol=1e-12)
    # and the inverse brings a smooth centred image back, up to bilinear interpolation error: for a unit
    # Gaussian of width σ, |f_xx| + |f_yy| <= 2/σ², one interpolation errs by at most (1/8)·2/σ² (pixel units)
    # and the second, of an interpolant, at most as much again plus the first: 1/σ² bounds the round trip.
    sigma = 3.0
    x = _smooth(2, 1, 24, 24, sigma=sigma)
    R = T.matrix("similarity", torch.tensor([[0.5, -0.3, 0.4, 0.1]] * 2, dtype=torch.float64))
    back = T.warp(T.warp(x, R), torch.linalg.inv(R))
    assert (back - x).abs().max() < 1 / sigma ** 2


@pytest.mark.parametrize("name", SETS)
def test_tangent_analytic_matches_finite_differences(name):
    d = T.TRANSFORM_SETS[name]
    x = torch.rand(3, 2, 9, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    theta = 0.05 * torch.randn(3, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    if d == 8:
        theta[:, 6:] *= 0.01  # perspective terms are per pixel
    M = T.matrix(name, theta)
    ja = T.tangent(x, name, M)
    jn = T.tangent(x, name, M, method="numerical", fd_step=1e-6)
    assert ja.shape == (3, d, 2, 9, 9)
    # bilinear interpolation is piecewise bilinear: central differences of step 1e-6 agree to ~1e-9 unless a
    # source point sits within 1e-6 px of a grid line (measure zero for these random parameters).
    assert (ja - jn).abs().max() < 1e-6 * ja.abs().max()


def test_tangent_matches_autograd_through_warp():
    name = "similarity"
    x = _smooth(2, 1, 10, 10)
    theta = torch.tensor([[0.3, -0.2, 0.1, 0.05], [0.0, 0.4, -0.2, -0.1]], dtype=torch.float64)
    M = T.matrix(name, theta)
    ja = T.tangent(x, name, M)
    u = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 10, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (g,) = torch.autograd.grad((T.warp(x, T.matrix(name, u) @ M) * w).sum(), u)
    assert torch.allclose(g, torch.einsum("ndchw,nchw->nd", ja, w), atol=1e-10)


def test_geodesic_distance():
    x = _smooth(2, 1, 16, 16)
    zero = T.geodesic_distance(x, "rotation-translation", torch.zeros(2, 3, dtype=torch.float64))
    assert torch.all(zero == 0)
    theta = torch.tensor([[1.5, -0.5, 0.3], [0.0, 2.0, -0.4]], dtype=torch.float64)
    d100 = T.geodesic_distance(x, "rotation-translation", theta)
    d1000 = T.geodesic_distance(x, "rotation-translation", theta, segments=1000)
    chord = (T.transform(x, "rotation-translation", theta) - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert torch.all(chord <= d100 + 1e-12) and torch.all(d100 <= d1000 + 1e-12)   # polyline: monotone
    assert torch.allclose(d100, d1000, rtol=5e-3)
    # translation of a wide Gaussian by t along x: ‖∂x I‖·t / ‖I‖ = t / (√2·σ) for a continuous Gaussian
    p = T.pixel_coordinates(64, 64, dtype=torch.float64)
    sigma = 5.0
    blob = torch.exp(-(p[..., 0] ** 2 + p[..., 1] ** 2) / (2 * sigma ** 2))[None, None]
    dist = T.geodesic_distance(blob, "translation", torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    assert abs(float(dist) - 2.0 / (math.sqrt(2) * sigma)) < 0.02 * 2.0 / (math.sqrt(2) * sigma)


def test_differentiable_in_x_and_matrix():
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8), requires_grad=True)
    M = T.matrix("affine", torch.tensor([[0.21, -0.13, 0.17, 0.05, 0.03, -0.04]], dtype=torch.float64))
    M = M.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, m: T.warp(a, m), (x, M))


def test_bad_input():
    x = torch.rand(2, 1, 6, 6)
    with pytest.raises(OptionError, match="transformation set"):
        T.generators("rotate")
    with pytest.raises(OptionError, match="transformation set"):
        T.matrix("shear", torch.zeros(2, 1))
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        T.matrix("rotation-translation", torch.zeros(2, 2))
    with pytest.raises(InputError, match="NaN"):
        T.matrix("rotation", torch.tensor([[float("nan")]]))
    with pytest.raises(InputError, match="flat"):
        T.warp(torch.rand(2, 36), torch.eye(3))
    with pytest.raises(InputError, match="NaN"):
        T.warp(torch.full((1, 1, 4, 4), float("inf")), torch.eye(3))
    with pytest.raises(InputError, match="floating"):
        T.warp(torch.zeros(1, 1, 4, 4, dtype=torch.int64), torch.eye(3))
    with pytest.raises(InputError, match="M must have shape"):
        T.warp(x, torch.eye(3).expand(3, 3, 3))
    with pytest.raises(OptionError, match="padding"):
        T.warp(x, torch.eye(3), padding="constant")
    with pytest.raises(OptionError, match="Jacobian method"):
        T.tangent(x, "rotation", torch.eye(3), method="exact")
    with pytest.raises(OptionError, match="segments"):
        T.geodesic_distance(x, "rotation", torch.zeros(2, 1), segments=0)


def test_tangent_at_identity_is_central_difference():
    # at the identity every source point is a pixel centre, where the bilinear interpolant has a kink: the
    # tangent of a translation is minus the central difference of the image (interior pixels), not a one-sided one
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    j = T.tangent(x, "translation", torch.eye(3, dtype=torch.float64))
    dx = (x[..., 2:] - x[..., :-2]) / 2
    dy = (x[..., 2:, :] - x[..., :-2, :]) / 2
    assert torch.allclose(j[:, 0, ..., 1:-1], -dx, atol=1e-9)
    assert torch.allclose(j[:, 1, ..., 1:-1, :], -dy, atol=1e-9)
    jn = T.tangent(x, "rotation-translation", torch.eye(3, dtype=torch.float64), method="numerical", fd_step=1e-7)
    ja = T.tangent(x, "rotation-translation", torch.eye(3, dtype=torch.float64))
    assert torch.allclose(ja, jn, atol=1e-6)
