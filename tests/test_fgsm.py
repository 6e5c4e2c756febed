"""FGSM (Goodfellow et al. 2015): closed form on affine classifiers, bounded and minimal modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_affine

from georobust.attacks.fgsm import fgsm
from georobust.checks import predict
from georobust.errors import OptionError


def _ce_grad(clf, x, y):
    """The analytic input gradient of CE for an affine model: Wᵀ(softmax(Wx+b) − e_y)."""
    w = clf.module.w.detach()
    p = F.softmax(x @ w.T + clf.module.b.detach(), 1)
    return (p - F.one_hot(y, w.shape[0]).float()) @ w


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_bounded_is_closed_form(affine, affine_data, norm):
    x = affine_data
    y = predict(affine, x)
    eps = 0.05
    g = _ce_grad(affine, x, y)
    d = g.sign() if norm == "inf" else g / g.norm(dim=1, keepdim=True)
    expected = (x + eps * d).clamp(0, 1)
    r = fgsm(affine, x, eps=eps, norm=norm)
    torch.testing.assert_close(r.x_adv, expected, atol=1e-6, rtol=0)
    assert r.success.equal(predict(affine, r.x_adv) != y)
    nrm = r.linf if norm == "inf" else r.l2
    assert float(nrm.max()) <= eps + 1e-6


def test_targeted_descends_target_ce(affine, affine_data):
    x = affine_data
    t = (predict(affine, x) + 1) % 5
    g = _ce_grad(affine, x, t)
    r = fgsm(affine, x, eps=0.05, target=t)
    torch.testing.assert_close(r.x_adv, (x - 0.05 * g.sign()).clamp(0, 1), atol=1e-6, rtol=0)
    assert r.success.equal(predict(affine, r.x_adv) == t)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_minimal_eps_closed_form_binary(affine_data, norm):
    """Binary affine: the FGSM direction is ±sign(w₁−w₀) (or its L2 unit vector), so the smallest fooling
    eps is margin/‖w₁−w₀‖₁ (L∞) or margin/‖w₁−w₀‖₂ (L2) while the box does not clip."""
    clf = make_affine(20, 2, seed=3)
    x = affine_data
    w, b = clf.module.w.detach(), clf.module.b.detach()
    f = x @ w.T + b
    y = f.argmax(1)
    margin = (f[:, 0] - f[:, 1]).abs()
    dw = w[1] - w[0]
    q = dw.abs().sum() if norm == "inf" else dw.norm()
    eps_star = margin / q
    per_coord = eps_star if norm == "inf" else eps_star * dw.abs().max() / dw.norm()
    keep = per_coord < 0.29  # x in [0.3, 0.7]: the box does not clip these
    assert keep.sum() >= 20
    r = fgsm(clf, x, norm=norm)
    assert r.minimal and bool(r.success.all())
    found = r.linf if norm == "inf" else r.l2
    rel = (found[keep] - eps_star[keep].double()) / eps_star[keep].double()
    assert float(rel.min()) >= -1e-4  # never below the analytic minimum
    assert float(rel.max()) <= 1e-3  # and within the bisection's resolution of it
    assert r.success.equal(predict(clf, r.x_adv) != y)


def test_minimal_on_mlp_digits(mlp_digits, digits_test):
    x, y = digits_test[0][:100], digits_test[1][:100]
    r = fgsm(mlp_digits, x, y)
    assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
    assert r.success.equal(predict(mlp_digits, r.x_adv) != y)
    wrong = r.label_clean != y
    assert float(r.linf[wrong].max() if wrong.any() else 0) == 0  # already wrong: r = 0
    assert r.success_rate > 0.9


def test_validation(affine, affine_data):
    with pytest.raises(OptionError):
        fgsm(affine, affine_data, eps=-0.1)
    with pytest.raises(OptionError):
        fgsm(affine, affine_data, eps=0.1, norm="1")
    with pytest.raises(OptionError):
        fgsm(affine, affine_data, eps=0.1, loss="hinge")
