"""Gradient-masking alarms (georobust.evaluation.alarms) and the purpose-built masking models
(georobust.models.masking): each alarm fires on its purpose-built case and stays silent on the shipped standard
(mlp-digits) and robust (lenet-fmnist-at) models, with the real PGD/FGSM where results are needed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_fmnist
from torch import nn

import georobust
from georobust import Classifier, data, pretrained
from georobust.core.losses import loss_grad
from georobust.errors import InputError, ModelError, OptionError
from georobust.evaluation import alarms as A
from georobust.models.masking import Quantized, Randomized, Saturated
from georobust.results import AttackResult

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "test", limit=200)


@pytest.fixture(scope="module")
def fmnist():
    return data.load("fashion-mnist", "test", limit=100)


@pytest.fixture(scope="module")
def mlp():
    return pretrained("mlp-digits")


@pytest.fixture(scope="module")
def lenet_at():
    return pretrained("lenet-fmnist-at")


# ---- the masking models ---------------------------------------------------------------------------------

def test_quantized_rounds_the_input_and_has_zero_gradients(mlp, digits):
    x, y = digits
    q = Quantized(mlp, levels=4)
    assert not q.training and q.bounds == mlp.bounds and q.input_shape == mlp.input_shape
    xq = q.transform(x)
    assert torch.unique(xq).numel() <= 4 and torch.allclose(xq * 3, (xq * 3).round(), atol=1e-6)
    assert (xq - x).abs().max() <= 1 / 6 + 1e-6  # rounding moves a value by at most half a level
    with torch.no_grad():
        assert torch.equal(q(x), mlp(xq))
    for loss in ("ce", "cw"):
        g, _, _ = loss_grad(q, x, y, loss=loss)
        assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("output", ["log_softmax", "probabilities"])
def test_saturated_keeps_predictions_and_kills_gradients(mlp, digits, output):
    x, y = digits
    s = Saturated(mlp, temperature=1e4, output=output)
    with torch.no_grad():
        out, z = s(x), mlp(x)
    assert torch.equal(out.argmax(1), z.argmax(1))
    correct = z.argmax(1) == y
    top2 = z.topk(2, dim=1).values
    clear = correct & (top2[:, 0] - top2[:, 1] > 0.0104)  # T·margin > 104: exp underflows to exactly 0
    assert clear.float().mean() > 0.9
    g_ce, _, _ = loss_grad(s, x, y, loss="ce")
    g_cw, _, _ = loss_grad(s, x, y, loss="cw")
    assert torch.count_nonzero(g_ce[clear]) == 0
    if output == "probabilities":
        assert (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(x)))
        assert torch.count_nonzero(g_cw[clear]) == 0          # every loss is flat
    else:
        assert torch.allclose(out, torch.log_softmax(1e4 * z, dim=1))
        assert (g_cw.flatten(1).abs().sum(1) > 0).all()      # the margin still sees the base model


def test_saturated_stalls_ce_attacks_not_scale_invariant_ones(mlp, digits):
    # the masking is real (PGD-CE stalls) and the standard cure works (the DLR loss ignores the scale T)
    x, y = digits
    s = Saturated(mlp)
    ra = {(name, loss): georobust.pgd(m, x, y, eps=EPS, steps=20, seed=0, loss=loss).robust_accuracy([EPS])[0]
          for name, m in (("base", mlp), ("saturated", s)) for loss in ("ce", "dlr")}
    assert ra["saturated", "ce"] > ra["base", "ce"] + 0.4
    assert abs(ra["saturated", "dlr"] - ra["base", "dlr"]) <= 0.01  # the same loss up to round-off


def test_randomized_differs_per_pass_is_reproducible_and_stays_in_the_box(mlp, digits):
    x, _ = digits
    r1, r2 = Randomized(mlp, sigma=0.1, resize=0.8, seed=3), Randomized(mlp, sigma=0.1, resize=0.8, seed=3)
    t1, t1b, t2 = r1.transform(x), r1.transform(x), r2.transform(x)
    assert t1.shape == x.shape and t1.min() >= 0 and t1.max() <= 1
    assert not torch.equal(t1, t1b)      # a new draw at every pass
    assert torch.equal(t1, t2)           # the same seed, the same first draw
    # resize only: the image shrinks into the frame; the rest is the lower bound
    rr = Randomized(mlp, sigma=0.0, resize=0.5, seed=0)
    t = rr.transform(torch.ones(4, 1, 8, 8))
    assert t.min() == 0 and t.max() <= 1 and (t.flatten(1).sum(1) < 64).all()
    g, _, _ = loss_grad(r1, x, digits[1])
    assert torch.isfinite(g).all() and torch.count_nonzero(g) > 0  # differentiable, but stochastic


def test_masking_models_refuse_bad_options(mlp):
    with pytest.raises(ModelError, match="levels"):
        Quantized(mlp, levels=1)
    with pytest.raises(ModelError, match="temperature"):
        Saturated(mlp, temperature=0)
    with pytest.raises(ModelError, match="output"):
        Saturated(mlp, output="log")
    with pytest.raises(ModelError, match="randomness"):
        Randomized(mlp, sigma=0, resize=None)
    with pytest.raises(ModelError, match="resize"):
        Randomized(mlp, resize=1.5)
    flat = Classifier(nn.Linear(4, 3), input_shape=(4,)).eval()
    with pytest.raises(ModelError, match="flat"):
        Randomized(flat, sigma=0.1, resize=0.8)
    with pytest.raises(ModelError, match="training mode"):
        Quantized(Classifier(nn.Linear(4, 3)))
    with pytest.raises(ModelError, match="nn.Module"):
        Saturated(lambda x: x)


# ---- alarms on the model ------------------------------------------------------------------------------

def test_gradients_alarm_fires_on_quantized_and_saturated(mlp, digits):
    x, y = digits
    for model in (Quantized(mlp), Saturated(mlp, output="probabilities")):
        a = A.gradients(model, x, y)
        assert a.name == "gradients" and a.fired and a.value == 1.0 and a.threshold == A.GRADIENT_FRACTION
        assert "gradient-free" in a.message
    a = A.gradients(Saturated(mlp), x, y)   # log_softmax: the CE's gradient vanishes, the margin's does not
    assert a.fired and a.value > 0.9 and "cw: 0.0%" in a.message


def test_probabilities_alarm_fires_on_saturated_probabilities_only(mlp, digits):
    x, _ = digits
    a = A.probabilities(Saturated(mlp, output="probabilities"), x)
    assert a.fired and a.value is not None and a.value < 1e-5
    assert not A.probabilities(Saturated(mlp), x).fired  # log_softmax looks like logits: the gradients alarm's job


def test_randomized_alarm_fires_on_randomized(mlp, digits):
    x, _ = digits
    for model in (Randomized(mlp, sigma=0.1, resize=None), Randomized(mlp, sigma=0.0, resize=0.8)):
        a = A.randomized(model, x)
        assert a.fired and a.value > 100 * A.RANDOMIZED_TOL and "EOT" in a.message
    assert not A.randomized(Quantized(mlp), x).fired


def _silent_on_model(model, x, y):
    for a in (A.randomized(model, x), A.probabilities(model, x), A.gradients(model, x, y)):
        assert not a.fired, str(a)
        if a.name == "randomized":
            assert a.value == 0.0   # the same batch, the same kernels on CPU: bit-identical outputs
        if a.name == "gradients":
            assert a.value == 0.0


def test_model_alarms_silent_on_mlp_digits(mlp, digits):
    _silent_on_model(mlp, *digits)


@needs_fmnist
def test_model_alarms_silent_on_lenet_fmnist_at(lenet_at, fmnist):
    _silent_on_model(lenet_at, *fmnist)


# ---- alarms on results: real attacks ---------------------------------------------------------------------

def test_result_alarms_fire_on_quantized_with_real_attacks(mlp, digits):
    # white-box PGD sees zero gradients on the quantised model; a transfer from the base model and random
    # noise of the same size break many samples it leaves robust
    x, y = digits
    q = Quantized(mlp)
    white = georobust.pgd(q, x, y, eps=0.2, steps=20, random_start=False, seed=0)
    transfer = georobust.pgd(mlp, x, y, eps=0.2, steps=20, seed=0)
    assert white.robust_accuracy([0.2], "inf")[0] > 0.9
    t = A.transfer_beats_whitebox(transfer, white, model=q, eps=0.2)
    nb = A.noise_beats_attack(q, x, y, white, eps=0.2)
    assert t.fired and t.value > 0.5 and nb.fired and nb.value > 0.3
    alarms = {a.name: a for a in A.run_alarms(q, x, y, eps=0.2, results={"white": white, "transfer": transfer})}
    assert [n for n in A.ALARMS if n in alarms] == list(alarms)
    assert {n for n, a in alarms.items() if a.fired} == {"gradients", "transfer_beats_whitebox", "noise_beats_attack"}
    json.dumps([a.to_dict() for a in alarms.values()])


def _run_silent(model, x, y, *, transfer=None, steps=20, long_steps=60):
    pgd = georobust.pgd(model, x, y, eps=EPS, steps=steps, seed=0)
    pgd_long = georobust.pgd(model, x, y, eps=EPS, steps=long_steps, seed=1)
    fgsm = georobust.fgsm(model, x, y, eps=EPS)
    curve = {e: georobust.pgd(model, x, y, eps=e, steps=steps, seed=0).robust_accuracy([e], "inf")[0]
             for e in (0.3, 1.0)}
    curve[EPS] = pgd.robust_accuracy([EPS], "inf")[0]
    results = {"white": pgd, "single_step": fgsm, "short": pgd, "long": pgd_long}
    if transfer is not None:
        results["transfer"] = transfer
    alarms = A.run_alarms(model, x, y, eps=EPS, results=results, robust_acc_by_eps=curve, chance=0.0)
    names = [a.name for a in alarms]
    expected = [n for n in A.ALARMS if n != "blackbox_beats_whitebox"
                and (transfer is not None or n != "transfer_beats_whitebox")]
    assert names == expected
    for a in alarms:
        assert not a.fired, str(a)
        assert json.loads(json.dumps(a.to_dict()))["name"] == a.name
    by = {a.name: a for a in alarms}
    assert by["no_convergence_to_zero"].value == 0.0     # the whole box: PGD breaks every sample
    assert by["noise_beats_attack"].value == 0.0
    return by


def test_result_alarms_silent_on_mlp_digits(mlp, digits):
    by = _run_silent(mlp, *digits)
    assert by["single_step_beats_iterative"].value <= A.MARGIN


@needs_fmnist
def test_result_alarms_silent_on_lenet_fmnist_at(lenet_at, fmnist):
    x, y = fmnist
    transfer = georobust.pgd(pretrained("lenet-fmnist"), x, y, eps=EPS, steps=20, seed=0)
    by = _run_silent(lenet_at, x, y, transfer=transfer)
    assert by["transfer_beats_whitebox"].value == 0.0 and by["single_step_beats_iterative"].value == 0.0


# ---- alarms on results: handmade ---------------------------------------------------------------------------

def _result(broken: list[bool], name="a", eps=EPS, threat="bounded-lp") -> AttackResult:
    n = len(broken)
    x = torch.linspace(0, 1, n)[:, None].repeat(1, 4)
    y = torch.zeros(n, dtype=torch.long)
    s = torch.tensor(broken)
    return AttackResult(attack=name, x=x, x_adv=x.clone(), y=y, label_clean=y.clone(),
                        label_adv=s.long(), success=s, params={"eps": eps}, threat=threat)


def test_handmade_comparisons_fire_by_the_count():
    n = 100
    white = _result([i < 10 for i in range(n)], "white")
    black = _result([i < 12 for i in range(n)], "black")         # 2 more: 2% > 1%
    black_eq = _result([i < 11 for i in range(n)], "black")      # 1 more: exactly the margin, silent
    a = A.blackbox_beats_whitebox(white, black, eps=EPS)
    assert a.fired and a.value == pytest.approx(0.02) and "2/100" in a.message
    assert not A.blackbox_beats_whitebox(white, black_eq, eps=EPS).fired
    assert A.single_step_beats_iterative(black, white, eps=EPS).fired
    assert not A.single_step_beats_iterative(white, black, eps=EPS).fired
    assert A.transfer_beats_whitebox(black, white, eps=EPS).fired
    # the per-sample worst case of several white-box results covers the gradient-free one
    white2 = _result([10 <= i < 12 for i in range(n)], "white2")
    assert A.blackbox_beats_whitebox([white, white2], black, eps=EPS).value == 0.0
    nc = A.not_converged(white, black, eps=EPS)
    assert nc.fired and nc.value == pytest.approx(0.02)
    assert not A.not_converged(white, black_eq, eps=EPS).fired  # 0.90 − 0.89: equal to the margin, no round-off
    assert not A.not_converged(black, white, eps=EPS).fired


def test_no_convergence_to_zero_fires_on_a_plateau_and_a_rise():
    a = A.no_convergence_to_zero({0.1: 0.8, 0.3: 0.7, 1.0: 0.6}, chance=0.1)
    assert a.fired and a.value == 0.6 and a.threshold == pytest.approx(0.15)
    rise = A.no_convergence_to_zero([(0.1, 0.5), (0.3, 0.6), (1.0, 0.0)], chance=0.0)
    assert rise.fired and "rises" in rise.message
    assert not A.no_convergence_to_zero({0.1: 0.5, 0.3: 0.1, 1.0: 0.14}, chance=0.1).fired


def test_bad_input_is_refused():
    r = _result([True, False])
    other = _result([True, False, True])
    with pytest.raises(InputError, match="other inputs"):
        A.blackbox_beats_whitebox(r, other, eps=EPS)
    with pytest.raises(InputError, match="AttackResult"):
        A.not_converged(r, "pgd")
    with pytest.raises(OptionError, match="margin"):
        A.blackbox_beats_whitebox(r, r, eps=EPS, margin=1.5)
    with pytest.raises(OptionError, match="eps=0.3"):
        A.blackbox_beats_whitebox(r, r, eps=0.3)           # a bounded result says nothing about another eps
    with pytest.raises(InputError, match="empty"):
        A.no_convergence_to_zero({}, chance=0.1)
    with pytest.raises(InputError, match="accuracies"):
        A.no_convergence_to_zero({0.1: 1.5}, chance=0.1)
    with pytest.raises(OptionError, match="passes"):
        A.randomized(pretrained("mlp-digits"), torch.rand(4, 1, 8, 8), passes=1)
    with pytest.raises(OptionError, match="unknown loss"):
        A.gradients(pretrained("mlp-digits"), torch.rand(4, 1, 8, 8), losses=("hinge",))


def test_run_alarms_refuses_unknown_roles_and_other_inputs(mlp, digits):
    x, y = digits
    with pytest.raises(OptionError, match="unknown result role.*'pgd'"):
        A.run_alarms(mlp, x, y, eps=EPS, results={"pgd": _result([True])})
    with pytest.raises(InputError, match="other inputs"):
        A.run_alarms(mlp, x, y, eps=EPS, results={"white": _result([True, False])})


def _square(model, x, y, eps):
    # torchattacks' Square attack (Andriushchenko et al., ECCV 2020) as the score-based peer, verified here
    torchattacks = pytest.importorskip("torchattacks")
    from georobust.checks import predict
    from georobust.results import make_result

    x_adv = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=1000, p_init=0.8, seed=0)(x, y)
    return make_result("square", model, x, x_adv, y, predict(model, x), params={"eps": eps}, threat="bounded-lp")


def test_blackbox_beats_whitebox_fires_on_masking_models_not_on_mlp_digits(mlp, digits):
    x, y = digits
    values = {}
    for name, model in (("mlp", mlp), ("saturated", Saturated(mlp)), ("quantized", Quantized(mlp))):
        white = [georobust.pgd(model, x, y, eps=EPS, steps=40, restarts=2, seed=0, loss=loss) for loss in ("ce", "cw")]
        a = A.blackbox_beats_whitebox(white[0] if name == "saturated" else white, _square(model, x, y, EPS), eps=EPS)
        values[name] = (a.fired, a.value)
    assert values["mlp"] == (False, 0.0)
    assert values["saturated"][0] and values["saturated"][1] > 0.3   # PGD-CE stalls on it, Square does not
    assert values["quantized"][0] and values["quantized"][1] > 0.1   # no gradient at all
