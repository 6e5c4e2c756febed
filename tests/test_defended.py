"""The defended-model interface (issue 11, item 5): Detector, Projection, Defended, BPDA, EOT.

Every number below is on the affine toy of conftest (``make_affine(d=20, k=5)``) with inputs uniform in
``[0.3, 0.7]^20``; each is deterministic given the seeds (measured values quoted beside the assertions).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_affine
from torch import nn

import georobust
from georobust.defenses import BPDA, EOT, Defended, Detector, Projection, Quantize, RandomNoise
from georobust.errors import GeorobustError, InputError, ModelError, OptionError

D = 20


class MeanDistance(Detector):
    """Toy detector: Euclidean distance of the input from a reference point (the clean data's mean)."""

    def __init__(self, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)

    def score(self, x):
        return (x.flatten(1) - self.mean).norm(dim=1)


def clean(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, D, generator=g)


@pytest.fixture
def clf():
    return make_affine(d=D, k=5, seed=0)


@pytest.fixture
def x():
    return clean(200, 1)


@pytest.fixture
def detector():
    return MeanDistance(torch.full((D,), 0.5)).fit_threshold(clean(1000, 2), fpr=0.1)


# ---- BPDA -----------------------------------------------------------------------------------------------

def test_bpda_forward_is_the_quantiser_and_backward_the_identity():
    q = Quantize(5)
    b = BPDA(q)
    x = clean(64, 3).requires_grad_(True)
    w = torch.randn(64, D, generator=torch.Generator().manual_seed(4))
    out = b(x)
    assert torch.equal(out, q(x.detach()))  # bit for bit, not up to s + (t − s) round-off
    assert torch.equal(torch.unique(out.detach() * 4), torch.tensor([1.0, 2.0, 3.0]))  # levels 0.25, 0.5, 0.75
    (g,) = torch.autograd.grad((w * out).sum(), x)
    assert torch.equal(g, w)
    # the quantiser itself has a zero gradient: the obfuscation BPDA removes
    (g0,) = torch.autograd.grad((w * q(x)).sum(), x)
    assert torch.equal(g0, torch.zeros_like(w))


def test_bpda_with_a_substitute_uses_its_gradient():
    x = clean(8, 5).requires_grad_(True)
    b = BPDA(Quantize(5), substitute=nn.Identity().eval())
    scale = BPDA(Quantize(5), substitute=_Scale(3.0))
    (g1,) = torch.autograd.grad(b(x).sum(), x)
    (g3,) = torch.autograd.grad(scale(x).sum(), x)
    assert torch.equal(g1, torch.ones_like(x))
    assert torch.equal(g3, torch.full_like(x, 3.0))
    assert torch.equal(scale(x), Quantize(5)(x))


class _Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.eval()

    def forward(self, x):
        return self.c * x


# ---- attacks on a Defended model --------------------------------------------------------------------------

def test_defended_is_a_classifier_with_the_classifiers_bounds_and_mode(clf):
    d = Defended(clf, projection=Quantize(5))
    assert isinstance(d, georobust.Classifier)
    assert d.bounds == clf.bounds and d.input_shape == clf.input_shape and not d.training
    z = d(clean(4, 6))
    assert z.shape == (4, 5)
    assert torch.equal(z, clf(Quantize(5)(clean(4, 6))))
    assert d.reject_class is None


def test_attack_on_adaptive_surrogate_is_verified_against_the_defended_model(clf, x):
    d = Defended(clf, projection=Quantize(5))
    sur = d.adaptive(bpda=True)
    assert isinstance(sur.projection, BPDA) and sur.real is d
    bpda = georobust.pgd(sur, x, eps=0.05, seed=0)
    # the verified labels are the whole defended model's predictions on x_adv, bit for bit
    assert torch.equal(bpda.label_adv, d.predict(bpda.x_adv))
    assert torch.equal(bpda.label_clean, d.predict(x))
    re = d.verify(bpda)
    assert torch.equal(re.success, bpda.success) and torch.equal(re.label_adv, bpda.label_adv)
    assert torch.equal(sur.verify(bpda).success, bpda.success)
    # the plain gradient attack on the real defended model: the quantiser's gradient is zero, so only the random
    # start moves (measured: BPDA 0.97, plain 0.335 with the same random start, 0.0 without one)
    plain = georobust.pgd(d, x, eps=0.05, seed=0)
    still = georobust.pgd(d, x, eps=0.05, seed=0, random_start=False)
    assert bpda.success_rate >= 0.9
    assert plain.success_rate <= bpda.success_rate - 0.4
    assert still.success_rate == 0.0
    assert torch.equal(still.x_adv, x)  # zero gradient: not a single step moved
    # what the BPDA attack finds on the defended model, it finds where plain PGD succeeds too: no sample is lost
    assert not (plain.success & ~bpda.success).any()


def test_detected_adversarial_example_is_not_a_success(clf, x, detector):
    d = Defended(clf, detector=detector)
    # the undefended attack, re-verified against the whole defended model
    r = georobust.pgd(clf, x, eps=0.1, seed=0, early_stop=False)
    v = d.verify(r)
    assert d.reject_class == 5
    accepted = d.accepts(r.x_adv)
    assert torch.equal(accepted, ~detector.detect(r.x_adv))
    rejected = v.label_adv == d.reject_class
    assert torch.equal(rejected, ~accepted)
    # measured: every PGD point fools the bare classifier, 73.5 % of them are detected
    assert r.success_rate == 1.0
    assert rejected.double().mean() >= 0.5
    # a naive untargeted criterion (label != y) would count every rejected point: the verified one counts none
    assert (v.label_adv[rejected] != v.y[rejected]).all()
    assert not v.success[rejected].any()
    assert torch.equal(v.success, (v.label_adv != v.y) & accepted & (v.label_clean == v.y))
    # an attack run on the defended model directly, with labels (the bare classifier's), is verified the same way
    y = clf(x).argmax(1)
    direct = georobust.pgd(d, x, y, eps=0.1, seed=0, early_stop=False)
    rej = direct.label_adv == 5
    assert rej.any() and not direct.success[rej].any()
    # a clean input the detector flags (measured: 21 of 200) is reported unperturbed, not fooled, not robust
    fp = direct.label_clean == 5
    assert fp.any()
    assert not direct.success[fp].any() and torch.equal(direct.x_adv[fp], x[fp])
    robust = (~direct.success & ~fp).double().mean().item()
    assert direct.robust_accuracy([0.1], "inf")[0] == pytest.approx(robust, abs=1e-12)
    # without labels y is the defended clean prediction: a rejected clean input has no class to be moved away
    # from, so moving it into an accepted class is not a success either
    unlabelled = georobust.pgd(d, x, eps=0.1, seed=0, early_stop=False)
    fp = unlabelled.label_clean == 5
    assert torch.equal(unlabelled.y, unlabelled.label_clean)
    assert fp.any() and not unlabelled.success[fp].any()
    assert (unlabelled.label_adv[fp] != 5).any()  # some of them the attack did move into an accepted class


def test_reject_ignore_keeps_predictions_and_reports_detection(clf, x, detector):
    d = Defended(clf, detector=detector, reject="ignore")
    assert torch.equal(d(x), clf(x)) and d.reject_class is None
    r = georobust.pgd(d, x, eps=0.1, seed=0, early_stop=False)
    assert r.success_rate == 1.0
    assert (~d.accepts(r.x_adv)).double().mean() >= 0.5


# ---- detectors ----------------------------------------------------------------------------------------------

def test_threshold_quantile_rule_and_fresh_false_positive_rate(detector):
    fit = clean(1000, 2)
    s = detector.score(fit)
    # the rule: threshold = s_(k), k = ceil(0.9·1000) = 900, flag iff s > threshold → exactly 100 of 1000
    assert detector.threshold == float(s.double().sort().values[899])
    assert int(detector.detect(fit).sum()) == 100
    # On fresh clean data the flag rate is p = 1 − F(threshold) plus binomial noise. F(s_(900)) ~ Beta(900, 101):
    # sd sqrt(0.9·0.1/1001) ≈ 0.0095 around 0.9; the flag rate of m = 2000 fresh samples given p has sd
    # sqrt(0.1·0.9/2000) ≈ 0.0067. Together sd ≈ 0.0116, so [0.05, 0.15] is ±4.3 sd: it fails with probability
    # < 2e-5 for any seed (measured with these seeds: 0.1175).
    rate = detector.detect(clean(2000, 3)).double().mean()
    assert 0.05 <= rate <= 0.15


def test_toy_detector_flags_pgd_examples_more_than_clean(clf, x, detector):
    r = georobust.pgd(clf, x, eps=0.1, seed=0, early_stop=False)
    adv, cln = detector.detect(r.x_adv).double().mean(), detector.detect(x).double().mean()
    # measured: 0.735 of the PGD examples against 0.105 of their clean inputs
    assert adv >= cln + 0.4


# ---- EOT ----------------------------------------------------------------------------------------------------

def test_eot_averages_outputs_and_cuts_gradient_variance(clf, x):
    xs = x[:16]
    y = clf(xs).argmax(1)

    def grads(k):
        out = []
        for seed in range(20):
            torch.manual_seed(seed)
            m = EOT(nn.Sequential(RandomNoise(0.2), clf), samples=k)
            xr = xs.clone().requires_grad_(True)
            F.cross_entropy(m(xr), y, reduction="sum").backward()
            out.append(xr.grad)
        return torch.stack(out).double()

    v1, v8 = grads(1).var(0).sum(), grads(8).var(0).sum()
    # about 1/8 expected; measured 6.06 / 42.3 = 0.143
    assert v8 / v1 < 0.5
    # the forward is the mean of the k draws
    torch.manual_seed(0)
    noise = RandomNoise(0.2)
    draws = [clf(noise(xs)) for _ in range(4)]
    torch.manual_seed(0)
    assert torch.allclose(EOT(nn.Sequential(RandomNoise(0.2), clf), 4)(xs), sum(draws) / 4, atol=1e-6, rtol=0)


def test_adaptive_surrogate_with_eot_on_randomized_projection(clf, x):
    d = Defended(clf, projection=RandomNoise(0.05))
    y = clf(x).argmax(1)

    def real_success(k):
        sur = d.adaptive(eot=k)
        assert isinstance(sur.projection, RandomNoise)  # differentiable: no BPDA
        assert isinstance(sur.module, EOT) == (k > 1)
        torch.manual_seed(0)
        r = georobust.pgd(sur, x, y, eps=0.05, seed=0, early_stop=False)
        rates = []
        for s in range(10):  # the real randomized defence, averaged over 10 draws of its noise
            torch.manual_seed(100 + s)
            rates.append(sur.verify(r).success_rate)  # the surrogate verifies against the real model
        return sum(rates) / len(rates)

    # measured (attack seeds 0-4): EOT over 8 draws 0.769-0.776, one draw 0.667-0.713; seed 0: 0.769 vs 0.713
    assert real_success(8) >= real_success(1) + 0.03


def test_randomnoise_and_quantize_stay_in_the_box():
    x = torch.rand(50, D, generator=torch.Generator().manual_seed(7))
    for p in (Quantize(4), RandomNoise(0.5)):
        out = p(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert Quantize(4).differentiable is False and RandomNoise(0.1).randomized is True


# ---- bad input ----------------------------------------------------------------------------------------------

def test_bad_input_is_refused_clearly(clf, detector):
    with pytest.raises(OptionError, match="reject option 'refuse'"):
        Defended(clf, detector=detector, reject="refuse")
    for fpr in (0, 1, -0.1, 1.5, True):
        with pytest.raises(OptionError, match="strictly between 0 and 1"):
            MeanDistance(torch.zeros(D)).fit_threshold(clean(100, 0), fpr=fpr)
    with pytest.raises(InputError, match="at least 100 clean samples"):
        MeanDistance(torch.zeros(D)).fit_threshold(clean(50, 0), fpr=0.01)
    unfitted = MeanDistance(torch.zeros(D))
    with pytest.raises(ModelError, match="no threshold yet"):
        unfitted.detect(clean(4, 0))
    with pytest.raises(ModelError, match="no threshold yet"):
        georobust.pgd(Defended(clf, detector=unfitted), clean(4, 0), eps=0.1)
    with pytest.raises(OptionError, match="Projection"):
        Defended(clf, projection=nn.Identity())
    with pytest.raises(OptionError, match="bounds"):
        Defended(clf, projection=Quantize(4, bounds=(-1, 1)))
    with pytest.raises(OptionError, match="levels"):
        Quantize(1)
    with pytest.raises(OptionError, match="eot"):
        Defended(clf).adaptive(eot=0)
    with pytest.raises(InputError, match="NaN"):
        detector.detect(torch.full((2, D), float("nan")))
    with pytest.raises(TypeError):
        Projection()  # abstract


def test_detector_with_wrong_score_shape_is_refused():
    class Bad(Detector):
        def score(self, x):
            return x.sum(1, keepdim=True)

    with pytest.raises(ModelError, match=r"shape \(10,\)"):
        Bad().fit_threshold(clean(10, 0), fpr=0.5)
    assert issubclass(ModelError, GeorobustError)
