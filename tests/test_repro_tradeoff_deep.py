"""repro/tradeoff_deep.py (the Tsipras et al. trade-off on the LeNet) in --quick mode: its saved numbers are those
of the models it trained (recomputed here), a second call retrains and re-attacks nothing, a run whose weights
were lost resumes from fit's checkpoint, the figure re-plots from saved results only, bad options are clear
errors; and repro/saliency.py --quick with its re-plot."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script

from georobust import data, pretrained
from georobust.attacks.pgd import pgd
from georobust.checks import predict
from georobust.models.io import load_weights


def _forbid(mod, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("recomputed something that was saved")

    for name in ("fit", "evaluate", "cascade"):
        monkeypatch.setattr(mod, name, boom)


@pytest.mark.slow
def test_tradeoff_quick_numbers_resume_and_replot(tmp_path, monkeypatch):
    mod = load_script("repro/tradeoff_deep.py")
    args = ["--quick", "--threads", "1", "--out", str(tmp_path)]
    out = mod.main(args)
    assert out["trained"] == ["standard", "at-eps0.1", "cure-gamma4"]
    rows = {r["name"]: r for r in out["rows"]}
    assert set(rows) == {"lenet-fmnist", "standard", "at-eps0.1", "cure-gamma4"}
    x, y = data.load("fashion-mnist", "test", limit=1000)
    wdir = tmp_path / "tradeoff_deep"
    for name, r in rows.items():  # every saved number recomputed from the model it belongs to
        model = pretrained(name) if r["kind"] == "shipped" else load_weights(wdir / f"{name}.safetensors")
        assert r["clean"] == float((predict(model, x) == y).double().mean())
        res = pgd(model, x[:20], y[:20], eps=0.1, norm="inf", steps=3, restarts=1, seed=0)
        assert r["pgd"]["0.1"] == res.robust_accuracy([0.1], "inf")[0]
        c = r["cascade"]
        assert c["n"] == 8 and 0 <= c["robust"] <= c["clean"] and c["clean"] == float(
            (predict(model, x[:8]) == y[:8]).double().mean())
    side = json.loads((wdir / "at-eps0.1.json").read_text())
    assert side["objective"] == "adversarial" and side["objective_options"] == {"eps": 0.1, "steps": 2}
    assert side["n_train"] == 128 and side["init"] == "zoo:lenet-fmnist"
    at = rows["at-eps0.1"]
    assert out["curves"]["PGD-AT (ε)"] == [(0.1, at["clean"], at["pgd"]["0.1"])]
    assert out["points"]["shipped standard"] == (rows["lenet-fmnist"]["pgd"]["0.1"], rows["lenet-fmnist"]["clean"])
    assert out["figure"].stat().st_size > 5000

    # a run whose weights and evaluation were lost resumes from its (complete) fit checkpoint: same weights
    before = load_weights(wdir / "at-eps0.1.safetensors").state_dict()
    (wdir / "at-eps0.1.safetensors").unlink()
    (wdir / "at-eps0.1.eval.json").unlink()
    again = mod.main(args + ["--only", "at-eps0.1"])
    after = load_weights(wdir / "at-eps0.1.safetensors").state_dict()
    assert again["trained"] == ["at-eps0.1"] and all(torch.equal(before[k], after[k]) for k in before)
    assert {r["name"]: r for r in again["rows"]}["at-eps0.1"]["pgd"] == at["pgd"]

    # everything saved: nothing is trained or attacked again, and the figure re-plots from the files
    _forbid(mod, monkeypatch)
    assert mod.main(args)["trained"] == [] and mod.main(args)["evaluated"] == []
    out["figure"].unlink()
    re = mod.main(args + ["--plot-only"])
    assert re["figure"].exists() and re["table"] == again["table"] and re["curves"] == out["curves"]


@pytest.mark.parametrize("extra,text", [
    (["--eps", "2"], "--eps"),
    (["--at-eps", "0"], "--at-eps"),
    (["--cure-gammas", "-1"], "--cure-gammas"),
    (["--cascade", "-3"], "--cascade"),
    (["--plot-only"], "no saved results"),
    (["--only", "at-eps9"], "unknown model"),
    (["--plot-eps", "0.3"], "was not evaluated"),
])
def test_tradeoff_bad_options(tmp_path, monkeypatch, extra, text):
    mod = load_script("repro/tradeoff_deep.py")
    _forbid(mod, monkeypatch)
    if text in ("unknown model", "was not evaluated"):  # needs saved results: one fake row
        (tmp_path / "tradeoff_deep").mkdir()
        row = {"name": "lenet-fmnist", "kind": "shipped", "objective": "shipped", "strength": 0.0, "clean": 0.9,
               "pgd": {"0.1": 0.1}, "eval_seconds": 1.0}
        (tmp_path / "tradeoff_deep" / "lenet-fmnist.eval.json").write_text(json.dumps(row))
        if text == "unknown model":
            extra = extra + ["--no-shipped"]
        else:
            extra = extra + ["--plot-only"]
    with pytest.raises(SystemExit, match=text):
        mod.main(["--threads", "1", "--out", str(tmp_path)] + extra)


def test_quick_needs_a_scratch_folder():
    for script in ("repro/tradeoff_deep.py", "repro/saliency.py"):
        with pytest.raises(SystemExit, match="scratch folder"):
            load_script(script).main(["--quick"])


@pytest.mark.slow
def test_saliency_repro_quick_and_replot(tmp_path):
    mod = load_script("repro/saliency.py")
    out = mod.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    meas = out["measures"]
    assert list(meas["per_model"]) == ["lenet-fmnist", "lenet-fmnist-at", "lenet-fmnist-cure"]
    d = meas["differences"]["edge: lenet-fmnist-at − lenet-fmnist"]
    assert d["subsets"] == 4 and d["size"] == 8 and d["min"] <= d["mean"] <= d["max"]
    assert abs(meas["null"]["edge"]["mean"]) < 0.1  # a Gaussian "gradient": chance level (sd/√32 ≈ 0.006)
    (tmp_path / "saliency.png").unlink()
    mod.saliency = None  # re-plotting must not compute
    again = mod.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--plot-only"])
    assert again["figure"].exists() and again["table"] == out["table"]
