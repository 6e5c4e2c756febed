"""Training objectives: closed forms on affine models (CURE's two scalings, the margin hinge and the large-margin
loss, where the first-order distance is exact), a finite-difference check of CURE's gradient, the batch-norm
convention, and each objective lowering its own loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from georobust import Classifier, build, data, fit
from georobust.defenses.objectives import (
    Adversarial,
    Cure,
    FastAdversarial,
    LargeMargin,
    LocalLinearity,
    Margin,
    MarginHinge,
    eval_mode,
    inner_max,
    make_objective,
)
from georobust.errors import OptionError


def _ce_grad_affine(clf, x, y):
    """∇ₓ CE(Wx + b, y) = Wᵀ(softmax − e_y), per sample, in closed form."""
    w = clf.module.w.detach()
    p = torch.softmax(clf(x).detach(), 1)
    return (p - F.one_hot(y, p.shape[1]).float()) @ w


def _labels(n, k=5, seed=3):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_inner_max_steps_equal_hand_computed_pgd(affine, affine_data, norm):
    x, y = affine_data, _labels(64)
    eps, alpha = (0.05, 0.02) if norm == "inf" else (0.5, 0.2)
    xk = x.clone()
    for _ in range(2):  # two hand-computed PGD steps
        g = _ce_grad_affine(affine, xk, y)
        d = g.sign() if norm == "inf" else g / g.norm(dim=1, keepdim=True)
        delta = xk + alpha * d - x
        if norm == "inf":
            delta = delta.clamp(-eps, eps)
        else:
            delta = delta * torch.clamp(eps / delta.norm(dim=1, keepdim=True), max=1.0)
        xk = (x + delta).clamp(0, 1)
    got = inner_max(affine, x, y, eps=eps, norm=norm, steps=2, step_size=alpha, random_start=False)
    assert torch.allclose(got, xk, atol=1e-6)
    assert not got.requires_grad


def test_inner_max_random_start_stays_in_ball_and_bounds(affine):
    x = torch.rand(64, 20, generator=torch.Generator().manual_seed(0))
    y = _labels(64)
    for norm, eps in (("inf", 0.1), ("2", 0.7)):
        torch.manual_seed(0)
        xa = inner_max(affine, x, y, eps=eps, norm=norm, steps=3)
        n = (xa - x).abs().amax(1) if norm == "inf" else (xa - x).norm(dim=1)
        assert float(n.max()) <= eps + 1e-5
        assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    # the step raises the loss of every sample on an affine model (gradient ascent on a convex function)
    xa = inner_max(affine, x, y, eps=0.05, steps=5, random_start=False)
    assert (F.cross_entropy(affine(xa), y, reduction="none") >= F.cross_entropy(affine(x), y, reduction="none")).all()


def test_adversarial_loss_is_ce_at_the_inner_maximiser(affine, affine_data):
    x, y = affine_data, _labels(64)
    obj = Adversarial(eps=0.05, steps=3, random_start=False)
    loss, terms = obj(affine, x, y)
    xa = inner_max(affine, x, y, eps=0.05, steps=3, random_start=False)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(affine(xa), y).detach()), rel=1e-6)
    assert terms["ce_adv"] == pytest.approx(float(loss.detach()))
    fast = FastAdversarial(eps=0.1)
    assert (fast.steps, fast.step_size, fast.random_start) == (1, pytest.approx(0.125), True)
    # one spelling of fast AT: the registered fast-adversarial objective (Adversarial has no fast= option)
    assert make_objective("fast-adversarial", eps=0.1).steps == 1
    with pytest.raises(OptionError, match="fast"):
        make_objective("adversarial", eps=0.1, fast=True)


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("name", ["adversarial", "cure", "llr", "margin-hinge", "large-margin"])
def test_inner_computations_in_eval_mode_modes_restored(name):
    """The attack/regulariser runs in eval mode; batch-norm statistics are updated once per training step
    (by the CE forward only) and every module's mode is restored."""
    torch.manual_seed(0)
    clf = Classifier(_BNNet())
    clf.train()
    bn = clf.module.net[2]
    x, y = torch.rand(32, 1, 8, 8), _labels(32, 10)
    loss, _ = make_objective(name)(clf, x, y)
    # batch-norm statistics are updated once per step by the CE forward; large-margin has no CE (it replaces it)
    assert int(bn.num_batches_tracked) == (0 if name == "large-margin" else 1)
    assert all(m.training for m in clf.modules())
    assert torch.isfinite(loss)


