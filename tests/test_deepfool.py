"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016): exact on affine classifiers, verified, and cross-checked
against Foolbox, torchattacks and ART on the same model and inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import ROUNDOFF, make_affine, needs_fmnist, on_boundary, relative_margin

from georobust import registry
from georobust.attacks.deepfool import STEP_EPS, deepfool, deepfool_batch, top_classes
from georobust.checks import predict
from georobust.errors import InputError, ModelError, OptionError


def affine_distances(clf, x, q: float):
    """Closed form: per sample and class, ``|f_k − f_k̂| / ‖w_k − w_k̂‖_q`` (inf for k̂ itself)."""
    w, b = clf.module.w.detach().double(), clf.module.b.detach().double()
    xd = x.flatten(1).double()
    f = xd @ w.T + b
    p = f.argmax(1)
    fd = (f - f.gather(1, p[:, None])).abs()
    wd = (w[None] - w[p][:, None]).norm(p=q, dim=2)
    d = fd / wd
    d[torch.arange(len(x)), p] = float("inf")
    return d, p


def test_registered():
    e = registry.attacks.get("deepfool")
    assert e.threat == "minimal-lp" and e.norms == ("2", "inf") and e.fn is deepfool


@pytest.mark.parametrize("overshoot", [0.0, 0.02])
def test_affine_l2_exact_in_one_step(affine, affine_data, overshoot):
    d, p = affine_distances(affine, affine_data, 2)
    res = deepfool(affine, affine_data, clip=False, overshoot=overshoot)
    expect = (1 + overshoot) * (d.min(1).values + STEP_EPS)
    assert res.success.all()
    assert (res.iterations == 1).all()
    torch.testing.assert_close(res.l2, expect, rtol=1e-4, atol=1e-6)
    # the class reached is the closest boundary's class, and the perturbation is along w_l − w_k̂
    assert torch.equal(res.label_adv, d.argmin(1))
    w = affine.module.w.detach().double()
    direction = w[d.argmin(1)] - w[p]
    cos = torch.nn.functional.cosine_similarity(res.perturbation.double(), direction, dim=1)
    assert (cos > 1 - 1e-6).all()


def test_affine_linf_exact_with_l1_dual(affine, affine_data):
    d, _ = affine_distances(affine, affine_data, 1)
    res = deepfool(affine, affine_data, norm="inf", clip=False, overshoot=0.02)
    assert res.success.all() and (res.iterations == 1).all()
    torch.testing.assert_close(res.linf, 1.02 * (d.min(1).values + STEP_EPS), rtol=1e-4, atol=1e-6)
    # L∞ steps are along sign(w'): every coordinate moves by the same amount
    torch.testing.assert_close(res.perturbation.abs().double(), res.linf[:, None].expand(-1, 20), rtol=1e-4,
                               atol=1e-6)


