"""Threat models, tasks, the option parser and the registries (georobust.core, georobust.registry)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from georobust import registry
from georobust.core import options, tasks
from georobust.core.threat import SIZE_TOL, THREAT_MODELS, threat_model
from georobust.errors import InputError, ModelError, OptionError
from georobust.results import AttackResult


def _result(threat: str, r_norms, success, correct=None, params=None, size=None) -> AttackResult:
    n = len(r_norms)
    x = torch.zeros(n, 4, dtype=torch.float64)
    x_adv = x.clone()
    x_adv[:, 0] = torch.tensor(r_norms, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.long)
    clean = y.clone() if correct is None else torch.tensor([0 if c else 1 for c in correct])
    succ = torch.tensor(success)
    return AttackResult("t", x, x_adv, y, clean, torch.where(succ, 1, 0), succ, params=params or {},
                        threat=threat, size=None if size is None else torch.tensor(size))


def test_minimal_threat_reads_a_whole_curve():
    r = _result("minimal-lp", [0.1, 0.5, 2.0, 0.3], [True, True, True, False], correct=[True, True, True, True])
    # robust at eps: samples not fooled within eps; the failed one is robust everywhere
    assert r.robust_accuracy([0.0, 0.1, 0.5, 1.0, 3.0], norm=2) == [1.0, 0.75, 0.5, 0.5, 0.25]
    # a budget equal to a size counts as fooled (sizes within SIZE_TOL of the budget)
    assert r.robust_accuracy([0.5 - SIZE_TOL / 2]) == [0.5]


def test_misclassified_samples_are_never_robust():
    r = _result("minimal-lp", [0.0, 1.0], [True, False], correct=[False, True])
    assert r.robust_accuracy([0.0, 10.0]) == [0.5, 0.5]


def test_bounded_threat_answers_only_its_own_budget():
    r = _result("bounded-lp", [0.1, 0.1, 0.0], [True, False, False], params={"eps": 0.1})
    assert r.robust_accuracy([0.1]) == pytest.approx([2 / 3])
    with pytest.raises(OptionError, match="eps=0.1"):
        r.robust_accuracy([0.2])


def test_spatial_and_patch_sizes_come_from_the_result():
    r = _result("spatial", [5.0, 5.0, 5.0], [True, True, False], size=[0.2, 0.6, 0.1])
    assert r.robust_accuracy([0.1, 0.5, 1.0]) == pytest.approx([1.0, 2 / 3, 1 / 3])
    r.size = None
    with pytest.raises(OptionError, match="AttackResult.size"):
        r.robust_accuracy([0.5])


def test_universal_is_not_per_sample_and_unknown_threat_is_refused():
    assert not threat_model("universal").per_sample
    with pytest.raises(OptionError, match="fooling rate"):
        _result("universal", [0.1], [True]).robust_accuracy([0.1])
    with pytest.raises(OptionError, match="minimal-lp"):
        threat_model("minimal")
    assert set(THREAT_MODELS) == {"minimal-lp", "bounded-lp", "decision", "universal", "spatial", "patch"}


def test_every_registered_attack_has_a_threat_model_and_a_task():
    for e in registry.attacks.entries():
        assert e.threat in THREAT_MODELS and e.task in tasks.TASKS, e.name
        assert e.chunking in registry.CHUNKING
        # a bounded attack takes its budget under the threat model's option name
        if e.threat_model.budget_option and e.threat_model.per_sample:
            assert e.threat_model.budget_option in e.options(), e.name


def test_old_results_without_a_threat_read_by_minimal_flag():
    r = _result("", [0.1, 1.0], [True, True])
    r.minimal = True
    assert r.threat_model.name == "minimal-lp" and r.robust_accuracy([0.5]) == [0.5]
    r.minimal, r.params = False, {"eps": 0.5}
    assert r.threat_model.name == "bounded-lp" and r.robust_accuracy([0.5]) == [0.0]


# ------------------------------------------------------------------------------------------- tasks
def test_classification_task():
    t = tasks.task("classification")
    y = torch.tensor([0, 1, 2])
    assert t.success(torch.tensor([0, 2, 2]), y).tolist() == [False, True, False]
    assert t.success(torch.tensor([1, 1, 1]), y, torch.tensor([1, 0, 1])).tolist() == [True, False, True]
    with pytest.raises(ModelError, match=r"\(N, K\)"):
        t.check_output(torch.zeros(3, 4, 2), 3)
    with pytest.raises(ModelError, match="K >= 2"):
        t.check_output(torch.zeros(3, 1), 3)


def test_dense_task_fraction_ignore_and_miou():
    t = tasks.Dense(min_fraction=0.5)
    y = torch.tensor([[[0, 0], [1, -100]]])
    pred = torch.tensor([[[1, 0], [0, 1]]])
    # counted pixels: 3 (one ignored); changed: 2 of them
    assert t.changed_fraction(pred, y).tolist() == pytest.approx([2 / 3])
    assert t.success(pred, y).tolist() == [True]
    assert tasks.Dense(min_fraction=1.0).success(pred, y).tolist() == [False]
    assert t.pixel_accuracy(pred, y).tolist() == pytest.approx([1 / 3])
    # class 0: pred {(0,1),(1,0)}, true {(0,0),(0,1)} → IoU 1/3; class 1: pred {(0,0)}, true {(1,0)} → 0
    assert t.miou(pred, y, 2) == pytest.approx((1 / 3 + 0) / 2)
    with pytest.raises(InputError, match="label maps"):
        t.success(pred, y[:, :1])
    with pytest.raises(ModelError, match=r"\(N, K, H, W\)"):
        t.check_output(torch.zeros(1, 3), 1)


def test_detection_task_hiding_success_by_iou():
    t = tasks.Detection(score_threshold=0.5, iou_threshold=0.5)
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    out = [(torch.tensor([[0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0]]), torch.tensor([0.9, 0.9])),
           (torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.3]))]
    t.check_output(out, 2)
    # image 0: a confident box with IoU 0.9 still covers the person; image 1: the box scores below threshold
    assert t.success(t.predict(out), gt).tolist() == [False, True]
    assert tasks.box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])).item() \
        == pytest.approx(1 / 7)
    with pytest.raises(ModelError, match=r"\(boxes, scores\)"):
        t.check_output([torch.zeros(1, 4)], 1)


# ------------------------------------------------------------------------------------------ options
def test_one_option_parser():
    assert options.parse_assignments(["a=1", "b-c=[1, 2]", "d=none", "e=True", "f=x"]) == \
        {"a": 1, "b_c": [1, 2], "d": None, "e": True, "f": "x"}
    with pytest.raises(OptionError, match="twice"):
        options.parse_assignments(["a=1", "a=2"])
    with pytest.raises(OptionError, match="key=value"):
        options.parse_assignments(["a"])
    assert options.coerce("eps", "0.25", 0.1) == 0.25 and options.coerce("steps", "7", 10) == 7
    assert options.coerce("fast", "yes", False) is True and options.coerce("step_size", "none", 0.1) is None
    assert options.coerce("norm", "inf", "2") == "inf" and options.coerce("x", "[1]") == [1]
    assert options.coerce("x", "nan", 1.0) == "nan"  # a non-finite number stays a string (checks refuse it later)
    with pytest.raises(OptionError, match="expects a number"):
        options.coerce("eps", "big", 0.1)
    with pytest.raises(OptionError, match="true/false"):
        options.coerce("fast", "maybe", False)


def test_entry_options_are_checked_and_coerced():
    e = registry.attacks.get("pgd")
    assert e.check_options({"steps": "5", "loss": "cw"}) == {"steps": 5, "loss": "cw"}
    with pytest.raises(OptionError, match="Did you mean.*steps"):
        e.check_options({"stepz": 3})


# ---------------------------------------------------------------------------------------- registries
def test_registries_are_found_by_package_and_refuse_duplicates():
    assert {"deepfool", "pgd", "fgsm", "qfool"} <= set(registry.attacks.names())
    assert {"digits", "fashion-mnist", "spheres", "folder"} <= set(registry.datasets.names())
    assert registry.datasets.get("fmnist").name == "fashion-mnist"  # an alias
    assert {"mlp", "lenet", "linear"} <= set(registry.architectures.names())
    assert {"cross-section", "curvature", "normals", "subspace"} <= set(registry.analyses.names())
    assert {"standard", "adversarial", "cure"} <= set(registry.objectives.names())
    with pytest.raises(OptionError, match="registered twice"):
        registry.attacks.register("pgd", threat="bounded-lp")(lambda: None)
    with pytest.raises(OptionError, match="no 'kind'"):
        registry.attacks.register("x", kind="minimal")
    with pytest.raises(OptionError, match="unknown threat model"):
        registry.attacks.register("x", threat="sneaky")
    with pytest.raises(OptionError, match="Did you mean.*deepfool"):
        registry.attacks.get("deepfoo")


def test_protocol_records_params_and_times_the_call():
    from georobust import data, pretrained
    from georobust.attacks.pgd import pgd

    m = pretrained("mlp-digits")
    x, y = data.load("digits", limit=8)
    r = pgd(m, x, y, eps=0.05, steps=3, seed=1)
    assert r.threat == "bounded-lp" and r.task == "classification" and not r.minimal
    assert r.params["steps"] == 3 and r.params["seed"] == 1 and r.params["targeted"] is False
    assert r.params["step_size"] == pytest.approx(2.5 * 0.05 / 3) and "batch_size" not in r.params
    assert r.elapsed > 0
    # the entry the protocol registered is the function the user calls
    assert registry.attacks.get("pgd").fn is pgd
    assert dataclasses.is_dataclass(r)
