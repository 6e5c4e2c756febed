"""The cascade's benchmark and reproduction scripts in their --quick modes, and the cascade on models that mask
gradients on purpose (issue 12, item 4): the alarms fire and the cascade still breaks what PGD cannot."""

from __future__ import annotations

import pytest
from conftest import load_script, run_cli

import georobust as gr
from georobust.evaluation.cascade import CascadeResult, cascade
from georobust.models.masking import Quantized, Saturated


@pytest.fixture(scope="module")
def base_and_data():
    m = gr.pretrained("mlp-digits")
    x, y = gr.data.load("digits", limit=60)
    return m, x, y


@pytest.mark.slow
def test_cascade_breaks_models_that_mask_gradients(base_and_data):
    m, x, y = base_and_data
    eps = 0.1
    base = cascade(m, x, y, eps=eps, preset="standard", seed=0)
    assert not any(a["fired"] for a in base.alarms), [a["name"] for a in base.alarms if a["fired"]]
    for masked in (Saturated(m), Quantized(m)):
        pgd_robust = 1 - gr.pgd(masked, x, y, eps=eps, steps=40, random_start=False).success_rate
        c = cascade(masked, x, y, eps=eps, preset="standard", seed=0)
        fired = {a["name"] for a in c.alarms if a["fired"]}
        assert "gradients" in fired
        # PGD-CE is stopped by the masking (measured 0.99 robust on 100 images); the cascade is not
        assert pgd_robust >= 0.9 and c.robust_accuracy <= pgd_robust - 0.15, (type(masked).__name__, pgd_robust,
                                                                               c.robust_accuracy)
    # the saturated softmax hides nothing from the DLR/score-based attacks: the base model's robust accuracy
    sat = cascade(Saturated(m), x, y, eps=eps, preset="standard", seed=0)
    assert abs(sat.robust_accuracy - base.robust_accuracy) <= 3 / len(y)


def test_autoattack_benchmark_quick():
    rows = load_script("benchmarks/autoattack.py").main(["--quick", "--threads", "1"])
    ours, peer = rows[0], rows[-1]
    assert ours["method"].startswith("georobust") and peer["method"].startswith("torchattacks")
    # the same images and budget: the per-sample worst case of ours is at most the peer's + 2 samples of 20
    assert ours["robust_accuracy"] <= peer["robust_accuracy"] + 2 / ours["n"]
    assert set(ours["per_attack"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}


def test_cure_validity_quick():
    (row,) = load_script("repro/cure_validity.py").main(["--quick", "--threads", "1"])
    # the worst case of the three is never above any of them
    assert row["worst"] <= min(row["pgd"], row["cascade"], row["spsa"]) + 1e-12
    assert row["clean"] >= row["pgd"] and row["alarms"] == []


def test_cli_evaluate_preset(tmp_path):
    out = tmp_path / "ev"
    args = ["evaluate", "--model", "zoo:mlp-digits", "--limit", "20", "--preset", "standard", "--eps", "0.05",
            "-o", "apgd-ce.steps=3", "-o", "apgd-t.steps=3", "-o", "fab-t.steps=3", "-o", "square.max_queries=50",
            "--out", str(out)]
    p = run_cli(*args)
    assert "robust accuracy" in p.stdout and "apgd-t" in p.stdout
    res = CascadeResult.load(out / "cascade_result")
    assert len(res.broken_by) == 20 and res.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    # a second run into the same folder must resume or refuse
    p2 = run_cli(*args, check=False)
    assert p2.returncode == 2 and "--resume" in p2.stderr
    p3 = run_cli(*args, "--resume")
    assert f"{res.robust_accuracy:.4f}" in p3.stdout
    bad = run_cli("evaluate", "--model", "zoo:mlp-digits", "--preset", "strongest", "--eps", "0.1", check=False)
    assert bad.returncode == 2 and "preset" in bad.stderr
    two = run_cli("evaluate", "--model", "zoo:mlp-digits", "--preset", "standard", "--eps", "0.1,0.2", check=False)
    assert two.returncode == 2 and "one budget" in two.stderr


@pytest.mark.parametrize("name", ["fc500-150-10-fmnist", "lenet-fmnist"])
def test_gradients_alarm_silent_on_confident_standard_models(name):
    # a standard model's confident inputs saturate the cross-entropy alone (measured on 500 images: 6.0% and
    # 4.8% of the CE gradients vanish, none of the margin's): that is not masking, and must not fire

    from georobust.data import fashion_mnist
    from georobust.evaluation.alarms import gradients

    if not fashion_mnist.available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)")
    x, y = gr.data.load("fashion-mnist", limit=500)
    a = gradients(gr.pretrained(name), x, y)
    assert not a.fired and "cw: 0.0%" in a.message and a.value < 0.5
