"""Boundary points and normals against an affine classifier; the normals' spectrum and the flat model."""

from __future__ import annotations

import torch
from conftest import make_affine

from georobust import registry
from georobust.geometry.normals import boundary_normals, boundary_points, normal_spectrum


def test_boundary_points_lie_on_the_boundary(mlp_digits, digits_test):
    x, _ = digits_test
    bp = boundary_points(mlp_digits, x[:20])
    z = mlp_digits(bp.point).detach()
    gap = z.gather(1, bp.orig[:, None]) - z.gather(1, bp.other[:, None])
    ok = bp.converged
    assert ok.float().mean() > 0.9
    assert (gap[ok].abs() < 1e-3 * z.abs().max()).all()
    assert (z[ok].argmax(1) == bp.other[ok]).all()


def test_affine_normals_are_the_weight_differences(affine, affine_data):
    nr = boundary_normals(affine, affine_data)
    w = affine.module.w.detach()
    expected = torch.nn.functional.normalize(w[nr.other] - w[nr.orig], dim=1)
    assert nr.converged.all()
    assert torch.allclose(nr.normals, expected, atol=1e-5)
    assert torch.allclose(nr.grad_norm, (w[nr.other] - w[nr.orig]).norm(dim=1), rtol=1e-5)


def test_normal_spectrum_binary_affine_is_rank_one():
    clf = make_affine(d=30, k=2, seed=1)
    g = torch.Generator().manual_seed(2)
    x = 0.4 + 0.2 * torch.rand(40, 30, generator=g)
    ns = normal_spectrum(clf, x, dims=(1, 5), seed=0)
    n = ns.n_normals
    # all normals are ±w/‖w‖: one singular value √N, the others zero; random unit vectors are spread out
    assert abs(float(ns.singular_values[0]) - n**0.5) < 1e-3
    assert float(ns.singular_values[1]) < 1e-3
    assert float(ns.random_singular_values[0]) < 0.6 * n**0.5
    # flat model: random vectors ±ε w/‖w‖ (ε = 2 median ‖r*‖) fool about half the points (the right sign
    # and ‖r*‖ < ε); isotropic vectors of the same norm almost none
    assert ns.fooling_subspace[0] > 0.25 and ns.fooling_subspace[0] > 5 * ns.fooling_isotropic
    again = normal_spectrum(clf, x, dims=(1, 5), seed=0)
    assert again.fooling_subspace == ns.fooling_subspace
    assert "normals" in registry.analyses
