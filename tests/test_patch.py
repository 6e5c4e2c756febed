"""The adversarial patch (Brown et al. 2017; issue 15, item 3): a model whose answer is known, verified success,
resume, bad input, save/load, the CLI."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from torch import nn

import georobust as gr
from georobust.attacks.patch import PatchCheckpoint, PatchResult, adversarial_patch, evaluate_patch
from georobust.core.placement import Placements, coverage
from georobust.errors import InputError, OptionError, OutputError

THRESHOLD = 50.0


class Bright(nn.Module):
    """Class 1 when the image's pixel sum exceeds ``THRESHOLD`` (a bright region), class 0 otherwise; class 2
    never. The best patch of any placement is all ones (the upper bound): the gradient of class 1's logit is
    positive at every pixel."""

    def forward(self, x):
        s = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s - THRESHOLD, torch.full_like(s, -100.0)], 1)


@pytest.fixture(scope="module")
def dark():
    g = torch.Generator().manual_seed(0)
    return 0.05 * torch.rand(60, 1, 16, 16, generator=g)  # sums about 6: class 0


KW = dict(patch_size=8, mask="square", scale=0.5, rotation=0.0, steps=30, batch_size=8, lr=0.05, seed=1)


@pytest.mark.parametrize("target", [1, None])
def test_patch_on_a_model_whose_answer_is_known(dark, target):
    m = Bright().eval()
    res = adversarial_patch(m, dark, target=target, **KW)
    assert isinstance(res, PatchResult) and res.threat == "patch"
    # Adam drives every pixel of the patch to the upper bound and the clamp holds it there
    assert float(res.patch.min()) == 1.0
    # a side of 8 pixels at scale 0.5 of 16, unrotated: exactly 64 pixel centres covered wherever it lands
    assert torch.allclose(res.size, torch.full((60,), 64 / 256, dtype=torch.float64))
    # success is the model re-run on the patched inputs, and agrees with the analytic answer
    sums = res.x_adv.flatten(1).sum(1)
    assert torch.equal(res.label_adv, (sums > THRESHOLD).long()) and bool((sums >= 64).all())
    assert res.success.all() and res.held_out_success_rate == 1.0
    # a random patch at the same places: sum ≈ 32 ± 2.3 + 5: never above 50
    assert not res.random_patch_success.any()
    s = res.summary()
    assert s["held_out_success_without_patch"] == 0.0 and s["n_held_out"] == 30
    assert res.held_out.sum() == 30 and res.params["n_train"] == 30
    # the patched pixels are exactly those the stored placement covers
    pt = res.placement
    pl = Placements(pt[:, :2], pt[:, 2], pt[:, 3])
    cov = coverage(pl, (16, 16), "square")[:, 0]
    assert torch.equal((res.x_adv != res.x)[:, 0], cov & (res.x[:, 0] != 1.0))


def test_success_is_verified_by_the_model_not_the_loss(dark):
    """The result's labels are the model's answers on the patched inputs it returns (x_train given: all held out)."""
    m = Bright().eval()
    res = adversarial_patch(m, dark, target=1, x_train=dark[:10], **KW)
    with torch.no_grad():
        assert torch.equal(res.label_adv, m(res.x_adv).argmax(1))
    assert bool(res.held_out.all()) and res.params["x_train_given"]


def test_resume_after_a_stop_gives_the_same_patch(dark, tmp_path):
    m = Bright().eval()
    kw = dict(KW, lr=0.01, steps=12)
    full = adversarial_patch(m, dark, target=1, **kw)
    ck = tmp_path / "ck"
    adversarial_patch(m, dark, target=1, checkpoint=ck, **dict(kw, steps=6))
    assert PatchCheckpoint.load(ck).step == 6
    with pytest.raises(OutputError, match="resume"):
        adversarial_patch(m, dark, target=1, checkpoint=ck, **kw)
    with pytest.raises(OptionError, match="other parameters"):
        adversarial_patch(m, dark, target=1, checkpoint=ck, resume=True, **dict(kw, lr=0.02))
    resumed = adversarial_patch(m, dark, target=1, checkpoint=ck, resume=True, **kw)
    assert float(full.patch.max()) < 1.0  # not saturated: the comparison sees the optimisation path
    assert torch.equal(resumed.patch, full.patch) and resumed.loss_history == full.loss_history
    assert torch.equal(resumed.x_adv, full.x_adv)
    # checkpoint_every saves mid-run
    ck2 = tmp_path / "ck2"
    adversarial_patch(m, dark, target=1, checkpoint=ck2, checkpoint_every=5, **dict(kw, steps=7))
    assert PatchCheckpoint.load(ck2).step == 7


def test_result_saves_and_loads(dark, tmp_path):
    res = adversarial_patch(Bright().eval(), dark, target=1, **dict(KW, steps=3))
    res.save(tmp_path / "r")
    back = PatchResult.load(tmp_path / "r")
    assert torch.equal(back.patch, res.patch) and torch.equal(back.held_out, res.held_out)
    assert back.summary()["held_out_success_rate"] == res.summary()["held_out_success_rate"]
    assert back.robust_accuracy([0.1, 0.3]) == res.robust_accuracy([0.1, 0.3])


def test_robust_accuracy_reads_the_patch_area(dark):
    res = adversarial_patch(Bright().eval(), dark, target=1, **KW)
    # area 0.25 each: robust at budgets below the area (the patch is too large to count), fooled at or above
    assert res.robust_accuracy([0.2, 0.25]) == [1.0, 0.0]


def test_bad_input_is_refused_before_any_work(dark):
    m = Bright().eval()
    with pytest.raises(InputError, match="larger than the images"):
        adversarial_patch(m, dark, target=1, patch_size=17)
    with pytest.raises(OptionError, match="scale"):
        adversarial_patch(m, dark, target=1, scale=1.5)
    with pytest.raises(OptionError, match="scale"):
        adversarial_patch(m, dark, target=1, scale=0.0)
    with pytest.raises(OptionError, match="patch mask"):
        adversarial_patch(m, dark, target=1, mask="star")
    with pytest.raises(OptionError, match="holdout"):
        adversarial_patch(m, dark, target=1, holdout=1.0)
    with pytest.raises(OptionError, match="one class"):
        adversarial_patch(m, dark, target=[1, 1])
    with pytest.raises(OptionError, match="resume"):
        adversarial_patch(m, dark, target=1, resume=True)
    with pytest.raises(InputError, match="images"):
        adversarial_patch(nn.Linear(10, 3).eval(), torch.rand(4, 10), target=1)
    with pytest.raises(InputError):
        adversarial_patch(m, dark, target=5)  # no such class
    with pytest.raises(InputError, match="shaped like x"):
        adversarial_patch(m, dark, target=1, x_train=torch.rand(3, 1, 8, 8))


@pytest.mark.slow
def test_registered_and_served_by_the_cli(tmp_path):
    e = gr.registry.attacks.get("patch")
    assert e.threat == "patch" and e.threat_model.per_sample and e.chunking is None
    out = tmp_path / "p"
    p = run_cli("attack", "patch", "--model", "zoo:mlp-digits", "--limit", "30", "--target", "3", "-o", "steps=5",
                "-o", "scale=[0.4,0.6]", "--out", out)
    assert "held_out_success_rate" in p.stdout
    res = PatchResult.load(out / "result_patch")
    assert res.patch.shape == (1, 8, 8) and res.params["steps"] == 5 and res.params["scale"] == [0.4, 0.6]
    assert (out / "examples_patch.png").exists()


def test_evaluate_patch_scores_any_patch_by_re_running_the_model(dark):
    m = Bright().eval()
    kw = dict(target=1, mask="square", scale=0.5, rotation=0.0, draws=3)
    ones = evaluate_patch(m, dark, torch.ones(1, 8, 8), **kw)
    zeros = evaluate_patch(m, dark, torch.zeros(1, 8, 8), **kw)
    assert ones["success_rate"] == 1.0 and zeros["success_rate"] == 0.0 and ones["n"] == 60
    assert ones["mean_area"] == 0.25 and ones["success_without_patch"] == 0.0
    with pytest.raises(InputError, match="bounds"):
        evaluate_patch(m, dark, torch.full((1, 8, 8), 2.0), **kw)


def test_holdout_zero_reports_no_held_out_rate(dark):
    res = adversarial_patch(Bright().eval(), dark, target=1, holdout=0.0, **dict(KW, steps=2))
    assert not res.held_out.any() and res.params["n_train"] == 60
    assert res.held_out_success_rate != res.held_out_success_rate  # nan: nothing held out