def test_affine_all_candidates_vs_fewer():
    """With every class a candidate DeepFool finds the global minimum; with fewer, the best among them."""
    clf = make_affine(30, 8, seed=3)
    x = 0.4 + 0.2 * torch.rand(50, 30, generator=torch.Generator().manual_seed(0))
    d, _ = affine_distances(clf, x, 2)
    full = deepfool(clf, x, clip=False, candidates=8, overshoot=0.0)
    torch.testing.assert_close(full.l2, d.min(1).values + STEP_EPS, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        top3 = top_classes(clf(x), 3)
    three = deepfool(clf, x, clip=False, candidates=3, overshoot=0.0)
    torch.testing.assert_close(three.l2, d.gather(1, top3[:, 1:]).min(1).values + STEP_EPS, rtol=1e-4, atol=1e-6)
    assert (three.l2 >= full.l2 - 1e-6).all()


def test_bounds_verified_success_and_independent_norms(mlp_digits, digits_test):
    x = digits_test[0][:200]
    for norm in ("2", "inf"):
        res = deepfool(mlp_digits, x, norm=norm)
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        with torch.inference_mode():
            lab = mlp_digits(res.x_adv).argmax(1)
        assert torch.equal(res.success, lab != res.y)
        # DeepFool fools this model everywhere; a few of its points (9 of 200 for L2, measured) are past the
        # boundary by less than round-off (clipping eats the overshoot) and may count either way elsewhere
        assert bool((res.success | on_boundary(mlp_digits, res.x_adv, res.y)).all())
        r = (res.x_adv.numpy().astype("float64") - x.numpy().astype("float64")).reshape(200, -1)
        import numpy as np

        np.testing.assert_allclose(res.l2.numpy(), np.sqrt((r**2).sum(1)), rtol=1e-10)
        np.testing.assert_allclose(res.linf.numpy(), np.abs(r).max(1), rtol=1e-10)
        np.testing.assert_allclose(res.rho.numpy(), np.sqrt((r**2).sum(1)) / np.linalg.norm(x.reshape(200, -1), axis=1),
                                   rtol=1e-6)
        assert res.iterations is not None and (res.iterations >= 1).all() and (res.iterations <= 50).all()
        assert res.minimal and res.params["norm"] == norm


def test_top_k_candidates_not_random(mlp_digits, digits_test):
    """Regression (ARCHITECTURE.md, DeepFool): candidates are the top-k logits at x — choosing them at random is much worse."""
    x = digits_test[0][:200]
    with torch.no_grad():
        logits = mlp_digits(x)
    pred = logits.argmax(1)
    res = deepfool(mlp_digits, x, candidates=2)
    explicit = deepfool_batch(mlp_digits, x, classes=top_classes(logits, 2))
    torch.testing.assert_close(res.x_adv, explicit.x_adv)
    assert torch.equal(res.label_adv, logits.topk(2, 1).indices[:, 1])  # the runner-up, and no other
    g = torch.Generator().manual_seed(0)
    others = torch.stack([torch.randperm(10, generator=g) for _ in range(200)])
    others = others[others != pred[:, None]].view(200, 9)[:, :1]
    rnd = deepfool_batch(mlp_digits, x, classes=torch.cat([pred[:, None], others], 1))
    n_top = res.l2[res.success].median()
    n_rnd = (rnd.x_adv - x).flatten(1).norm(dim=1)[rnd.converged].median()
    assert n_rnd > 1.4 * n_top  # measured 0.80 vs 0.49 (1.64×)


def test_overshoot_applied_and_not_aliased(affine, affine_data):
    x = affine_data.clone()
    a = deepfool(affine, x, clip=False, overshoot=0.02)
    b = deepfool(affine, x, clip=False, overshoot=0.5)
    assert torch.equal(x, affine_data)  # inputs untouched
    torch.testing.assert_close(b.l2 / a.l2, torch.full_like(a.l2, 1.5 / 1.02, dtype=torch.float64), rtol=1e-4, atol=0)
    out = deepfool_batch(affine, x, clip=False, overshoot=0.3)
    torch.testing.assert_close(out.x_adv - x, 1.3 * out.r_tot)  # x_adv = x + (1+η) r_tot, r_tot unscaled
    torch.testing.assert_close(out.boundary, x + out.r_tot)
    # the boundary point (no overshoot) is on the linear boundary up to the 1e-4 step constant
    with torch.no_grad():
        zb = affine(out.boundary)
    gap = zb.gather(1, out.orig[:, None]) - zb.gather(1, out.boundary_class[:, None])
    assert gap.abs().max() < 1e-2 and (gap <= 1e-5).all()


def test_already_misclassified_and_predicted_label(mlp_digits, digits_test):
    x, y = digits_test
    pred = predict(mlp_digits, x)
    wrong = pred != y
    assert wrong.sum() >= 5
    res = deepfool(mlp_digits, x, y)
    assert (res.l2[wrong] == 0).all() and res.success[wrong].all() and (res.iterations[wrong] == 0).all()
    assert (res.l2[~wrong] > 0).all()
    res_none = deepfool(mlp_digits, x)  # y=None: attack the prediction, every sample moves
    assert torch.equal(res_none.y, pred)
    assert (res_none.l2 > 0).all()
    assert bool((res_none.success | on_boundary(mlp_digits, res_none.x_adv, pred)).all())  # round-off: above
    torch.testing.assert_close(res_none.x_adv[~wrong], res.x_adv[~wrong])


def test_failed_samples_reported_not_dropped(mlp_digits, digits_test):
    x = digits_test[0][:100]
    res = deepfool(mlp_digits, x, max_iter=1)
    assert res.x_adv.shape == x.shape and res.success.numel() == 100
    assert 0 < res.success_rate < 1
    with torch.inference_mode():
        assert torch.equal(res.success, mlp_digits(res.x_adv).argmax(1) != res.y)
    assert (res.iterations <= 1).all()


def test_round_off_tolerated_real_violation_rejected(affine, affine_data):
    x = affine_data.clone()
    x[0, 0], x[1, 1] = -5e-7, 1 + 5e-7
    res = deepfool(affine, x)
    assert res.x.min() >= 0 and res.x.max() <= 1 and res.success.all()
    x[2, 2] = -1e-3
    with pytest.raises(InputError, match="outside the model's bounds"):
        deepfool(affine, x)


def test_batches_give_the_same_answer(mlp_digits, digits_test):
    x = digits_test[0][:150]
    a = deepfool(mlp_digits, x)
    b = deepfool(mlp_digits, x, batch_size=16)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.iterations, b.iterations)


