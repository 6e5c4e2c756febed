"""FAB and FAB-T (Croce & Hein, ICML 2020): the analytic minimal norm on affine classifiers (L∞ and L2), the
box-constrained projection against linear programming and a brute force over active sets, the budgeted
(bounded-lp) mode with per-sample early stop, and torchattacks' FAB as a peer on LeNet / Fashion-MNIST."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import make_affine, needs_fmnist

from georobust import registry
from georobust.attacks.fab import fab, fab_t, project_hyperplane_box
from georobust.errors import OptionError

K, D = 5, 20


def affine_min_distance(clf, x, norm: str):
    """Closed form for ``f = W x + b`` away from the box: ``min_{k≠y} |f_y − f_k| / ‖w_y − w_k‖_q``, q dual."""
    w, b = clf.module.w.detach().double(), clf.module.b.detach().double()
    f = x.flatten(1).double() @ w.T + b
    p = f.argmax(1)
    q = 2 if norm == "2" else 1
    d = (f - f.gather(1, p[:, None])).abs() / (w[None] - w[p][:, None]).norm(p=q, dim=2)
    d[torch.arange(len(x)), p] = float("inf")
    return d.min(1).values


@pytest.fixture(scope="module")
def problem():
    clf = make_affine(D, K, seed=0)
    x = 0.3 + 0.4 * torch.rand(64, D, generator=torch.Generator().manual_seed(1))
    return clf, x


def test_registered():
    for name, fn in (("fab-t", fab_t), ("fab", fab)):
        e = registry.attacks.get(name)
        assert e.fn is fn and e.threat == "minimal-lp" and e.norms == ("inf", "2") and e.chunking == "remaining"


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("variant", ["fab", "fab-t"])
def test_affine_analytic_minimal_norm(problem, norm, variant):
    clf, x = problem
    dmin = affine_min_distance(clf, x, norm)
    # "well inside the box": x in [0.3, 0.7] and every minimal perturbation is < 0.3 (L2 bounds L∞), so the
    # box does not bind and the closed form is the answer
    assert float(x.min()) >= 0.3 and float(x.max()) <= 0.7 and float(dmin.max()) < 0.3
    res = fab(clf, x, norm=norm) if variant == "fab" else fab_t(clf, x, norm=norm, n_target_classes=K - 1)
    assert res.success.all()  # verified by re-running the model
    size = res.norms(norm)
    ratio = size / dmin
    assert float(ratio.min()) >= 1 - 1e-5, ratio.min()  # no adversarial point is closer than the boundary
    assert float(ratio.max()) <= 1.01, ratio.max()
    assert res.threat == "minimal-lp" and res.params["norm"] == norm


def test_fab_t_fewer_targets_never_better(problem):
    """Fewer targets search a subset of the boundaries: per sample never a smaller perturbation."""
    clf, x = problem
    all_t = fab_t(clf, x, norm="2", n_target_classes=K - 1)
    one = fab_t(clf, x, norm="2", n_target_classes=1)
    assert (one.l2 >= all_t.l2 - 1e-6).all()
    assert (one.l2 > all_t.l2 * 1.02).any()  # and some sample's closest boundary is not its top target's


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_budget_is_bounded_lp_with_early_stop(problem, norm):
    clf, x = problem
    dmin = affine_min_distance(clf, x, norm)
    eps = float(dmin.median())
    minimal = fab_t(clf, x, norm=norm, n_target_classes=K - 1)
    res = fab_t(clf, x, norm=norm, eps=eps, n_target_classes=K - 1)
    assert res.threat == "bounded-lp" and res.params["eps"] == eps
    size = res.norms(norm)
    assert (size[res.success] <= eps * (1 + 1e-6)).all()
    assert not res.success[dmin > eps * (1 + 1e-6)].any()  # impossible: the boundary is farther than eps
    assert res.success[dmin < eps / 1.02].all()  # FAB gets within 1% of the boundary
    assert (size[~res.success] == 0).all()  # robust samples are returned unperturbed
    # a broken sample stops at once; a robust one (and every sample of the minimal search) runs every step of
    # every target
    assert float(res.iterations[res.success].double().median()) <= 2
    assert (res.iterations[~res.success] == 100 * (K - 1)).all() and (minimal.iterations == 100 * (K - 1)).all()
    assert res.robust_accuracy([eps], norm)[0] == pytest.approx(float((~res.success).double().mean()), abs=1e-12)


def test_restarts_seeded_and_never_worse(problem):
    clf, x = problem
    one = fab_t(clf, x[:16], norm="inf", n_target_classes=2, steps=20)
    two = fab_t(clf, x[:16], norm="inf", n_target_classes=2, steps=20, restarts=2, seed=3)
    again = fab_t(clf, x[:16], norm="inf", n_target_classes=2, steps=20, restarts=2, seed=3)
    assert torch.equal(two.x_adv, again.x_adv)
    assert (two.linf <= one.linf + 1e-7).all()
    assert (two.iterations == 2 * one.iterations).all()


def test_misclassified_reported_with_zero_perturbation(problem):
    clf, x = problem
    with torch.no_grad():
        pred = clf(x).argmax(1)
    y = pred.clone()
    y[:5] = (pred[:5] + 1) % K
    res = fab(clf, x, y, norm="2", steps=10)
    assert res.success[:5].all() and (res.l2[:5] == 0).all()
    assert (res.iterations[:5] == 0).all() and (res.iterations[5:] == 10).all()


# ---- the box-constrained projection ------------------------------------------------------------------------


def _random_problems(seed: int, n: int = 60):
    g = np.random.default_rng(seed)
    for i in range(n):
        d = int(g.integers(2, 9))
        t = g.uniform(0, 1, d)
        w = g.normal(size=d)
        if i % 4 == 1:
            w[g.integers(0, d)] = 0.0  # a coordinate the hyperplane does not see
        # right-hand side up to 1.3× the largest reachable value: some problems are infeasible
        reach = np.where(w > 0, 1 - t, t) @ np.abs(w)
        m = g.uniform(-1.3, 1.3)
        if abs(abs(m) - 1) < 0.01:  # not at the edge of feasibility, where the LP's own tolerance decides
            m *= 0.9
        c = float(m * reach) if i % 10 else 0.0
        yield t, w, c


def _linf_lp(t, w, c):
    from scipy.optimize import linprog

    d = len(t)
    # variables (δ, s): min s  s.t.  ±δ_i − s <= 0,  w·δ = c,  −t <= δ <= 1 − t
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    res = linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None],
                  b_eq=[c], bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)], method="highs")
    return res.x[-1] if res.status == 0 else None


def _l2_brute(t, w, c):
    """Every active set: coordinates free (δ_F = λ w_F), at the lower or at the upper face; the feasible
    candidate of least norm is the optimum (the optimum is the equality-constrained minimum of its own set)."""
    lo, hi = -t, 1 - t
    best = None
    for state in itertools.product(range(3), repeat=len(t)):
        s = np.array(state)
        delta = np.where(s == 1, lo, np.where(s == 2, hi, 0.0))
        free = s == 0
        rem = c - w[~free] @ delta[~free]
        wf2 = float(w[free] @ w[free])
        if wf2 == 0:
            if abs(rem) > 1e-12:
                continue
        else:
            delta[free] = rem / wf2 * w[free]
        if (delta < lo - 1e-12).any() or (delta > hi + 1e-12).any():
            continue
        n = float(np.linalg.norm(delta))
        if best is None or n < best[0]:
            best = (n, delta)
    return best


def _ours(t, w, c, norm):
    f64 = torch.float64
    return project_hyperplane_box(torch.tensor(t, dtype=f64)[None], torch.tensor(w, dtype=f64)[None],
                                  torch.tensor([c], dtype=f64), 0.0, 1.0, norm)[0].numpy()


def _corner(t, w, c):
    s = np.sign(c) * w
    return np.where(s > 0, 1 - t, np.where(s < 0, -t, 0.0))


def test_projection_linf_against_linear_programming():
    n_feasible = 0
    for t, w, c in _random_problems(0):
        delta = _ours(t, w, c, "inf")
        assert (t + delta >= -1e-12).all() and (t + delta <= 1 + 1e-12).all()
        opt = _linf_lp(t, w, c)
        if opt is None:  # infeasible: the box point closest to the hyperplane, nearest to t
            np.testing.assert_allclose(delta, _corner(t, w, c), atol=1e-12)
            continue
        n_feasible += 1
        assert abs(w @ delta - c) < 1e-9
        assert abs(np.abs(delta).max() - opt) < 1e-5, (np.abs(delta).max(), opt)
    assert 30 <= n_feasible < 60  # both kinds were exercised


def test_projection_l2_against_brute_force():
    n_feasible = 0
    for t, w, c in _random_problems(1):
        delta = _ours(t, w, c, "2")
        best = _l2_brute(t, w, c)
        if best is None:
            np.testing.assert_allclose(delta, _corner(t, w, c), atol=1e-12)
            continue
        n_feasible += 1
        assert abs(w @ delta - c) < 1e-9
        np.testing.assert_allclose(delta, best[1], atol=1e-5)  # the L2 optimum is unique
    assert 30 <= n_feasible < 60


def test_projection_batched_equals_rowwise():
    g = torch.Generator().manual_seed(0)
    t, w = torch.rand(32, 50, generator=g, dtype=torch.float64), torch.randn(32, 50, generator=g, dtype=torch.float64)
    c = torch.randn(32, generator=g, dtype=torch.float64) * 3
    for norm in ("inf", "2"):
        batch = project_hyperplane_box(t, w, c, 0.0, 1.0, norm)
        rows = torch.cat([project_hyperplane_box(t[i:i + 1], w[i:i + 1], c[i:i + 1], 0.0, 1.0, norm)
                          for i in range(32)])
        torch.testing.assert_close(batch, rows, rtol=0, atol=1e-12)


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "1"}, "norm"),
    ({"steps": 0}, "steps"),
    ({"restarts": 0}, "restarts"),
    ({"n_target_classes": K}, "n_target_classes must be at most K − 1 = 4"),
    ({"n_target_classes": 0}, "n_target_classes"),
    ({"alpha_max": 1.5}, "alpha_max"),
    ({"beta": 1.0}, "beta"),
    ({"eps": -0.1}, "eps"),
    ({"seed": "x"}, "seed"),
])
def test_bad_input(problem, kwargs, match):
    clf, x = problem
    with pytest.raises(OptionError, match=match):
        fab_t(clf, x, **{"n_target_classes": K - 1, **kwargs})


def test_bad_projection_norm():
    with pytest.raises(OptionError, match="inf or 2"):
        project_hyperplane_box(torch.rand(1, 3), torch.rand(1, 3), torch.ones(1), 0.0, 1.0, "1")


# ---- peer ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.peers
@needs_fmnist
def test_torchattacks_fab_peer_lenet_fmnist():
    """Ours (L∞, 100 steps, the 2 top targets) against torchattacks' multi-targeted FAB (100 steps, 9 targets,
    a sample kept at its first successful target): median norm within 10% of theirs, or smaller. Two targets
    keep the test short; ours keeps the smaller of the two per sample."""
    ta = pytest.importorskip("torchattacks")
    from georobust import data, pretrained

    try:
        clf = pretrained("lenet-fmnist")
    except OptionError:
        pytest.skip("lenet-fmnist is not in the weights MANIFEST")
    x, y = data.load("fashion-mnist", "test", limit=100)
    ours = fab_t(clf, x, y, norm="inf", n_target_classes=2)
    with torch.no_grad():
        pred = clf(x).argmax(1)
    xa = ta.FAB(clf, norm="Linf", eps=10.0, steps=100, n_restarts=1, multi_targeted=True, n_classes=10,
                seed=0)(x, y)
    with torch.no_grad():
        theirs_ok = (clf(xa).argmax(1) != y) & (pred == y)
    attacked = pred == y
    ours_ok = ours.success & attacked
    assert int(ours_ok.sum()) >= int(theirs_ok.sum()) - 2
    m_ours = float(ours.linf[ours_ok].median())
    m_theirs = float((xa - x).flatten(1).abs().amax(1)[theirs_ok].median())
    assert m_ours <= 1.10 * m_theirs, (m_ours, m_theirs)