def test_eval_mode_restores_mixed_modes():
    clf = Classifier(_BNNet())
    clf.train()
    clf.module.net[4].eval()
    with eval_mode(clf):
        assert not any(m.training for m in clf.modules())
    assert clf.module.net[2].training and not clf.module.net[4].training


# ----------------------------------------------------------------------------------------------- CURE
def test_cure_term_closed_form_on_affine_model_per_sample(affine, affine_data):
    """For f = Wx + b: ∇ℓ(x) = Wᵀ(p(x) − e_y), so the term is ‖Wᵀ(p(x + h z) − p(x))‖² with
    z = sign(∇ℓ)/√d — per sample, not divided by the batch size."""
    x, y = affine_data, _labels(64)
    h = 0.3
    g = _ce_grad_affine(affine, x, y)
    z = g.sign() / math.sqrt(x.shape[1])
    expect = (_ce_grad_affine(affine, x + h * z, y) - g).pow(2).sum(1)
    reg, _ = Cure(h=h).regulariser(affine, x, y)
    assert torch.allclose(reg.detach(), expect, rtol=1e-4, atol=1e-7)
    reg1, _ = Cure(h=h).regulariser(affine, x[:1], y[:1])  # a batch of one gives the same value
    assert float(reg1.detach()) == pytest.approx(float(reg[0].detach()), rel=1e-5)
    assert float(expect.min()) > 0  # the CE of an affine model is curved: the term is not trivially zero


def test_cure_term_zero_for_affine_model_with_affine_loss(affine, affine_data):
    """With the margin loss (affine in the logits), an affine model has a constant input gradient."""
    x, y = affine_data, _labels(64)
    reg, _ = Cure(h=1e-3, loss="cw").regulariser(affine, x, y)
    assert float(reg.detach().abs().max()) == 0.0


def test_cure_parameter_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    cure = Cure(h=0.5)

    def term():
        return cure.regulariser(net, x, y)[0].mean()

    params = list(net.parameters())
    grads = torch.autograd.grad(term(), params)
    step = 1e-6
    for p, g in zip(params, grads):
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 7)):
            old = flat[i].item()
            flat[i] = old + step
            up = term().item()
            flat[i] = old - step
            down = term().item()
            flat[i] = old
            assert g.view(-1)[i].item() == pytest.approx((up - down) / (2 * step), rel=1e-4, abs=1e-8)


def test_cure_schedule_ramps_h_and_gamma():
    c = Cure(gamma=2.0, h=1.0, h_warmup=2.0, gamma_warmup=1.0)
    c.set_progress(0.5, 4)
    assert c.current() == (pytest.approx(0.25), pytest.approx(1.0))
    c.set_progress(3.0, 4)
    assert c.current() == (1.0, 2.0)