def test_projection_hook_restricts_to_subspace():
    clf = make_affine(20, 5, seed=4)
    x = 0.4 + 0.2 * torch.rand(30, 20, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(20)
    mask[:8] = 1

    def project(w, idx):
        assert w.shape[0] == idx.shape[0]
        return w * mask

    out = deepfool_batch(clf, x, clip=False, overshoot=0.0, project=project, candidates=5)
    assert out.converged.all() and (out.iterations == 1).all()
    r = out.x_adv - x
    assert r[:, 8:].abs().max() == 0
    w, b = clf.module.w.detach().double(), clf.module.b.detach().double()
    f = x.double() @ w.T + b
    p = f.argmax(1)
    d = (f - f.gather(1, p[:, None])).abs() / ((w[None] - w[p][:, None]) * mask.double()).norm(dim=2)
    d[torch.arange(30), p] = float("inf")
    torch.testing.assert_close(r.double().norm(dim=1), d.min(1).values + STEP_EPS, rtol=1e-4, atol=1e-6)


def test_validation_errors(affine, affine_data):
    with pytest.raises(OptionError, match="norm"):
        deepfool(affine, affine_data, norm=1)
    with pytest.raises(OptionError, match="overshoot"):
        deepfool(affine, affine_data, overshoot=-0.1)
    with pytest.raises(OptionError, match="max_iter"):
        deepfool(affine, affine_data, max_iter=0)
    with pytest.raises(OptionError, match="candidates"):
        deepfool(affine, affine_data, candidates=1)
    with pytest.raises(OptionError, match="clip"):
        deepfool(affine, affine_data, clip="yes")
    with pytest.raises(InputError):
        deepfool(affine, affine_data, torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError):
        deepfool(affine, affine_data.double().numpy())
    affine.train()
    with pytest.raises(ModelError, match="training mode"):
        deepfool(affine, affine_data)
    affine.eval()


def test_candidates_larger_than_classes(affine, affine_data):
    res = deepfool(affine, affine_data, candidates=50, clip=False)
    assert res.params["candidates"] == 5 and res.success.all()


# ---------------------------------------------------------------------------------------------- peers
def _peer_setup(clf, x):
    pred = predict(clf, x)
    return pred, lambda xa: (predict(clf, xa) != pred)


def _median_norm(xa, x, s, norm):
    r = (xa - x).flatten(1).double()
    n = r.norm(dim=1) if norm == "2" else r.abs().amax(1)
    return float(n[s].median())


@pytest.mark.peers
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_foolbox_cross_check_digits(mlp_digits, digits_test, norm):
    fb = pytest.importorskip("foolbox")
    x = digits_test[0][:300]
    pred, fooled = _peer_setup(mlp_digits, x)
    ours = deepfool(mlp_digits, x, norm=norm)
    cls = fb.attacks.L2DeepFoolAttack if norm == "2" else fb.attacks.LinfDeepFoolAttack
    attack = cls(steps=50, candidates=10, overshoot=0.02, loss="logits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, xa, _ = attack(fb.PyTorchModel(mlp_digits, bounds=(0, 1)), x, fb.criteria.Misclassification(pred),
                          epsilons=None)
    s_fb = fooled(xa)
    # Foolbox returns the same points as ours (measured: median ratio 1.000000), and on this model 14 of 300
    # (L2) / 3 (L∞) of them are past the boundary by less than round-off (both implementations stop at the
    # first iterate the model calls fooled, and clipping into [0, 1] eats the overshoot): those may count as
    # fooled or not on another CPU, so they are left out of the comparison of success counts
    u_ours, u_fb = on_boundary(mlp_digits, ours.x_adv, pred), on_boundary(mlp_digits, xa, pred)
    assert int(u_ours.sum()) <= 30  # ≤ 10%: the comparison still counts most samples
    assert int((ours.success | u_ours).sum()) >= int((s_fb & ~u_fb).sum())
    m_ours = float(ours.norms(norm)[ours.success].median())
    m_fb = _median_norm(xa, x, s_fb, norm)
    assert abs(m_ours / m_fb - 1) < 0.01, (m_ours, m_fb)


@pytest.mark.peers
def test_torchattacks_deepfool_recorded(mlp_digits, digits_test):
    """torchattacks 3.5.1 DeepFool returns points *on* the decision boundary, so which of them count as
    adversarial is decided by round-off; ours are past it.

    It omits the reference's +1e-4 and applies the overshoot to each step from the clipped iterate rather than to
    ``r_tot``, so its iterates converge onto the boundary instead of crossing it. On the first 30 test digits
    every output's top-two margin is at most 2.4e-7 × max|logit| (about two float32 ulps), under
    ATEN_CPU_CAPABILITY default / avx2 / avx512, 1 and 2 threads, and inputs perturbed by 1e-6 (7 runs). Its
    success rate, re-running the model on its outputs, moved between 0.40 and 0.67 across those runs and the
    median L2 of its "successes" between 0.375 and 0.432 (ours 0.4526): the former assertion on that median
    failed on a fresh machine. What holds whatever the rounding is checked instead, per sample:
    - every output of the peer is on the boundary up to round-off (``conftest.ROUNDOFF``);
    - every one of ours is verified adversarial or (measured: 2 of 30) on the boundary up to round-off, and at
      least 26 of 30 are past it by more than round-off (measured 28 in every run) — the peer: none;
    - the peer's points are ours up to the overshoot: ‖x_ta − x‖/‖x_ours − x‖ within [1/1.02, 1.02] for every
      sample (measured 0.9994–1.0000), with the median ≤ 1 since it stops on the boundary where ours goes
      beyond it (measured 0.99984).
    """
    ta = pytest.importorskip("torchattacks")
    x = digits_test[0][:30]
    pred, _ = _peer_setup(mlp_digits, x)
    xa = ta.DeepFool(mlp_digits, steps=50, overshoot=0.02)(x, pred)
    ours = deepfool(mlp_digits, x)
    assert bool(on_boundary(mlp_digits, xa, pred).all()), relative_margin(mlp_digits, xa, pred)
    m_ours = relative_margin(mlp_digits, ours.x_adv, pred)
    assert bool((ours.success | (m_ours.abs() <= ROUNDOFF)).all())
    assert int((m_ours < -ROUNDOFF).sum()) >= 26, m_ours
    ratio = (xa - x).flatten(1).double().norm(dim=1) / ours.l2
    assert float(ratio.min()) >= 1 / 1.02 and float(ratio.max()) <= 1.02, ratio
    assert float(ratio.median()) <= 1.0, ratio


@pytest.mark.peers
def test_art_deepfool_recorded(mlp_digits, digits_test):
    """ART 1.20 DeepFool (nb_grads=10, epsilon=0.02) on the same inputs: all adversarial, norms ~2% larger.

    Measured on the first 200 test digits: success 1.0, median L2 0.4737 vs ours 0.4645 (+2.0%); per sample
    ART's norm is ≥ 0.99985 × ours. ART's outputs are past the boundary by ≥ 5.8e-4 × max|logit| (none within
    round-off); 9 of ours are past it by less than round-off (clipping eats the overshoot), so those may count
    either way on another CPU.
    """
    pytest.importorskip("art")
    from art.attacks.evasion import DeepFool
    from art.estimators.classification import PyTorchClassifier

    x = digits_test[0][:200]
    pred, fooled = _peer_setup(mlp_digits, x)
    est = PyTorchClassifier(mlp_digits, loss=torch.nn.CrossEntropyLoss(), input_shape=(64,), nb_classes=10,
                            clip_values=(0.0, 1.0))
    xa = torch.from_numpy(DeepFool(est, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=200,
                                   verbose=False).generate(x.numpy()))
    s = fooled(xa)
    ours = deepfool(mlp_digits, x)
    assert float(s.double().mean()) == 1.0 and not bool(on_boundary(mlp_digits, xa, pred).any())
    u_ours = on_boundary(mlp_digits, ours.x_adv, pred)
    assert bool((ours.success | u_ours).all()) and int(u_ours.sum()) <= 20
    ratio = _median_norm(xa, x, s, "2") / float(ours.l2.median())
    assert 1.0 <= ratio < 1.05, ratio
    # per sample: ART's overshoot is applied on top of the same linearisation, so never much below ours
    per = (xa - x).flatten(1).double().norm(dim=1) / ours.l2
    assert float(per.min()) >= 0.999, per.min()


@pytest.mark.slow
@pytest.mark.peers
@needs_fmnist
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_foolbox_cross_check_lenet_fmnist(norm):
    fb = pytest.importorskip("foolbox")
    from georobust import data, pretrained

    try:
        clf = pretrained("lenet-fmnist")
    except OptionError:
        pytest.skip("lenet-fmnist is not in the weights MANIFEST")
    x, _ = data.load("fashion-mnist", "test", limit=300)
    pred, fooled = _peer_setup(clf, x)
    ours = deepfool(clf, x, norm=norm)
    cls = fb.attacks.L2DeepFoolAttack if norm == "2" else fb.attacks.LinfDeepFoolAttack
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, xa, _ = cls(steps=50, candidates=10, overshoot=0.02, loss="logits")(
            fb.PyTorchModel(clf, bounds=(0, 1)), x, fb.criteria.Misclassification(pred), epsilons=None)
    s_fb = fooled(xa)
    u_ours, u_fb = on_boundary(clf, ours.x_adv, pred), on_boundary(clf, xa, pred)  # see the digits version
    assert int(u_ours.sum()) <= 30
    assert int((ours.success | u_ours).sum()) >= int((s_fb & ~u_fb).sum())
    assert abs(float(ours.norms(norm)[ours.success].median()) / _median_norm(xa, x, s_fb, norm) - 1) < 0.01
