"""Universal perturbations: projections, Algorithm 1's exactness, an affine classifier with a known answer,
fooling against predictions, checkpoint/resume after a kill, transfer, and the flat/curved/UAP geometry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import make_affine, needs_fmnist, on_boundary

from georobust.attacks.deepfool import deepfool_batch
from georobust.attacks.universal import (
    project_ball,
    random_like,
    transfer_matrix,
    universal_perturbation,
)
from georobust.errors import InputError, OptionError
from georobust.evaluation.metrics import fooling_rate, perturbed_labels
from georobust.results import UniversalResult


# ------------------------------------------------------------------------------------------- projection
@pytest.mark.parametrize("seed", range(5))
def test_projection_l2_exact(seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3, 8, 8, generator=g)
    xi = 0.5 * float(v.norm())
    p = project_ball(v, xi, "2")
    assert float(p.norm()) == pytest.approx(xi, rel=1e-6)
    cos = float((p * v).sum() / (p.norm() * v.norm()))
    assert cos == pytest.approx(1.0, abs=1e-6)  # direction kept: the Euclidean projection onto the ball
    inside = v * 0.3 * xi / float(v.norm())
    assert torch.equal(project_ball(inside, xi, "2"), inside)
    # no point of the ball is closer to v than p
    q = torch.randn(200, *v.shape, generator=g)
    q = q / q.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * xi * torch.rand(200, 1, 1, 1, generator=g)
    assert float((q - v).flatten(1).norm(dim=1).min()) >= float((p - v).norm()) - 1e-5


@pytest.mark.parametrize("seed", range(5))
def test_projection_linf_exact(seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(64, generator=g)
    p = project_ball(v, 0.4, "inf")
    assert float(p.abs().max()) == pytest.approx(0.4)
    expect = torch.where(v.abs() <= 0.4, v, 0.4 * v.sign())
    assert torch.equal(p, expect)
    assert torch.equal(project_ball(p, 0.4, "inf"), p)  # idempotent


def test_result_stays_in_ball(mlp_digits, digits_test):
    x = digits_test[0][:80]
    for norm, xi in (("2", 0.8), ("inf", 0.1)):
        r = universal_perturbation(mlp_digits, x, xi=xi, norm=norm, max_passes=2, mode="batched", chunk=16)
        assert r.v_norm <= xi * (1 + 1e-6)
        assert r.passes >= 1 and 0.0 <= r.fooling_rate_train <= 1.0


# ---------------------------------------------------------------------------------------- affine, exact
def _affine_binary_data(d=20, n=60, seed=0):
    clf = make_affine(d, 2, seed=seed)
    w = clf.module.w.detach()
    b = clf.module.b.detach()
    wn = w[1] - w[0]
    bn = b[1] - b[0]
    nhat = wn / wn.norm()
    g = torch.Generator().manual_seed(seed + 1)
    # points on class 0's side at signed distances t from the boundary {wn·x + bn = 0}, plus tangent noise
    c = torch.full((d,), 0.5)
    c = c - (wn @ c + bn) / wn.norm() * nhat  # a point on the boundary
    t = 0.02 + 0.3 * torch.rand(n, generator=g)
    noise = 0.05 * torch.randn(n, d, generator=g)
    noise = noise - (noise @ nhat)[:, None] * nhat
    x = c - t[:, None] * nhat + noise
    assert bool(((x > 0) & (x < 1)).all())
    return clf, x, nhat, t


def test_affine_binary_uap_is_the_normal():
    clf, x, nhat, t = _affine_binary_data()
    assert bool((clf(x).argmax(1) == 0).all())
    xi = 0.17
    r = universal_perturbation(clf, x, xi=xi, norm="2", delta=0.0, max_passes=3, clip=False, seed=3)
    v = r.v
    cos = float(v @ nhat / v.norm())
    assert cos == pytest.approx(1.0, abs=1e-5)  # the UAP is (up to scale) the normal
    assert float(v.norm()) == pytest.approx(xi, rel=1e-5)
    pred, adv = perturbed_labels(clf, x, v, clip=False)
    fooled = adv != pred
    # every point closer to the boundary than ξ is fooled, no point beyond it
    assert torch.equal(fooled, t < xi)
    assert r.fooling_rate_train == pytest.approx(float((t < xi).double().mean()))


# ------------------------------------------------------------------------------------ exact semantics
def _reference_algorithm1(clf, x, xi, norm, seed, passes):
    """A one-sample-at-a-time loop: Algorithm 1 written as plainly as possible."""
    from georobust.attacks.universal import _permutation

    v = torch.zeros_like(x[0])
    pred = clf(x).argmax(1)
    for p in range(passes):
        for i in _permutation(x.shape[0], seed, p).tolist():
            xa = (x[i : i + 1] + v).clamp(0, 1)
            if int(clf(xa).argmax(1)) != int(pred[i]):
                continue
            out = deepfool_batch(clf, xa, norm="2", overshoot=0.02, max_iter=10, candidates=10, clip=True)
            if bool(out.converged[0]):
                v = project_ball(v + out.x_adv[0] - xa[0], xi, norm)
    return v


@pytest.mark.parametrize("norm,xi", [("2", 1.0), ("inf", 0.15)])
def test_sequential_mode_is_algorithm1(mlp_digits, digits_test, norm, xi):
    x = digits_test[0][:60]
    with torch.no_grad():
        ref = _reference_algorithm1(mlp_digits, x, xi, norm, seed=5, passes=2)
    r = universal_perturbation(mlp_digits, x, xi=xi, norm=norm, delta=0.0, max_passes=2, seed=5, chunk=16)
    assert torch.allclose(r.v, ref, atol=1e-6)
    # the batched variant with one-sample chunks is Algorithm 1 again
    rb = universal_perturbation(mlp_digits, x, xi=xi, norm=norm, delta=0.0, max_passes=2, seed=5, chunk=1,
                                mode="batched")
    assert torch.allclose(rb.v, ref, atol=1e-6)


# ----------------------------------------------------------------------------- predictions, not labels
def test_fooling_is_against_predictions(mlp_digits, digits_test):
    x, y = digits_test
    pred = mlp_digits(x).argmax(1)
    assert int((pred != y).sum()) > 0  # the model makes mistakes: a label-based rate could not be 0
    r = universal_perturbation(mlp_digits, x[:100], xi=1e-7, norm="inf", x_eval=x, max_passes=1)
    assert r.fooling_eval[-1] == 0.0 and r.fooling_rate_train == 0.0
    wrong = (y + 1) % 10  # labels are ignored
    r2 = universal_perturbation(mlp_digits, x[:100], wrong[:100], xi=1e-7, norm="inf", x_eval=x, max_passes=1)
    assert r2.fooling_eval == r.fooling_eval
    # the held-out rate is exactly the share of changed predictions
    v = torch.full_like(x[0], 0.3)
    p0, p1 = perturbed_labels(mlp_digits, x, v)
    rate = fooling_rate(mlp_digits, x, v)
    assert torch.equal(p0, pred)
    assert rate == pytest.approx(float((mlp_digits((x + v).clamp(0, 1)).argmax(1) != pred).double().mean()))


# ----------------------------------------------------------------------------------- save, checkpoint
def test_save_load_roundtrip(tmp_path, mlp_digits, digits_test):
    x = digits_test[0][:60]
    r = universal_perturbation(mlp_digits, x, xi=0.2, norm="inf", x_eval=digits_test[0][60:120], max_passes=2,
                               mode="batched", chunk=20)
    r.save(tmp_path / "uap")
    q = UniversalResult.load(tmp_path / "uap")
    assert torch.equal(q.v, r.v) and torch.equal(q.transitions, r.transitions)
    assert q.fooling_train == r.fooling_train and q.fooling_eval == r.fooling_eval
    assert q.summary()["dominant_label"] == r.summary()["dominant_label"]
    assert int(r.dominant_labels.sum()) == int(round(r.fooling_eval[-1] * 60))
    assert q.best_pass == r.best_pass and torch.equal(q.v_best, r.v_best)


def test_best_pass_is_chosen_on_the_training_set(mlp_digits, digits_test):
    """``v_best`` is the v after the pass with the highest fooling rate on X; its rates are the recorded ones."""
    x, xe = digits_test[0][:200], digits_test[0][200:400]
    r = universal_perturbation(mlp_digits, x, xi=0.15, norm="inf", delta=0.0, x_eval=xe, max_passes=4,
                               mode="batched", chunk=16, seed=3)
    assert r.passes == 4
    b = max(range(4), key=lambda p: (r.fooling_train[p], -p))
    assert r.best_pass == b and r.summary()["best_pass"] == b + 1
    assert fooling_rate(mlp_digits, x, r.v_best) == pytest.approx(r.fooling_train[b])
    assert fooling_rate(mlp_digits, xe, r.v_best) == pytest.approx(r.fooling_eval[b])
    assert r.summary()["fooling_train_best"] == max(r.fooling_train)
    if b == 3:
        assert torch.equal(r.v_best, r.v)


_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[2]))  # the parent's: float sums differ between thread counts
    from georobust import data, pretrained
    from georobust.attacks.universal import universal_perturbation
    x, _ = data.load("digits", "train", limit=400)
    universal_perturbation(pretrained("mlp-digits"), x, xi=0.25, norm="inf", delta=0.0, max_passes=4, seed=7,
                           checkpoint=sys.argv[1], resume=True, mode="batched", chunk=8)
""")


