"""Curvature profile of the loss and principal curvatures of the boundary, against exact answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from georobust import Classifier, registry
from georobust.errors import OptionError
from georobust.geometry.curvature import boundary_curvature, curvature_profile, smoothed
from georobust.geometry.hessian import dense_hessian, loss_fn


class Sphere(nn.Module):
    """Two classes split by the sphere ‖x − c‖ = R: every principal curvature is exactly −1/R."""

    def __init__(self, c, radius):
        super().__init__()
        self.register_buffer("c", c)
        self.radius = radius

    def forward(self, x):
        f0 = 0.5 * (self.radius**2 - ((x - self.c) ** 2).sum(1))
        return torch.stack([f0, torch.zeros_like(f0)], 1)


def test_sphere_boundary_curvature_is_minus_one_over_radius():
    d, radius = 12, 0.3
    model = Classifier(Sphere(torch.full((d,), 0.5), radius)).eval()
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.05 * torch.randn(8, d, generator=g)
    bc = boundary_curvature(model, x, k=3)
    assert bc.converged.all()
    assert torch.allclose(bc.largest, torch.full_like(bc.largest, -1 / radius), rtol=1e-4)
    assert torch.allclose(bc.smallest, torch.full_like(bc.smallest, -1 / radius), rtol=1e-4)
    # the boundary point lies on the sphere and r* is radial: ‖r*‖ = R − ‖x − c‖
    assert torch.allclose((bc.points - 0.5).norm(dim=1), torch.full((8,), radius), atol=1e-4)
    assert torch.allclose(bc.r_norm, radius - (x - 0.5).norm(dim=1), atol=1e-4)
    assert torch.allclose(bc.relative, bc.r_norm / radius, rtol=1e-4)


def test_affine_classifier_has_zero_curvature(affine, affine_data):
    bc = boundary_curvature(affine, affine_data[:16], k=3)
    assert bc.converged.all()
    assert bc.largest.abs().max() == 0 and bc.smallest.abs().max() == 0
    prof = curvature_profile(affine, affine_data[:4], k=3)
    # CE of an affine model is still curved through the softmax: PSD, rank <= K - 1 = 4
    assert prof.values.min() > -1e-6 and prof.values[:, 4:].abs().max() < 1e-5


def test_relu_boundary_is_flat_and_softplus_is_not(mlp_digits, digits_test):
    x, _ = digits_test
    bc = boundary_curvature(mlp_digits, x[:6], k=2)
    assert bc.largest.abs().max() == 0  # piecewise linear: zero Hessian of the logit difference
    sm = smoothed(mlp_digits, 5.0)
    assert not any(isinstance(m, nn.ReLU) for m in sm.modules())
    assert any(isinstance(m, nn.ReLU) for m in mlp_digits.modules())  # the original is untouched
    bs = boundary_curvature(mlp_digits, x[:6], k=2, softplus_beta=5.0)
    assert bs.converged.all() and (bs.max_abs > 0).all()
    assert (bs.largest[:, 0] >= bs.largest[:, 1]).all() and (bs.smallest[:, 0] <= bs.smallest[:, 1]).all()


def test_curvature_profile_matches_dense(mlp_digits, digits_test):
    x, y = digits_test
    x, y = x[:3], y[:3]
    prof = curvature_profile(mlp_digits, x, y, k=3)
    ref = torch.linalg.eigvalsh(dense_hessian(loss_fn(mlp_digits, y), x).double())
    top = ref.flip(1)[:, :3]
    assert torch.allclose(prof.values[:, :3].double(), top, rtol=1e-3, atol=1e-5 * float(top.max()))
    assert (prof.values[:, :-1] >= prof.values[:, 1:] - 1e-6).all()  # decreasing
    again = curvature_profile(mlp_digits, x, y, k=3)
    assert torch.equal(prof.values, again.values)  # seeded


def test_registered_and_errors(affine, affine_data):
    assert "curvature" in registry.analyses and "curvature-profile" in registry.analyses
    with pytest.raises(OptionError):
        boundary_curvature(affine, affine_data, k=0)
    with pytest.raises(OptionError):
        boundary_curvature(affine, affine_data, softplus_beta=-1.0)
