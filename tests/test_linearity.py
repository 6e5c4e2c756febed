"""Linear or blind spots (georobust.geometry.linearity): DeepFool's steps — one on an affine model, more on a
curved one; the analysis contract of ``georobust analyse linearity``; clear errors; validation once; the
reproduction's quick mode and re-plot."""

from __future__ import annotations

import numbers

import pytest
import torch
from conftest import load_script
from torch import nn

import georobust.geometry.linearity as linearity
from georobust import Classifier, plots, registry
from georobust.errors import OptionError
from georobust.geometry.linearity import DeepFoolSteps, deepfool_steps


def _affine(k: int = 5, d: int = 12) -> Classifier:
    torch.manual_seed(0)
    return Classifier(nn.Linear(d, k), bounds=(-50.0, 50.0)).eval()


class Ring(nn.Module):
    """Two classes split by the unit circle: logits (0, ‖x‖² − 1)."""

    def forward(self, x):
        f = (x ** 2).sum(1) - 1.0
        return torch.stack([torch.zeros_like(f), f], 1)


def test_affine_model_is_fooled_in_one_step():
    clf = _affine()
    x = torch.rand(40, 12) - 0.5
    r = deepfool_steps(clf, x)
    s = r.summary()
    assert s["attacked"] == 40 and s["fooled"] == 40
    assert s["first_step"] == 1.0 and s["mean_steps"] == 1.0 and r.histogram() == {1: 40}


def test_curved_boundary_needs_more_steps():
    """Inside the unit circle (f = ‖x‖² − 1), the linearised step from radius ρ lands at radius (1 + ρ²)/(2ρ) ≥ 1:
    one step always fools, even without overshoot. A boundary bent the other way (a cubic term) makes the
    linearised step undershoot: some inputs need two or more steps."""
    clf = Classifier(Ring(), bounds=(-10.0, 10.0)).eval()
    x = torch.tensor([[0.05, 0.0], [0.0, 0.1], [0.2, 0.0], [0.999, 0.0], [0.0, -0.9]])
    r = deepfool_steps(clf, x, overshoot=0.0)
    # at ρ = 0.999 the step lands within 1e-6 of the circle, and DeepFool's 1e-4 constant carries it across
    assert bool(r.converged.all())
    assert r.iterations.tolist() == [1, 1, 1, 1, 1]
    # a sideways-biased ring: f = ‖x‖² − 1 + 3x₀² turns the step so that it undershoots
    class Ellipse(nn.Module):
        def forward(self, x):
            f = (x ** 2).sum(1) + 3 * x[:, 0] ** 2 - 1.0 - 2 * x[:, 1] ** 3
            return torch.stack([torch.zeros_like(f), f], 1)

    clf2 = Classifier(Ellipse(), bounds=(-10.0, 10.0)).eval()
    g = torch.Generator().manual_seed(0)
    x2 = 0.3 * torch.randn(200, 2, generator=g)
    x2 = x2[(Ellipse()(x2)[:, 1] < 0)]
    r2 = deepfool_steps(clf2, x2, overshoot=0.0)
    s2 = r2.summary()
    assert s2["fooled"] == s2["attacked"] == x2.shape[0]
    assert s2["first_step"] < 1.0 and s2["max_steps"] >= 2
    h = r2.histogram()
    assert sum(h.values()) == s2["fooled"]
    assert s2["first_step"] == pytest.approx(h.get(1, 0) / s2["attacked"])


def test_only_correct_inputs_are_attacked():
    clf = _affine(k=3)
    x = torch.rand(30, 12) - 0.5
    y = clf(x).argmax(1)
    y[:7] = (y[:7] + 1) % 3
    r = deepfool_steps(clf, x, y)
    assert int(r.attacked.sum()) == 23 and bool((r.iterations[:7] == 0).all())
    assert r.summary()["fooled"] == 23


def test_analysis_contract(tmp_path):
    """What ``georobust analyse linearity`` relies on (the same checks as tests/test_geometry_validate_once.py
    applies to every registered analysis): scalar summary, rectangular table of strings, save/load, the figure."""
    entry = registry.analyses.get("linearity")
    assert entry.fn is deepfool_steps and entry.summary
    clf = _affine()
    res = entry.fn(clf, torch.rand(16, 12) - 0.5)
    s = res.summary()
    assert all(isinstance(k, str) and (v is None or isinstance(v, (numbers.Number, str))) for k, v in s.items())
    rows = res.table()
    assert len(rows) >= 2 and all(isinstance(c, str) for r in rows for c in r)
    assert all(len(r) == len(rows[0]) for r in rows)
    again = DeepFoolSteps.load(res.save(tmp_path / "linearity"))
    assert again.table() == rows and torch.equal(again.iterations, res.iterations)
    fn = getattr(plots, entry.extra["plot"])
    path = fn(res.plot_data("toy"), tmp_path / entry.extra["plot_file"])
    assert path.exists() and path.stat().st_size > 0


def test_validates_once(monkeypatch):
    calls = []
    real = linearity.prepare

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(linearity, "prepare", counting)
    deepfool_steps(_affine(), torch.rand(8, 12) - 0.5, batch_size=3)
    assert len(calls) == 1


def test_bad_options_are_clear_errors():
    clf = _affine()
    x = torch.rand(4, 12)
    with pytest.raises(OptionError, match="clip"):
        deepfool_steps(clf, x, clip="yes")
    with pytest.raises(OptionError):
        deepfool_steps(clf, x, norm=3)
    with pytest.raises(OptionError):
        deepfool_steps(clf, x, max_iter=0)


@pytest.mark.slow
def test_repro_quick_and_replot(tmp_path):
    mod = load_script("repro/linearity.py")
    out = mod.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    res = out["results"]
    assert set(res) == {"mlp-digits", "mlp-digits (clamped)", "lenet-fmnist", "lenet-fmnist (clamped)"}
    for r in res.values():
        s = r.summary()
        assert 0 <= s["first_step"] <= 1 and s["fooled"] <= s["attacked"] <= 20
    png = tmp_path / "linearity.png"
    png.unlink()
    again = mod.main(["--replot", "--out", str(tmp_path)])
    assert png.exists() and png.stat().st_size > 0
    assert {k: v.summary() for k, v in again["results"].items()} == {k: v.summary() for k, v in res.items()}