def test_cure_two_scalings_equal_an_independent_computation():
    """Both scalings of the CURE term, on a tiny network, against a computation that shares no code with the
    objective: per-sample input gradients by torch.func (vmap of grad of one sample's CE), then the documented
    formulas — (1/N) Σ‖Δ_i‖² and (1/N) Σ‖Δ_i/N‖ — and the objective's total loss CE + γ·term, exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 4))
    clf = Classifier(net).eval()
    x = torch.rand(6, 1, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    h, gamma = 0.7, 4.0

    def one(xi, yi):
        return F.cross_entropy(net(xi[None]), yi[None])

    grad1 = torch.func.vmap(torch.func.grad(one))
    with torch.no_grad():
        g = grad1(x, y)
        s = g.sign()
        z = s / s.flatten(1).norm(dim=1)[:, None, None, None]
        delta = (grad1(x + h * z, y) - g).flatten(1)
        ce = F.cross_entropy(net(x), y)
    n = x.shape[0]
    want = {"per-sample-squared": delta.pow(2).sum(1), "authors": (delta / n).norm(dim=1)}
    for reg, per in want.items():
        obj = Cure(gamma=gamma, h=h, h_warmup=0.0, reg=reg)
        got, _ = obj.regulariser(clf, x, y)
        torch.testing.assert_close(got.detach(), per, rtol=1e-5, atol=1e-9)
        clf.train()
        loss, terms = obj(clf, x, y)
        clf.eval()
        assert float(loss.detach()) == pytest.approx(float(ce + gamma * per.mean()), rel=1e-5)
        assert terms["cure"] == pytest.approx(float(per.mean()), rel=1e-5)
    # the same γ weighs different things: here the two terms differ by a factor of several
    ratio = float(want["per-sample-squared"].mean() / want["authors"].mean())
    assert not 0.5 < ratio < 2.0, ratio
    # the default is per-sample-squared and stays out of the config (older checkpoints' configs still match)
    assert Cure().reg == "per-sample-squared" and "reg" not in Cure().config()
    assert Cure(reg="authors").config()["reg"] == "authors"
    with pytest.raises(OptionError, match="authors"):
        Cure(reg="mean")


def test_cure_authors_scaling_shrinks_with_the_batch_size(affine, affine_data):
    """The authors' term depends on the batch: per sample it is ‖Δ_i‖/N, so the same samples in a batch twice
    as large give half the value; the per-sample-squared term does not change."""
    x, y = affine_data[:8], _labels(8)
    a1, _ = Cure(h=0.3, reg="authors").regulariser(affine, x, y)
    a2, _ = Cure(h=0.3, reg="authors").regulariser(affine, torch.cat([x, x]), torch.cat([y, y]))
    torch.testing.assert_close(a2[:8].detach(), a1.detach() / 2, rtol=1e-5, atol=0)
    p1, _ = Cure(h=0.3).regulariser(affine, x, y)
    p2, _ = Cure(h=0.3).regulariser(affine, torch.cat([x, x]), torch.cat([y, y]))
    torch.testing.assert_close(p2[:8].detach(), p1.detach(), rtol=1e-5, atol=0)


def test_shipped_cure_model_used_the_per_sample_squared_scaling():
    """lenet-fmnist-cure's recorded objective options have no ``reg``: it was trained with the default."""
    import json
    from pathlib import Path

    import georobust

    man = json.loads((Path(georobust.__file__).parent / "models" / "weights" / "MANIFEST.json").read_text())
    entry = man["lenet-fmnist-cure"]
    assert entry["objective"] == "cure" and "reg=" not in entry["command"]
    assert make_objective("cure", gamma="4", h="3").reg == "per-sample-squared"


# ----------------------------------------------------------------------------------------- LLR, margin
def _affine_distances(clf, x, y, dual: float):
    """Exact L_p distances of x to the boundary between y and each class j of an affine model (dual norm q),
    signed (negative on the wrong side); +inf at j = y."""
    w = clf.module.w.detach().double()
    z = clf(x).detach().double()
    zy = z.gather(1, y[:, None])
    dw = (w[y][:, None, :] - w[None]).norm(p=dual, dim=2)  # (N, K): ‖w_y − w_j‖_q
    d = (zy - z) / dw
    return d.masked_fill(F.one_hot(y, z.shape[1]).bool(), math.inf)


@pytest.mark.parametrize("norm,dual", [("2", 2.0), ("inf", 1.0)])
@pytest.mark.parametrize("aggregation", ["max", "sum"])
def test_large_margin_equals_exact_hinges_on_affine_model(affine, affine_data, norm, dual, aggregation):
    """On an affine model the first-order distance to each (y, j) boundary is exact: (z_y − z_j)/‖w_y − w_j‖_q.
    The loss is mean_i A_j max(0, γ − d_ij) with A = max or sum over j ≠ y."""
    x, y = affine_data, _labels(64)
    gamma = 0.08
    d = _affine_distances(affine, x, y, dual)
    hinge = (gamma - d).clamp_min(0)  # zero at j = y (d = +inf)
    per = hinge.max(1).values if aggregation == "max" else hinge.sum(1)
    obj = LargeMargin(gamma=gamma, aggregation=aggregation, norm=norm, eps=1e-12)
    got, logits = obj.losses(affine, x, y)
    torch.testing.assert_close(got.detach().double(), per, rtol=1e-4, atol=1e-6)
    assert float(per.min()) < float(per.max()) and float(per.max()) > 0  # some hinges active, not all equal
    loss, terms = obj(affine, x, y)
    assert float(loss.detach()) == pytest.approx(float(per.mean()), rel=1e-4)


