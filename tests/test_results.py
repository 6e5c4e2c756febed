"""AttackResult: derived norms, robust-accuracy curves, verified success, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_affine

from georobust import fgsm
from georobust.results import AttackResult, make_result


def _result():
    x = torch.zeros(3, 4)
    x_adv = torch.tensor([[0.3, 0.0, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1]])
    return AttackResult("t", x + 0.5, x_adv + 0.5, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]),
                        torch.tensor([1, 1, 1]), torch.tensor([True, False, True]), minimal=True)


def test_norms_independent():
    r = _result()
    assert r.l2.tolist() == pytest.approx([0.5, 0.0, 0.2])
    assert r.linf.tolist() == pytest.approx([0.4, 0.0, 0.1])
    assert r.l1.tolist() == pytest.approx([0.7, 0.0, 0.4])
    assert r.l0.tolist() == [2, 0, 4]
    assert r.rho[0] == pytest.approx(0.5 / 1.0)  # ‖x‖₂ = 0.5·√4 = 1


def test_robust_accuracy_curve():
    r = _result()
    # sample 2 is misclassified (label_clean 0 ≠ y 2): never robust; sample 1 failed: robust everywhere
    assert r.robust_accuracy([0.0, 0.3, 1.0], norm=2) == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def test_save_load_roundtrip(tmp_path):
    r = _result()
    r.params = {"eps": float("inf"), "norm": "2"}
    p = r.save(tmp_path / "res")
    back = AttackResult.load(p)
    assert torch.equal(back.x_adv, r.x_adv) and torch.equal(back.success, r.success)
    assert back.iterations is None and back.minimal and math.isinf(float(back.params["eps"]))
    assert back.summary()["success_rate"] == pytest.approx(2 / 3)


def test_success_is_verified_not_claimed():
    clf = make_affine()
    x = 0.3 + 0.4 * torch.rand(8, 20, generator=torch.Generator().manual_seed(0))
    pred = clf(x).argmax(1)
    # an "attack" that claims everything but returns the input: success must be False for all
    r = make_result("liar", clf, x, x.clone(), pred, pred)
    assert not r.success.any() and (r.label_adv == pred).all()


def test_already_misclassified_reported_with_zero_perturbation():
    clf = make_affine()
    x = 0.3 + 0.4 * torch.rand(8, 20, generator=torch.Generator().manual_seed(0))
    pred = clf(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 5  # labels that the model gets wrong
    r = fgsm(clf, x, y, eps=0.05)
    assert r.success[:3].all() and float(r.l2[:3].max()) == 0.0
    # with y=None the predicted label is attacked instead: a real perturbation
    r2 = fgsm(clf, x, None, eps=0.05)
    assert float(r2.l2[:3].min()) > 0
