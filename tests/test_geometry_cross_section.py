"""Normal cross-sections: grids against direct evaluation, flat sections of an affine classifier."""

from __future__ import annotations

import pytest
import torch
from conftest import make_affine

from georobust import registry
from georobust.errors import InputError, OptionError
from georobust.geometry.cross_section import cross_section


def test_grid_matches_direct_evaluation(mlp_digits, digits_test):
    x, _ = digits_test
    cs = cross_section(mlp_digits, x[:3], resolution=(9, 7), scale=(2.0, 5.0), seed=0, chunk=50)
    assert cs.labels.shape == (3, 9, 7)
    for i in range(3):
        for ia, ib in ((0, 0), (4, 3), (8, 6), (6, 1)):
            p = x[i] + (cs.a[i, ia] * cs.normal[i] + cs.b[i, ib] * cs.second[i]).reshape(x[i].shape)
            assert int(mlp_digits(p[None]).argmax(1)) == int(cs.labels[i, ia, ib])
    assert torch.allclose((cs.normal * cs.second).sum(1), torch.zeros(3), atol=1e-6)
    assert cs.labels[:, cs.labels.shape[1] // 2, cs.labels.shape[2] // 2].eq(cs.orig).all()  # x itself
    again = cross_section(mlp_digits, x[:3], resolution=(9, 7), scale=(2.0, 5.0), seed=0)
    assert torch.equal(cs.labels, again.labels) and torch.equal(cs.second, again.second)


def test_affine_cross_section_is_flat():
    clf = make_affine(d=20, k=2, seed=3)
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(5, 20, generator=g)
    cs = cross_section(clf, x, resolution=40, scale=(2.0, 50.0))  # no grid row exactly on the boundary
    # the boundary is the straight line a = ‖r*‖: every row (fixed a) is one class, whatever b
    assert (cs.labels == cs.labels[:, :, :1]).all()
    a_cross = cs.a.gather(1, (cs.labels[:, :, 0] != cs.orig[:, None]).int().argmax(1, keepdim=True)).squeeze(1)
    step = cs.a[:, 1] - cs.a[:, 0]
    assert ((a_cross - cs.r_norm).abs() <= step + 1e-6).all()
    assert cs.boundary_mask().any(2).sum(1).eq(1).all()  # one boundary row per sample


def test_given_second_direction_and_errors(affine, affine_data):
    u = torch.randn(1, 20, generator=torch.Generator().manual_seed(1))
    cs = cross_section(affine, affine_data[:4], second=u, resolution=5)
    assert cs.second_kind == "given" and torch.allclose(cs.second.norm(dim=1), torch.ones(4))
    with pytest.raises(InputError):
        cross_section(affine, affine_data[:4], second=torch.randn(3, 7))
    with pytest.raises(OptionError):
        cross_section(affine, affine_data[:4], second="sideways")
    with pytest.raises(OptionError):
        cross_section(affine, affine_data[:4], resolution=0)
    assert "cross-section" in registry.analyses
