"""L-BFGS-B attack (Szegedy et al. 2014): analytic minimal L2 on affine models, verified success, box,
per-sample c, targets, validation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_affine

from georobust import registry
from georobust.attacks.lbfgs import lbfgs
from georobust.checks import predict
from georobust.errors import OptionError


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of objective evaluations on tiny tensors: with 2 intra-op threads on a busy 2-core machine
    each elementwise op (exp, log_softmax) waits ~12 ms at an OpenMP barrier (measured, torch 2.13), which
    makes these tests 50x slower; one thread measures the attack, not the scheduler."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _minimal_l2(clf, x):
    """min_{k≠ŷ} |f_k − f_ŷ| / ‖w_k − w_ŷ‖₂ (unconstrained by the box) and the argmin class."""
    w, b = clf.module.w.detach(), clf.module.b.detach()
    f = x @ w.T + b
    yh = f.argmax(1)
    d = (f - f.gather(1, yh[:, None])).abs() / (w[None] - w[yh][:, None]).norm(dim=2)
    d.scatter_(1, yh[:, None], float("inf"))
    return d.min(1).values.double(), d.argmin(1)


def test_registered():
    e = registry.attacks.get("lbfgs")
    assert e.threat == "minimal-lp" and e.norms == ("2",)


def test_binary_affine_is_exact(affine_data):
    """Two classes: the penalised minimiser moves along w₁−w₀, so the largest fooling c puts it on the
    boundary: the found L2 norm matches |f₀−f₁|/‖w₀−w₁‖ (median within 1%, all within 6%)."""
    clf = make_affine(20, 2, seed=0)
    x = affine_data
    dmin, _ = _minimal_l2(clf, x)
    r = lbfgs(clf, x)
    assert bool(r.success.all()) and r.minimal
    ratio = r.l2 / dmin
    assert float(ratio.min()) >= 1 - 1e-4
    assert float(ratio.median()) <= 1.01
    assert float(ratio.max()) <= 1.06
    assert r.success.equal(predict(clf, r.x_adv) != r.y)


def test_multiclass_affine_near_minimal(affine, affine_data):
    """Five classes: never below the analytic minimum; the penalty method overshoots it by ~15% (median)."""
    x = affine_data[:32]
    dmin, _ = _minimal_l2(affine, x)
    r = lbfgs(affine, x)
    assert bool(r.success.all())
    ratio = r.l2 / dmin
    assert float(ratio.min()) >= 1 - 1e-4
    assert float(ratio.median()) <= 1.25
    c = torch.tensor(r.params["c"])
    assert c.shape == (32,) and bool((c > 0).all())
    assert c.unique().numel() > 5  # chosen per sample


def test_targeted(affine, affine_data):
    x = affine_data[:24]
    dmin, nearest = _minimal_l2(affine, x)
    t = (predict(affine, x) + 2) % 5
    r = lbfgs(affine, x, target=t)
    assert r.success.equal(predict(affine, r.x_adv) == t)
    assert r.success_rate > 0.9
    assert bool((r.l2[r.success] >= dmin[r.success] - 1e-4).all())


def test_box_and_verified_on_mlp_digits(mlp_digits, digits_test):
    x, y = digits_test[0][:40], digits_test[1][:40]
    r = lbfgs(mlp_digits, x, y, search_steps=6)
    assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
    assert r.success.equal(predict(mlp_digits, r.x_adv) != y)
    wrong = r.label_clean != y
    assert float(r.l2[wrong].sum()) == 0  # already misclassified: zero perturbation
    assert r.success_rate > 0.9
    assert bool((r.iterations[~wrong] > 0).all())


def test_validation(affine, affine_data):
    for kw in (dict(norm="inf"), dict(c_init=-1.0), dict(search_steps=0), dict(max_iter=0), dict(batch_size=0)):
        with pytest.raises(OptionError):
            lbfgs(affine, affine_data, **kw)
