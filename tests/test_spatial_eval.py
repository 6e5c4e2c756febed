"""Spatial evaluation: ``evaluate(threat="spatial")`` (robust accuracy versus the grid radius, the per-sample worst
case over attacks), its refusals, its files and figures, and the CLI's ``attack``/``evaluate`` for spatial attacks."""

from __future__ import annotations

import pytest
import torch
from conftest import CountingLinear, fmnist_model, needs_fmnist, run_cli

from georobust.errors import OptionError
from georobust.evaluation.suite import evaluate, evaluate_sized, save_evaluation

SMALL = {"max_translation": 2.0, "max_rotation": 20.0}


@pytest.fixture(scope="module")
def lenet():
    return fmnist_model("lenet-fmnist-at", 16)


@needs_fmnist
def test_spatial_evaluation_curve_and_worst_case(lenet, tmp_path):
    clf, x, y = lenet
    opts = {"spatial-grid": {**SMALL, "num_translations": 3, "num_rotations": 9},
            "spatial-worst-of-k": {**SMALL, "seed": 0}}
    ev, res = evaluate(clf, x, y, threat="spatial", options=opts)
    assert ev.norm == "grid radius" and ev.eps == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(ev.robust) == ["spatial-worst-of-k", "spatial-grid"]
    for name, r in res.items():  # each attack's row is its result's curve
        assert ev.robust[name] == pytest.approx(r.robust_accuracy(ev.eps))
        assert ev.robust[name][0] == pytest.approx(ev.clean_accuracy)
    # the worst case is the per-sample minimum: no higher than either, and exactly the fraction of samples
    # robust to both
    both = torch.ones(x.shape[0], len(ev.eps), dtype=torch.bool)
    for r in res.values():
        both &= r.threat_model.robust(r, ev.eps)
    assert ev.worst_case == pytest.approx(both.double().mean(0).tolist())
    assert all(w <= min(v[j] for v in ev.robust.values()) + 1e-12 for j, w in enumerate(ev.worst_case))
    head = ev.table()[0]
    assert head[1] == "≤0" and head[-2] == "median grid radius"
    written = save_evaluation(ev, res, tmp_path)
    names = {p.name for p in written}
    assert {"evaluation.json", "robust_accuracy.png", "examples_spatial-grid.png"} <= names
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    # the same, with every attack given and no threat: dispatched on the attacks' threat model
    ev2, _ = evaluate(clf, x, y, attacks=["spatial-grid"], eps=[0, 1], options={"spatial-grid": opts["spatial-grid"]})
    assert ev2.robust["spatial-grid"] == pytest.approx([ev.robust["spatial-grid"][0], ev.robust["spatial-grid"][-1]])


@needs_fmnist
def test_stadv_evaluated_in_flow_loss(lenet):
    clf, x, y = lenet
    with pytest.raises(OptionError, match="flow loss"):
        evaluate_sized(clf, x[:2], y[:2], attacks=["stadv"])  # no default budgets for a flow loss
    ev, res = evaluate(clf, x[:3], y[:3], attacks=["stadv"], eps=[0, 50, 1e9],
                       options={"stadv": {"max_iter": 10, "tau": 0.005}})
    assert ev.norm == "flow loss"
    r = res["stadv"]
    assert ev.robust["stadv"][-1] == pytest.approx(float(((r.label_clean == r.y) & ~r.success).double().mean()))


@pytest.mark.parametrize("kw, match", [
    ({"attacks": ["spatial-grid", "stadv"], "eps": [0, 1]}, "different units"),
    ({"attacks": ["spatial-grid", "spatial-worst-of-k"],
      "options": {"spatial-grid": {"max_rotation": 10.0}}}, "differently"),
    ({"attacks": ["pgd"], "threat": "spatial"}, "not a spatial one"),
    ({"attacks": ["pgd", "spatial-grid"], "eps": [0.1]}, "apart from the Lp attacks"),
    ({"attacks": ["spatial-grid"], "threat": "bounded-lp"}, "Lp norm"),
    ({"attacks": ["spatial-grid"], "options": {"stadv": {"tau": 1.0}}}, "does not run"),
    ({"attacks": ["spatial-grid"], "options": {"spatial-grid": {"num_rotation": 3}}}, "num_rotation"),
    ({"attacks": ["spatial-grid"], "eps": [-1.0]}, ">= 0"),
])
def test_refusals_before_work(kw, match):
    m = CountingLinear().eval()
    x = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(OptionError, match=match):
        evaluate(m, x, y, **kw)
    assert m.calls <= 1  # at most the probe by which evaluate tells a segmenter from a classifier; no attack ran


@pytest.mark.slow
@needs_fmnist
def test_cli_spatial_attack_and_evaluate(tmp_path):
    p = run_cli("attack", "spatial-grid", "--model", "zoo:lenet-fmnist", "--data", "fashion-mnist", "--limit", "6",
                "-o", "num_rotations=7", "--out", tmp_path / "a")
    assert "median_size" in p.stdout and (tmp_path / "a" / "examples_spatial-grid.png").exists()
    p = run_cli("evaluate", "--model", "zoo:lenet-fmnist", "--data", "fashion-mnist", "--limit", "6",
                "--attacks", "spatial-grid,spatial-worst-of-k", "--eps", "0,0.5,1",
                "-o", "spatial-grid.num_rotations=7", "-o", "spatial-worst-of-k.seed=0", "--out", tmp_path / "e")
    assert "budget: grid radius" in p.stdout
    import json

    ev = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert ev["norm"] == "grid radius" and ev["eps"] == [0.0, 0.5, 1.0]
    assert ev["worst_case"][-1] <= ev["robust"]["spatial-grid"][-1]
