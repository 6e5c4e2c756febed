"""HopSkipJump in the same oracle: exact counts, convergence on an affine classifier, adversarial and in bounds."""

from __future__ import annotations

import torch
from conftest import make_affine
from test_qfool import Counter, _binary_affine, _dist

from georobust import registry
from georobust.attacks.hopskipjump import hopskipjump


def test_query_count_is_exact():
    clf = make_affine(d=30, k=4, seed=1)
    x = 0.3 + 0.4 * torch.rand(10, 30, generator=torch.Generator().manual_seed(0))
    box = Counter(clf)
    res = hopskipjump(box, x, max_queries=600)
    assert box.rows == int(res.queries.sum()) + x.shape[0]
    assert int(res.queries.max()) <= 600
    assert res.success.all()


def test_converges_on_affine():
    clf, w = _binary_affine(40, seed=4)
    x = 0.4 + 0.2 * torch.rand(12, 40, generator=torch.Generator().manual_seed(3))
    d_min = _dist(clf, x, w)
    res = hopskipjump(clf, x, max_queries=2000)
    assert res.success.all()
    ratio = res.l2 / d_min.double()
    assert float(ratio.min()) >= 1.0 - 1e-6
    assert float(ratio.median()) < 1.1
    h = res.history
    assert (h[:, 1:] <= h[:, :-1] + 1e-12).all()


def test_adversarial_in_bounds_and_registered(mlp_digits, digits_test):
    x, _ = digits_test
    res = hopskipjump(mlp_digits, x[:12], max_queries=500, seed=1)
    assert res.success.all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(res.label_adv, mlp_digits(res.x_adv).argmax(1))
    for name in ("qfool", "hopskipjump"):
        e = registry.attacks.get(name)
        assert e.threat == "decision" and e.norms == ("2",)
    assert registry.attacks.get("sparsefool").threat == "minimal-lp"
