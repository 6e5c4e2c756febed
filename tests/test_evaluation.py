"""The evaluation suite: curves, worst case over attacks, option checks."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from conftest import make_affine

from georobust import evaluate
from georobust.errors import OptionError
from georobust.evaluation import save_evaluation


def test_fgsm_curve_on_affine_matches_closed_form():
    """Binary-like check on an affine model: FGSM L∞ fools x at eps iff the linearised margin is crossed."""
    clf = make_affine(d=20, k=2, seed=3)
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(200, 20, generator=g)
    y = clf(x).argmax(1)
    eps = [0.0, 0.005, 0.01, 0.02, 0.05]
    ev, _ = evaluate(clf, x, y, attacks=["fgsm"], eps=eps, norm="inf")
    w = clf.module.w.detach()
    margin = (clf(x)[:, 0] - clf(x)[:, 1]).abs()
    min_eps = margin / (w[0] - w[1]).abs().sum()  # the L∞ distance to the hyperplane
    expect = [(min_eps > e).double().mean().item() for e in eps]
    assert ev.robust["fgsm"] == pytest.approx(expect, abs=1 / 200)
    assert ev.worst_case == ev.robust["fgsm"]


def test_evaluation_options_checked(mlp_digits, digits_test, tmp_path):
    x, y = digits_test
    with pytest.raises(OptionError, match="unknown attack"):
        evaluate(mlp_digits, x[:10], y[:10], attacks=["nope"])
    with pytest.raises(OptionError, match="eps values"):
        evaluate(mlp_digits, x[:10], y[:10], attacks=["fgsm"], eps=[-0.1])
    with pytest.raises(OptionError, match="unknown option of fgsm"):
        evaluate(mlp_digits, x[:10], y[:10], attacks=["fgsm"], options={"fgsm": {"bogus": 1}})
    ev, res = evaluate(mlp_digits, x[:100], y[:100], attacks=["fgsm"], eps=[0, 0.1])
    files = save_evaluation(ev, res, tmp_path)
    assert all(p.exists() for p in files)
    assert ev.robust["fgsm"][0] == pytest.approx(ev.clean_accuracy)


def test_black_box_attack_runs_once_and_its_norms_give_the_curve(mlp_digits, digits_test):
    """QFool/HopSkipJump return the smallest perturbation found within the budget: one run, norms → curve."""
    from georobust import registry

    x, y = digits_test
    x, y = x[:12], y[:12]
    calls = []
    entry = registry.attacks.get("qfool")
    fn = entry.fn

    @functools.wraps(fn)
    def counting(*a, **kw):
        calls.append(kw)
        return fn(*a, **kw)

    eps = [0.0, 0.5, 1.0, 2.0]
    orig = registry.attacks._entries["qfool"]
    registry.attacks._entries["qfool"] = dataclasses.replace(orig, fn=counting)
    try:
        ev, results = evaluate(mlp_digits, x, y, attacks=["qfool"], eps=eps, norm=2,
                               options={"qfool": {"max_queries": 300}})
    finally:
        registry.attacks._entries["qfool"] = orig
    assert len(calls) == 1 and "eps" not in calls[0]
    r = results["qfool"]
    assert r.minimal
    nrm = r.norms("2")
    correct = mlp_digits(x).argmax(1) == y  # the model re-run here, not the result's record
    expect = [((correct & ~(r.success & (nrm <= e + 1e-7))).double().mean().item()) for e in eps]
    assert ev.robust["qfool"] == pytest.approx(expect)
    assert ev.robust["qfool"] == sorted(ev.robust["qfool"], reverse=True)
