"""SparseFool: the greedy L1 solver against linear programming, the affine closed form, the box, the peer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_affine
from scipy.optimize import linprog
from torch import nn

from georobust import Classifier
from georobust.attacks.sparsefool import changed_pixels, linear_solver, sparsefool
from georobust.errors import OptionError


def _lp_l1(x, w, xb, lb, ub):
    """min ‖x' − x‖₁ s.t. wᵀ(x' − xb) = 0, lb ≤ x' ≤ ub, as an LP in (r⁺, r⁻)."""
    d = x.numel()
    x, w, xb, lb, ub = (t.double().numpy() for t in (x, w, xb, lb, ub))
    c = np.ones(2 * d)
    a_eq = np.concatenate([w, -w])[None]
    b_eq = [w @ (xb - x)]
    bounds = [(0, max(ub[j] - x[j], 0)) for j in range(d)] + [(0, max(x[j] - lb[j], 0)) for j in range(d)]
    sol = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    assert sol.status == 0
    return sol.fun


def test_solver_single_coordinate_when_box_allows():
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(8, 30, generator=g)
    w = torch.randn(8, 30, generator=g)
    w = w / w.norm(dim=1, keepdim=True)
    xb = x + 0.01 * w  # plane close by: the largest |w_j| alone reaches it inside [0, 1]
    lb, ub = torch.zeros_like(x), torch.ones_like(x)
    out, reached = linear_solver(x, w, xb, lb, ub)
    assert reached.all()
    r = out - x
    assert ((r != 0).sum(1) == 1).all()  # the L1-optimal vertex: one coordinate
    jstar = w.abs().argmax(1)
    assert torch.equal(r.abs().argmax(1), jstar)
    gap = ((xb - x) * w).sum(1)
    torch.testing.assert_close(r.abs().sum(1), gap.abs() / w.abs().amax(1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(((out - xb) * w).sum(1), torch.zeros(8), atol=1e-6, rtol=0)


def test_solver_matches_linear_program_with_active_box():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 25, generator=g)
    w = torch.randn(6, 25, generator=g)
    xb = x + 0.4 * w / w.norm(dim=1, keepdim=True) * torch.tensor([1, -1, 1, 2, -2, 3.0])[:, None]
    lb = (x - 0.15).clamp_min(0)
    ub = (x + 0.15).clamp_max(1)
    out, reached = linear_solver(x, w, xb, lb, ub)
    assert (out >= lb - 1e-7).all() and (out <= ub + 1e-7).all()
    for i in range(6):
        if reached[i]:
            assert abs(float(((out[i] - xb[i]) * w[i]).sum())) < 1e-5  # on the hyperplane
            opt = _lp_l1(x[i], w[i], xb[i], lb[i], ub[i])
            assert float((out[i] - x[i]).abs().sum()) == pytest.approx(opt, rel=1e-5, abs=1e-6)
    assert reached.sum() >= 3


def test_solver_unreachable_plane_goes_to_the_box():
    x = torch.full((1, 4), 0.5)
    w = torch.tensor([[1.0, 0.5, 0.0, -0.25]])
    xb = x + 10 * w
    out, reached = linear_solver(x, w, xb, torch.zeros_like(x), torch.ones_like(x))
    assert not reached.any()
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 0.5, 0.0]]))


def test_affine_binary_is_minimal_l1_with_lambda_one():
    clf = make_affine(d=20, k=2, seed=3)
    g = torch.Generator().manual_seed(2)
    x = 0.45 + 0.1 * torch.rand(32, 20, generator=g)
    w = clf.module.w.detach()
    z = clf(x).detach()
    y = z.argmax(1)
    wd = (w[1] - w[0]).abs().amax()
    l1_min = (z[:, 1] - z[:, 0]).abs() / wd
    res = sparsefool(clf, x, lambda_=1.0)
    assert res.success.all()
    ok = l1_min < 0.4  # the single coordinate fits in the box
    assert ok.sum() > 5
    # closed form: (1+ε)·(L1_min + DeepFool's 1e-4 L2 step slack mapped to L1: 1e-4·‖w‖₂/‖w‖∞)
    expected = 1.02 * (l1_min + 1e-4 * (w[1] - w[0]).norm() / wd)
    torch.testing.assert_close(res.l1[ok], expected[ok].double(), rtol=1e-3, atol=1e-6)
    assert (res.l0[ok] == 1).all()
    assert torch.equal(res.label_adv[ok], 1 - y[ok])


def test_box_never_violated_and_success_verified():
    clf = make_affine(d=20, k=5, seed=0)
    x = 0.3 + 0.4 * torch.rand(64, 20, generator=torch.Generator().manual_seed(1))
    res = sparsefool(clf, x, delta=0.2)
    r = res.x_adv - res.x
    assert r.abs().max() <= 0.2 + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(res.success, clf(res.x_adv).argmax(1) != res.y)
    assert res.success_rate > 0.9
    assert res.params["lambda_"] == 3.0 and res.params["max_iter"] == 20


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.f = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.f(torch.relu(self.c(x)).flatten(1))


def test_three_channels_and_pixel_sparsity():
    clf = Classifier(_Conv()).eval()
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    res = sparsefool(clf, x)
    assert res.success.all()
    px = changed_pixels(res.x, res.x_adv)
    assert ((px * 64).round() <= res.l0).all()  # positions ≤ changed coordinates
    assert ((px * 64 * 3).round() >= res.l0).all()
    assert float(px.median()) < 0.5


def test_misclassified_zero_and_options(mlp_digits, digits_test):
    x, y = digits_test
    x, y = x[:40], y[:40]
    yw = y.clone()
    pred = mlp_digits(x).argmax(1)
    wrong = pred != yw
    res = sparsefool(mlp_digits, x, yw)
    assert (res.l0[wrong] == 0).all()
    assert res.success_rate > 0.9
    with pytest.raises(OptionError):
        sparsefool(mlp_digits, x, lambda_=0.5)
    with pytest.raises(OptionError):
        sparsefool(mlp_digits, x, norm=2)


@pytest.mark.slow
def test_against_torchattacks_on_lenet():
    torchattacks = pytest.importorskip("torchattacks")
    from conftest import fmnist_available

    if not fmnist_available():
        pytest.skip("Fashion-MNIST not installed")
    from georobust import data, pretrained

    clf = pretrained("lenet-fmnist")
    x, y = data.load("fashion-mnist", "test", limit=8)
    ours = sparsefool(clf, x, y)
    xa = torchattacks.SparseFool(clf, steps=20, lam=3, overshoot=0.02)(x, y)
    theirs = clf(xa).argmax(1) != y
    assert ours.success_rate >= float(theirs.double().mean())
    assert float(changed_pixels(x, ours.x_adv)[ours.success].median()) <= \
        float(changed_pixels(x, xa)[theirs].median()) * 1.25
