"""Adversarial spheres (georobust.geometry.spheres): the data on their spheres, the quadratic network as an exact
quadratic form, the exact distance to a quadric against brute force, the nearest verified error, the
isoperimetric bound against Monte Carlo, and the reproduction's quick mode and re-plot."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_script

from georobust import Classifier, data
from georobust.errors import InputError, OptionError
from georobust.geometry.spheres import (
    QuadraticNet,
    cap_mean_distance,
    cap_median_distance,
    cap_threshold,
    gilmer_bound,
    monte_carlo_error,
    nearest_errors,
    quadratic_error,
    quadric_distance,
    sphere_radii,
)


@pytest.mark.parametrize("dim", [2, 50, 500])
def test_points_lie_on_their_spheres(dim):
    x, y = data.load("spheres", "test", dim=dim, n=400, seed=3)
    r_in, r_out = sphere_radii()
    norms = (x.double() - 0.5).norm(dim=1)
    want = torch.where(y == 0, r_in, r_out).double()
    # float32 coordinates near 0.5 are exact to 3e-8 each: the norm to √d·3e-8 < 1e-5
    assert (norms - want).abs().max() < 1e-5
    assert set(y.tolist()) == {0, 1} and abs(float(y.double().mean()) - 0.5) < 0.01


def test_quadratic_net_is_exactly_a_quadratic_form():
    torch.manual_seed(0)
    net = QuadraticNet(9, 13, threshold=0.4).double()
    with torch.no_grad():
        net.alpha.copy_(torch.randn(13, dtype=torch.float64))  # an indefinite A
    x = torch.rand(32, 9, dtype=torch.float64)
    A, b, c = net.quadratic_form()
    u = x - c
    formula = ((u @ A) * u).sum(1) + b
    assert torch.allclose(net.decision(x), formula, rtol=1e-12, atol=1e-12)
    logits = net(x)
    assert torch.allclose(logits[:, 1] - logits[:, 0], formula, rtol=1e-12, atol=1e-12)
    assert torch.allclose(A, A.T) and b == pytest.approx(-0.16)


def test_quadric_distance_against_brute_force_rays():
    """In 2-D, the exact distance equals the minimum over 50k rays of the ray's first crossing of the quadric
    (solved exactly per ray) up to the angular resolution, and never exceeds it; the nearest point is on it."""
    g = torch.Generator().manual_seed(4)
    th = torch.linspace(0, 2 * math.pi, 50_001, dtype=torch.float64)
    dirs = torch.stack([th.cos(), th.sin()], 1)
    for _ in range(4):
        A = torch.randn(2, 2, generator=g, dtype=torch.float64)
        A = A + A.T
        b = float(torch.randn(1, generator=g, dtype=torch.float64)) * 0.3
        x = 0.5 + 0.5 * torch.randn(6, 2, generator=g, dtype=torch.float64)
        dist, point = quadric_distance(A, b, 0.5, x)
        for i in range(6):
            u = x[i] - 0.5
            qa, qb, qc = ((dirs @ A) * dirs).sum(1), 2 * (dirs @ (A @ u)), u @ A @ u + b
            disc = qb ** 2 - 4 * qa * qc
            ok = disc >= 0
            ts = torch.cat([(-qb[ok] + disc[ok].sqrt()) / (2 * qa[ok]), (-qb[ok] - disc[ok].sqrt()) / (2 * qa[ok])])
            ts = ts[ts > 0]
            if ts.numel() == 0:
                assert math.isinf(float(dist[i]))
                continue
            brute = float(ts.min())
            assert float(dist[i]) <= brute + 1e-12
            assert float(dist[i]) == pytest.approx(brute, rel=1e-6, abs=1e-9)
            p = point[i] - 0.5
            assert abs(float(p @ A @ p + b)) < 1e-9 * (1 + abs(b))


def test_quadric_distance_of_a_sphere_and_of_no_boundary():
    x = torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.6, 0.5]], dtype=torch.float64)
    d, _ = quadric_distance(torch.eye(3), -0.2 ** 2, 0.5, x)  # the sphere of radius 0.2 around 0.5
    assert torch.allclose(d, torch.tensor([0.2, 0.1], dtype=torch.float64), atol=1e-12)
    d, _ = quadric_distance(torch.eye(3), 0.1, 0.5, x)  # A ≻ 0, b > 0: no boundary at all
    assert bool(torch.isinf(d).all())
    with pytest.raises(InputError, match="features"):
        quadric_distance(torch.eye(2), 0.0, 0.5, x)


def test_monte_carlo_error_of_a_known_boundary():
    """The quadratic net with A = I: a sphere between the two classes makes no error; one outside both
    misclassifies every outer point (class 1) and no inner one."""
    r_in, r_out = sphere_radii()
    net = QuadraticNet(30, 30)
    with torch.no_grad():
        net.W.copy_(torch.eye(30))
    clf = Classifier(net).eval()
    with torch.no_grad():
        net.b.fill_(-((r_in + r_out) / 2) ** 2)
    e = monte_carlo_error(clf, 30, n=2000, seed=1)
    assert e["inner"] == 0 and e["outer"] == 0 and e["n"] == 2000
    with torch.no_grad():
        net.b.fill_(-(1.2 * r_out) ** 2)
    e = monte_carlo_error(clf, 30, n=2000, seed=1)
    assert e["inner"] == 0 and e["outer"] == 1.0 and e["total"] == 0.5


def test_quadratic_error_in_the_eigenbasis_matches_the_network():
    """The eigenbasis Monte Carlo of the quadratic network's error equals the network's own Monte Carlo within
    5 standard errors (binomial, both estimates)."""
    clf = _tilted_quadratic(20)
    A, b, _ = clf.module.quadratic_form()
    fast = quadratic_error(A, b, n=200_000, seed=3)
    slow = monte_carlo_error(clf, 20, n=200_000, seed=4)
    for k in ("inner", "outer"):
        p = slow[k]
        se = math.sqrt(p * (1 - p) / 100_000 + p * (1 - p) / 200_000) + 1e-6
        assert abs(fast[k] - p) < 5 * se, (k, fast[k], p)
    assert fast["inner"] > 0.2 and fast["n"] == 200_000


def _tilted_quadratic(dim: int) -> Classifier:
    """A quadratic net with an ellipsoidal boundary that cuts both spheres (errors on each)."""
    r_in, r_out = sphere_radii()
    torch.manual_seed(5)
    net = QuadraticNet(dim, dim)
    with torch.no_grad():
        net.W.copy_(torch.eye(dim))
        net.alpha.copy_(torch.linspace(0.2, 2.5, dim))
        net.b.fill_(-((r_in + r_out) / 2) ** 2)
    return Classifier(net).eval()


def test_nearest_error_is_the_minimum_over_verified_errors():
    """The reported distance is the minimum of the verified candidates (≤ each, ≥ 0, 0 on misclassified inputs);
    each finite candidate is a verified error; the exact distance to the quadric is never larger."""
    dim = 20
    clf = _tilted_quadratic(dim)
    x, y = data.load("spheres", "test", dim=dim, n=40, seed=2)
    ne = nearest_errors(clf, x, y, pgd_steps=10, quadratic=clf.module.quadratic_form())
    assert ne.distances.shape == (40, 2) and ne.methods == ["deepfool", "pgd"]
    fin = torch.isfinite(ne.distances)
    assert bool((ne.minimum >= 0).all())
    assert bool((ne.minimum[:, None] <= ne.distances).all())
    assert bool((ne.minimum[~ne.correct] == 0).all()) and int((~ne.correct).sum()) > 0
    assert bool(fin[ne.correct].any(1).all())  # DeepFool finds an error on every correct point of a quadric
    ok = ne.correct & torch.isfinite(ne.minimum)
    # exact ≤ verified: a verified candidate is past the boundary; float32 evaluation of the model can call a
    # point within ~1e-6 (relative) of the boundary on either side, hence the slack
    assert bool((ne.exact[ok] <= ne.minimum[ok] * (1 + 1e-5) + 1e-6).all())
    # DeepFool overshoots by 2 %: its distance is close to the exact one on this smooth boundary
    assert float((ne.distances[ok, 0] / ne.exact[ok]).median()) == pytest.approx(1.02, abs=0.05)
    s = ne.summary()
    assert s["n"] == 40 and s["found"] == 40 and s["mean_min"] <= s["mean_deepfool"] + 1e-12
    with pytest.raises(OptionError, match="unknown method"):
        nearest_errors(clf, x, y, methods=("cw",))


def test_nearest_error_candidates_are_verified_by_rerunning_the_model(monkeypatch):
    """A candidate the model does not misclassify never counts: with PGD given radii too small to cross the
    boundary, no PGD distance is finite."""
    clf = _tilted_quadratic(20)
    x, y = data.load("spheres", "test", dim=20, n=20, seed=2)
    ne = nearest_errors(clf, x, y, methods=("pgd",), pgd_eps=[1e-6], pgd_steps=3)
    assert not bool(torch.isfinite(ne.distances[ne.correct]).any())
    assert bool((ne.minimum[~ne.correct] == 0).all())


def test_isoperimetric_cap_bounds_against_monte_carlo():
    """Uniform points on the sphere in R^40; the cap {x₁ ≥ r·t} of measure μ: the Monte-Carlo measure, mean and
    median chord distances to the cap match the exact values within 5 standard errors (median: 2 %)."""
    dim, mu, r = 40, 0.05, 0.5
    t = cap_threshold(mu, dim)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(100_000, dim, generator=g, dtype=torch.float64)
    s = (z / z.norm(dim=1, keepdim=True))[:, 0]
    n = s.numel()
    assert abs(float((s >= t).double().mean()) - mu) < 5 * math.sqrt(mu * (1 - mu) / n)
    gap = (s.clamp(-1, 1).acos() - math.acos(t)).clamp_min(0)
    chord = 2 * r * torch.sin(gap / 2)
    assert abs(float(chord.mean()) - cap_mean_distance(mu, dim, r)) < 5 * float(chord.std()) / math.sqrt(n)
    assert float(chord.median()) == pytest.approx(cap_median_distance(mu, dim, r), rel=0.02)
    # Gilmer's asymptotic form r·Φ⁻¹(1−μ)/√d approaches the exact cap threshold as d grows
    assert gilmer_bound(mu, 4000, r) == pytest.approx(r * cap_threshold(mu, 4000), rel=0.01)
    with pytest.raises(OptionError):
        cap_median_distance(0.6, dim)
    with pytest.raises(OptionError):
        cap_threshold(0.0, dim)


@pytest.mark.slow
def test_repro_quick_and_replot(tmp_path):
    mod = load_script("repro/spheres.py")
    out = mod.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--work", str(tmp_path / "w")])
    rows = out["result"]["rows"]
    assert {r["model"] for r in rows} == {"relu-mlp", "quadratic"} and len(rows) == 4
    for r in rows:
        assert 0 <= r["error"] <= 1 and r["found"] <= r["n"]
        if r["exact"] is not None and r["measured"] is not None:
            assert r["exact"] <= r["measured"] * (1 + 1e-5) + 1e-6
    png = tmp_path / "spheres.png"
    saved = (tmp_path / "spheres.json").read_text()
    png.unlink()
    mod.main(["--replot", "--out", str(tmp_path)])
    assert png.exists() and png.stat().st_size > 0
    assert (tmp_path / "spheres.json").read_text() == saved