def test_large_margin_top_k_keeps_the_highest_other_classes(affine, affine_data):
    x, y = affine_data, _labels(64)
    d = _affine_distances(affine, x, y, 2.0)
    z = affine(x).detach().masked_fill(F.one_hot(y, 5).bool(), -math.inf)
    top2 = torch.zeros_like(z, dtype=torch.bool).scatter_(1, z.topk(2, dim=1).indices, True)
    want = (0.08 - d).clamp_min(0).masked_fill(~top2, 0).sum(1)
    got, _ = LargeMargin(gamma=0.08, aggregation="sum", top_k=2, eps=1e-12).losses(affine, x, y)
    torch.testing.assert_close(got.detach().double(), want, rtol=1e-4, atol=1e-6)


def test_large_margin_hidden_layer_distance_is_exact_for_a_linear_head():
    """At a hidden layer h = W1 x + b1 followed by z = W2 h + b2 the first-order distance in h is exact,
    (z_y − z_j)/‖W2_y − W2_j‖; with layers='input,<name>' both layers' hinges add up (γ_input, γ_hidden)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(10, 6), nn.Linear(6, 4))
    clf = Classifier(net).eval()
    x = torch.rand(32, 10, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(4))
    w2, w1 = net[1].weight.detach().double(), net[0].weight.detach().double()
    z = clf(x).detach().double()
    onehot = F.one_hot(y, 4).bool()
    zy = z.gather(1, y[:, None])
    d_hid = ((zy - z) / (w2[y][:, None, :] - w2[None]).norm(dim=2)).masked_fill(onehot, math.inf)
    weff = w2 @ w1  # the input-space weights of the composed affine map
    d_in = ((zy - z) / (weff[y][:, None, :] - weff[None]).norm(dim=2)).masked_fill(onehot, math.inf)
    g_in, g_hid = 0.3, 0.5
    want = ((g_in - d_in).clamp_min(0) + (g_hid - d_hid).clamp_min(0)).max(1).values
    obj = LargeMargin(gamma=g_in, gamma_hidden=g_hid, layers="input,module.0", eps=1e-12)
    got, _ = obj.losses(clf, x, y)
    torch.testing.assert_close(got.detach().double(), want, rtol=1e-4, atol=1e-6)
    only_hidden, _ = LargeMargin(gamma_hidden=g_hid, layers="module.0", eps=1e-12).losses(clf, x, y)
    torch.testing.assert_close(only_hidden.detach().double(), (g_hid - d_hid).clamp_min(0).max(1).values,
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(OptionError, match="no sub-module"):
        LargeMargin(layers="input,fc9").losses(clf, x, y)
    with pytest.raises(OptionError):
        LargeMargin(aggregation="mean")


def test_margin_former_name_is_the_margin_hinge(caplog):
    with caplog.at_level("WARNING"):
        obj = make_objective("margin", target="0.5")
    assert isinstance(obj, MarginHinge) and obj.config() == {"name": "margin-hinge", "target": 0.5, "lam": 0.1}
    assert "margin-hinge" in caplog.text
    assert Margin is MarginHinge and make_objective("margin-hinge").name == "margin-hinge"


def test_margin_equals_exact_distance_on_affine_model(affine, affine_data):
    """On an affine model the first-order margin is exact: (z_y − z_k)/‖w_y − w_k‖ for the runner-up k."""
    x = affine_data
    logits = affine(x).detach()
    y = logits.argmax(1)
    k = logits.clone().scatter_(1, y[:, None], -math.inf).argmax(1)
    w = affine.module.w.detach()
    expect = (logits.gather(1, y[:, None]) - logits.gather(1, k[:, None])).squeeze(1) / (w[y] - w[k]).norm(dim=1)
    d = Margin().margins(affine, x, y)
    assert torch.allclose(d.detach(), expect, rtol=1e-5)


def test_llr_search_increases_nonlinearity(affine, affine_data):
    x, y = affine_data, _labels(64)
    torch.manual_seed(0)
    llr0 = LocalLinearity(eps=0.1, steps=1, step_size=1e-9)
    torch.manual_seed(0)
    llr5 = LocalLinearity(eps=0.1, steps=5)
    _, t0 = llr0(affine, x, y)
    torch.manual_seed(0)
    _, t5 = llr5(affine, x, y)
    assert t5["llr"] > t0["llr"] > 0


# ------------------------------------------------------------------------------ options and training
def test_make_objective_options_and_errors():
    obj = make_objective("adversarial", eps="0.2", steps="3", random_start="false", norm="2")
    assert (obj.eps, obj.steps, obj.random_start, obj.norm) == (0.2, 3, False, "2")
    assert obj.config()["name"] == "adversarial" and obj.config()["eps"] == 0.2
    with pytest.raises(OptionError, match="Did you mean 'eps'"):
        make_objective("adversarial", epss=0.1)
    with pytest.raises(OptionError, match="eps"):
        make_objective("adversarial", eps=-1)
    with pytest.raises(OptionError):
        make_objective("cure", loss="mse")
    with pytest.raises(OptionError):
        make_objective("adversarial", norm="1")
    with pytest.raises(OptionError, match="unknown objective"):
        make_objective("curee")


@pytest.fixture(scope="module")
def digits_train():
    return data.load("digits", "train")


@pytest.mark.parametrize("name,opts", [
    ("standard", {}), ("adversarial", {"eps": 0.1, "steps": 3}), ("fast-adversarial", {"eps": 0.1}),
    ("cure", {"h": 0.5, "h_warmup": 0.0}), ("cure", {"h": 0.5, "h_warmup": 0.0, "reg": "authors"}),
    ("llr", {"eps": 0.1}), ("margin-hinge", {"target": 0.5, "lam": 1.0}),
    ("large-margin", {"gamma": 0.5, "layers": "input"}),
])
def test_each_objective_lowers_its_own_loss(digits_train, name, opts):
    x, y = digits_train
    xb, yb = x[:256], y[:256]
    model = Classifier(build("mlp", (1, 8, 8), 10, seed=0))
    obj = make_objective(name, **opts)

    def own_loss():
        torch.manual_seed(123)
        model.train()
        loss, _ = obj(model, xb, yb)
        model.eval()
        return float(loss.detach())

    before = own_loss()
    fit(model, (x, y), obj, epochs=5, lr=1e-2, seed=0)
    after = own_loss()
    assert after < 0.6 * before, (before, after)


@pytest.mark.peers
def test_pgd_at_epoch_matches_a_torchattacks_loop(digits_train):
    """Peer cross-check: one epoch of our PGD-AT and a plain loop with torchattacks.PGD, same seed, same
    shuffling, same random starts — the same weights (up to float round-off)."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits_train[0][:256], digits_train[1][:256]
    ours, peer = Classifier(build("mlp", (1, 8, 8), 10, seed=0)), Classifier(build("mlp", (1, 8, 8), 10, seed=0))
    fit(ours, (x, y), "adversarial", objective_options={"eps": 0.1, "steps": 3}, epochs=1, lr=1e-3,
        schedule="constant", batch_size=64, seed=5)
    atk = torchattacks.PGD(peer, eps=0.1, alpha=2.5 * 0.1 / 3, steps=3, random_start=True)
    opt = torch.optim.Adam(peer.parameters(), lr=1e-3)
    torch.manual_seed(5)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(5))
    peer.train()
    for i in range(0, 256, 64):
        idx = perm[i:i + 64]
        loss = F.cross_entropy(peer(atk(x[idx], y[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for a, b in zip(ours.parameters(), peer.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