def test_resume_after_kill_gives_the_same_v(tmp_path, mlp_digits):
    from georobust import data

    ck = tmp_path / "ckpt"
    threads = torch.get_num_threads()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(ck), str(threads)],
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    t0 = time.time()
    while not (tmp_path / "ckpt.json").exists():
        assert proc.poll() is None, "the child exited before its first checkpoint"
        assert time.time() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    part = UniversalResult.load(ck)
    assert 1 <= part.passes < 4  # killed mid-run
    x, _ = data.load("digits", "train", limit=400)
    kw = dict(xi=0.25, norm="inf", delta=0.0, max_passes=4, seed=7, mode="batched", chunk=8)
    resumed = universal_perturbation(mlp_digits, x, checkpoint=ck, resume=True, **kw)
    full = universal_perturbation(mlp_digits, x, **kw)
    assert resumed.passes == full.passes == 4
    assert torch.equal(resumed.v, full.v)
    assert resumed.fooling_train == full.fooling_train
    assert resumed.best_pass == full.best_pass and torch.equal(resumed.v_best, full.v_best)


def test_resume_refuses_other_settings(tmp_path, mlp_digits, digits_test):
    x = digits_test[0][:40]
    universal_perturbation(mlp_digits, x, xi=0.2, max_passes=1, checkpoint=tmp_path / "c", mode="batched")
    with pytest.raises(OptionError, match="other parameters"):
        universal_perturbation(mlp_digits, x, xi=0.3, max_passes=2, checkpoint=tmp_path / "c", resume=True,
                               mode="batched")


