"""The cascade (georobust.evaluation.cascade): per-sample worst case, which attack broke what, determinism,
resume, and its refusals. Run here with the attacks that exist independently of the standard preset's."""

from __future__ import annotations

import pytest
import torch
from conftest import on_boundary

from georobust.errors import CheckpointError, OptionError
from georobust.evaluation.cascade import CascadeResult, cascade, resolve_attacks

EPS = 0.05


@pytest.fixture(scope="module")
def digits40(digits_test):
    x, y = digits_test
    return x[:40], y[:40]


def test_cascade_is_the_per_sample_worst_case_of_the_attacks(mlp_digits, digits40):
    from georobust.attacks.deepfool import deepfool
    from georobust.attacks.fgsm import fgsm

    x, y = digits40
    c = cascade(mlp_digits, x, y, eps=EPS, attacks=["fgsm", "deepfool"], norm="inf")
    # the same attacks, each on every sample, combined per sample
    rf = fgsm(mlp_digits, x, y, eps=EPS, norm="inf")
    rd = deepfool(mlp_digits, x, y, norm="inf")
    correct = rf.label_clean == y
    broken_f = correct & rf.success
    broken_d = correct & rd.success & (rd.norms("inf") <= EPS + 1e-7)
    worst_robust = correct & ~(broken_f | broken_d)
    # samples whose fate is decided by round-off (an adversarial example on the boundary) may go either way
    undecided = on_boundary(mlp_digits, rf.x_adv, y) | on_boundary(mlp_digits, rd.x_adv, y)
    decided = ~undecided
    assert torch.equal(c.robust[decided], worst_robust[decided])
    assert abs(c.robust_accuracy - float(worst_robust.double().mean())) <= int(undecided.sum()) / len(y)
    # the robust accuracy is the mean of the per-sample worst case, not a minimum of per-attack means
    assert c.robust_accuracy <= min(float((correct & ~broken_f).double().mean()),
                                    float((correct & ~broken_d).double().mean())) + int(undecided.sum()) / len(y)
    # which attack broke each sample; FGSM first, DeepFool only on what FGSM left
    assert set(c.broken_by) <= {"", "clean", "fgsm", "deepfool"}
    assert [b == "" for b in c.broken_by] == c.robust.tolist()
    assert c.per_attack[0]["ran_on"] == int(correct.sum())
    assert c.per_attack[1]["ran_on"] == c.per_attack[0]["ran_on"] - c.per_attack[0]["broke"]
    # every broken sample's example is verified adversarial and within eps
    br = torch.tensor([b in ("fgsm", "deepfool") for b in c.broken_by])
    with torch.no_grad():
        lab = mlp_digits(c.x_adv[br]).argmax(1)
    assert bool((lab != y[br]).all())
    assert float((c.x_adv - x).abs().flatten(1).amax(1).max()) <= EPS + 1e-6


def test_cascade_is_deterministic_and_resumes(mlp_digits, digits40, tmp_path):
    x, y = digits40
    kw = dict(eps=EPS, attacks=["pgd", "deepfool"], norm="inf", seed=3, options={"pgd": {"steps": 5}})
    a = cascade(mlp_digits, x, y, **kw)
    b = cascade(mlp_digits, x, y, state_dir=tmp_path / "st", **kw)
    assert torch.equal(a.robust, b.robust) and a.broken_by == b.broken_by
    # a kill after the first attack: only its state survives; resuming gives the uninterrupted answer
    (tmp_path / "st" / "attack1-deepfool.json").unlink()
    import json

    st = json.loads((tmp_path / "st" / "cascade.json").read_text())
    st["done"] = ["pgd"]
    (tmp_path / "st" / "cascade.json").write_text(json.dumps(st))
    calls = []
    c = cascade(mlp_digits, x, y, state_dir=tmp_path / "st", resume=True,
                on_attack=lambda name, i, total, n: calls.append(name), **kw)
    assert torch.equal(c.robust, a.robust) and c.broken_by == a.broken_by
    assert calls == ["pgd", "deepfool"]
    with pytest.raises(CheckpointError, match="resume"):
        cascade(mlp_digits, x, y, state_dir=tmp_path / "st", **kw)
    with pytest.raises(CheckpointError, match="another configuration"):
        cascade(mlp_digits, x, y, state_dir=tmp_path / "st", resume=True, **{**kw, "seed": 4})
    with pytest.raises(CheckpointError, match="nothing to resume"):
        cascade(mlp_digits, x, y, state_dir=tmp_path / "empty", resume=True, **kw)


def test_cascade_result_saves_and_tables(mlp_digits, digits40, tmp_path):
    x, y = digits40
    c = cascade(mlp_digits, x, y, eps=EPS, attacks=["fgsm"], norm="inf")
    back = CascadeResult.load(c.save(tmp_path / "c"))
    assert torch.equal(back.robust, c.robust) and back.broken_by == c.broken_by
    rows = c.table()
    assert rows[0][0] == "attack" and rows[-1][0] == "fgsm" and float(rows[-1][3]) == pytest.approx(
        c.robust_accuracy, abs=5e-5)


def test_cascade_refusals(mlp_digits, digits40):
    x, y = digits40
    with pytest.raises(OptionError, match="unknown preset"):
        resolve_attacks("strongest", None, "inf")
    with pytest.raises(OptionError, match="does not support norm"):
        resolve_attacks(None, ["sparsefool"], "inf")
    with pytest.raises(OptionError, match="not a per-sample attack"):
        resolve_attacks(None, ["universal"], "inf")
    with pytest.raises(OptionError, match="preset or a list"):
        resolve_attacks("standard", ["fgsm"], "inf")
    with pytest.raises(OptionError, match="does not run"):
        cascade(mlp_digits, x, y, eps=EPS, attacks=["fgsm"], options={"pgd": {"steps": 3}})
    with pytest.raises(OptionError, match="Did you mean"):
        cascade(mlp_digits, x, y, eps=EPS, attacks=["pgd"], options={"pgd": {"stepz": 3}})
    with pytest.raises(OptionError, match="eps"):
        cascade(mlp_digits, x, y, eps=0, attacks=["fgsm"])