def test_bad_inputs(mlp_digits, digits_test):
    x = digits_test[0][:10]
    for kw in ({"xi": -1.0}, {"norm": "1"}, {"mode": "parallel"}, {"delta": 1.5}, {"resume": True},
               {"max_passes": 0}, {"candidates": 1}):
        with pytest.raises(OptionError):
            universal_perturbation(mlp_digits, x, **kw)
    with pytest.raises(InputError):
        universal_perturbation(mlp_digits, x, x_eval=torch.rand(5, 3))
    with pytest.raises(InputError):
        universal_perturbation(mlp_digits, x + 2.0)


# ------------------------------------------------------------------------------------------- transfer
def test_transfer_matrix(mlp_digits, digits_test):
    from georobust import Classifier
    from georobust.models import build

    x = digits_test[0][:120]
    other = Classifier(build("linear", (64,), 10, seed=0)).eval()
    r = universal_perturbation(mlp_digits, x, xi=0.3, norm="inf", max_passes=1, mode="batched", chunk=30)
    tm = transfer_matrix({"mlp": mlp_digits, "linear": other}, {"mlp": r}, x)
    assert tm.fooling.shape == (1, 2) and tm.random.shape == (1, 2)
    assert float(tm.fooling[0, 0]) == pytest.approx(fooling_rate(mlp_digits, x, r.v))
    # the random baseline, recomputed independently: seeded draws of ±‖v‖∞ signs in the order (source, target),
    # one per sample, and the model re-run on clamp(x + r); samples on the boundary up to round-off may go
    # either way on another CPU, so they are the tolerance (measured: 0.1833 / 0.1667, none on the boundary)
    g = torch.Generator().manual_seed(0)
    size = float(r.v.abs().max())
    for j, m in enumerate((mlp_digits, other)):
        noise = torch.randn((x.shape[0], *r.v.shape), generator=g).sign() * size
        xr = (x + noise).clamp(0, 1)
        with torch.no_grad():
            pred, lab = m(x).argmax(1), m(xr).argmax(1)
        unsure = on_boundary(m, x, pred) | on_boundary(m, xr, pred)
        expect = float((lab != pred).double().mean())
        assert abs(float(tm.random[0, j]) - expect) <= float(unsure.double().mean()) + 1e-6  # float32 table
    # a universal perturbation fools far more than random noise of the same L∞ norm (measured 0.658 vs 0.183)
    assert float(tm.fooling[0, 0]) > float(tm.random[0, 0]) + 0.25, (tm.fooling, tm.random)
    assert len(tm.table()) == 2


def test_random_like_norms():
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(1, 8, 8)
    r2 = random_like(v, "2", 1.5, n=10, generator=g)
    assert torch.allclose(r2.flatten(1).norm(dim=1), torch.full((10,), 1.5))
    ri = random_like(v, "inf", 0.1, generator=g)
    assert torch.allclose(ri.abs(), torch.full_like(ri, 0.1))


# ------------------------------------------------------------------------------------------- geometry
def test_universal_geometry_digits(mlp_digits, digits_test):
    from georobust.geometry.universal_geometry import KINDS, universal_geometry

    x = digits_test[0]
    r = universal_perturbation(mlp_digits, x[:200], xi=2.0, norm="2", max_passes=2, mode="batched", chunk=25)
    gm = universal_geometry(mlp_digits, x[:150], uap=r, x_eval=x[200:], m_flat=5, m_curved=5, lanczos_steps=30)
    assert set(gm.fooling) == set(KINDS)
    assert gm.xi == pytest.approx(float(r.v.norm()))
    # the normals are correlated: the flat subspace fools more than isotropic noise, the UAP most of all
    assert gm.fooling["flat"] > gm.fooling["random"]
    assert gm.fooling["uap"] > gm.fooling["random"]
    # measured (340 held-out digits): random 0.109 < curved 0.432 < flat 0.576 < UAP 0.718; every gap is >= 48
    # samples, and rounding can move a rate only by the samples on the boundary (checked below): random
    # directions of a subspace fool more than isotropic ones, and the UAP, built for these images, most of all
    assert gm.fooling["curved"] > gm.fooling["random"] + 0.15
    assert gm.fooling["uap"] > max(gm.fooling["flat"], gm.fooling["curved"])
    sv = gm.normal_singular_values
    assert float(sv[0]) > 2 * float(sv[len(sv) // 2])
    assert gm.flat_basis.shape == (5, 64) and gm.curved_basis.shape == (5, 64)
    # bases are orthonormal
    for b in (gm.flat_basis, gm.curved_basis):
        assert torch.allclose(b @ b.T, torch.eye(5), atol=1e-3)
    _check_universal_geometry(mlp_digits, x[:150], x[200:], r, gm)


def _check_universal_geometry(model, x, xe, uap, gm):
    """The geometry result recomputed independently of universal_geometry's code paths: the bases from the
    boundary points by plain autograd (normals → SVD; averaged Hessian of a Softplus(10) copy → Rayleigh
    quotients and residuals), and the four fooling rates from seeded draws in the module's order (random,
    flat, curved), with samples on the boundary up to round-off as the only tolerance."""
    from georobust.geometry.curvature import smoothed
    from georobust.geometry.normals import boundary_points

    bp = boundary_points(model, x)
    ok = bp.converged
    pts, k_hat, other = bp.point[ok].detach(), bp.orig[ok], bp.other[ok]
    rows = torch.arange(pts.shape[0])

    def diff_grad(m, p, create_graph=False):
        p = p.clone().requires_grad_(True)
        z = m(p)
        s = (z[rows, other] - z[rows, k_hat]).sum()
        return p, torch.autograd.grad(s, p, create_graph=create_graph)[0].flatten(1)

    # flat: the top-5 right singular vectors of the unit normals span the same subspace
    _, gr = diff_grad(model, pts)
    normals = (gr / gr.norm(dim=1, keepdim=True)).double()
    _, sv, vh = torch.linalg.svd(normals, full_matrices=False)
    torch.testing.assert_close(gm.normal_singular_values.double(), sv, rtol=1e-4, atol=1e-5)
    cosines = torch.linalg.svdvals(gm.flat_basis.double() @ vh[:5].T)  # principal angles between the subspaces
    assert float(cosines.min()) > 1 - 1e-4, cosines
    # curved: eigenvectors of the averaged Hessian of f_l − f_k̂ of the Softplus(10) copy, with its eigenvalues
    sm = smoothed(model, 10.0)
    p, g = diff_grad(sm, pts, create_graph=True)
    u = gm.curved_basis.to(g.dtype)
    hu = torch.stack([torch.autograd.grad((g * ui).sum(), p, retain_graph=True)[0].flatten(1).mean(0) for ui in u])
    lam = (hu * u).sum(1)
    torch.testing.assert_close(lam, gm.hessian_eigenvalues.to(lam.dtype), rtol=1e-3, atol=1e-3 * float(lam.abs().max()))
    assert float((hu - lam[:, None] * u).norm(dim=1).max()) < 1e-2 * float(lam.abs().max())
    # the fooling rates: the same draws, the model re-run on clamp(x + v)
    g = torch.Generator().manual_seed(0)
    n, d = xe.shape[0], xe[0].numel()
    with torch.no_grad():
        pred = model(xe).argmax(1)
    draws = {}
    for kind, basis in (("random", None), ("flat", gm.flat_basis), ("curved", gm.curved_basis)):
        z = torch.randn(n, d if basis is None else basis.shape[0], generator=g, dtype=torch.float64)
        z = z if basis is None else z @ basis.double()
        draws[kind] = (z / z.norm(dim=1, keepdim=True) * gm.xi).to(xe.dtype).view_as(xe)
    draws["uap"] = (uap.v / uap.v.norm() * gm.xi).expand_as(xe)
    for kind, v in draws.items():
        xv = (xe + v).clamp(0, 1)
        with torch.no_grad():
            lab = model(xv).argmax(1)
        unsure = on_boundary(model, xe, pred) | on_boundary(model, xv, pred)
        assert abs(gm.fooling[kind] - float((lab != pred).double().mean())) <= float(unsure.double().mean()) + 1e-12, kind


# ------------------------------------------------------------------------------------- lenet-fmnist
@needs_fmnist
def test_random_noise_fools_far_less_than_uap_lenet():
    from georobust import data, pretrained

    m = pretrained("lenet-fmnist")
    x, _ = data.load("fashion-mnist", "train", limit=200)
    xe, _ = data.load("fashion-mnist", "test", limit=400)
    r = universal_perturbation(m, x, xi=3.0, norm="2", x_eval=xe, max_passes=1, mode="batched", chunk=50)
    tm = transfer_matrix({"lenet": m}, {"lenet": r}, xe)
    uap, rnd = float(tm.fooling[0, 0]), float(tm.random[0, 0])
    assert uap == pytest.approx(r.fooling_eval[-1])
    assert uap >= 2 * rnd and uap - rnd >= 0.08, (uap, rnd)
