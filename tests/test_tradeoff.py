"""Robustness vs risk of linear classifiers (georobust.geometry.tradeoff): the closed forms on two isotropic
Gaussians against quadrature and Monte Carlo, the bound as an exact inequality, DeepFool on an affine model
against the analytic distance, and the reproduction's quick mode and re-plot."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_script, needs_fmnist

from georobust.attacks.deepfool import STEP_EPS, deepfool, deepfool_batch
from georobust.errors import InputError, OptionError
from georobust.geometry.tradeoff import (
    affine_classifier,
    distinguishability,
    evaluate_linear,
    gaussian_frontier,
    gaussian_point,
    linear_bound,
    linear_distances,
    linear_risk_rho,
)


def _quad_abs_mean(m: float, sigma: float) -> float:
    """E|N(m, σ²)| by the trapezoidal rule on ±12σ (error far below 1e-9 with 200k nodes)."""
    t = torch.linspace(m - 12 * sigma, m + 12 * sigma, 200_001, dtype=torch.float64)
    dens = torch.exp(-(t - m) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
    return float(torch.trapezoid(t.abs() * dens, t))


def _quad_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


@pytest.mark.parametrize("mu_norm,sigma", [(1.0, 1.0), (0.3, 2.0), (3.0, 0.5)])
def test_gaussian_frontier_is_the_closed_form(mu_norm, sigma):
    """The bias-free frontier at risk R equals ρ_adv computed independently (quadrature of E|N(a, σ²)| with
    a = σΦ⁻¹(1 − R)), and every bias-free classifier at angle θ to μ lies on it."""
    for theta in (0.0, 0.4, 1.0, 1.4):
        a = mu_norm * math.cos(theta)
        risk = _quad_cdf(-a / sigma)
        rho = _quad_abs_mean(a, sigma)  # both classes give E|N(±a, σ²)| = E|N(a, σ²)|
        r_cf, rho_cf = gaussian_point(a, 0.0, sigma)
        assert float(r_cf) == pytest.approx(risk, abs=1e-12)
        assert float(rho_cf) == pytest.approx(rho, abs=1e-8)
        assert float(gaussian_frontier(risk, mu_norm, sigma)) == pytest.approx(rho, abs=1e-8)


def test_gaussian_point_with_bias_against_quadrature():
    a, b, sigma = 0.7, 0.4, 1.3
    risk, rho = gaussian_point(a, b, sigma)
    assert float(risk) == pytest.approx(0.5 * (_quad_cdf(-(a + b) / sigma) + _quad_cdf((b - a) / sigma)), abs=1e-12)
    assert float(rho) == pytest.approx(0.5 * (_quad_abs_mean(a + b, sigma) + _quad_abs_mean(b - a, sigma)), abs=1e-8)


def test_gaussian_closed_form_against_monte_carlo():
    """Exact per-sample risk and ρ_adv on 200k Gaussian samples agree with the closed form within 5 standard
    errors (risk: √(R(1−R)/n); ρ: std(|f|)/√n ≤ √(a² + σ²)/√n)."""
    g = torch.Generator().manual_seed(0)
    n, d, sigma = 200_000, 10, 1.0
    y = torch.arange(n) % 2
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = 1.0
    x = (2.0 * y[:, None] - 1) * mu + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.zeros(d, dtype=torch.float64)
    w[0], w[3] = 0.6, 0.8  # a = 0.6
    for b in (0.0, 0.3):
        r_mc, rho_mc = linear_risk_rho(w, b, x, y)
        r_cf, rho_cf = gaussian_point(0.6, b, sigma)
        assert abs(r_mc - float(r_cf)) < 5 * math.sqrt(0.25 / n)
        assert abs(rho_mc - float(rho_cf)) < 5 * math.sqrt(0.6 ** 2 + 0.3 ** 2 + sigma ** 2) / math.sqrt(n)


def test_frontier_refuses_risks_below_bayes():
    with pytest.raises(OptionError, match="Bayes"):
        gaussian_frontier(0.01, 1.0, 1.0)  # Bayes risk Φ(−1) = 0.159
    with pytest.raises(OptionError, match="sigma"):
        gaussian_point(0.5, 0.0, 0.0)


def test_bound_holds_exactly_on_any_sample():
    """ρ_adv ≤ δ + |β||p₊ − p₋| + 2(M + |β|)R for random affine classifiers (with bias) on random bounded,
    unbalanced data: a theorem about every distribution, so it holds on the empirical one (float64)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        n, d = 300, 7
        y = (torch.rand(n, generator=g) < 0.3).long()
        x = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.3 * y[:, None]
        delta, radius, gap, c = distinguishability(x, y)
        w = torch.randn(d, generator=g, dtype=torch.float64)
        b = float(torch.randn(1, generator=g, dtype=torch.float64)) * 2
        p = evaluate_linear("r", w, b, x, y, delta=delta, radius=radius, prior_gap=gap, centre=c)
        assert p.rho <= p.bound + 1e-12
        assert p.bound == pytest.approx(float(linear_bound(p.risk, delta, radius, beta=p.beta, prior_gap=gap)))
    # the bias-free case through the centre is the bound δ + 2MR
    assert linear_bound(0.1, 1.0, 3.0) == pytest.approx(1.6)


def test_linear_distances_and_risk_by_hand():
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0, 1])
    d = linear_distances(w, -2.0, x)
    assert torch.allclose(d, torch.tensor([1.0, 0.4, 1.0], dtype=torch.float64))
    risk, rho = linear_risk_rho(w, -2.0, x, y)
    assert risk == pytest.approx(1 / 3) and rho == pytest.approx(2.4 / 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deepfool_on_affine_model_is_the_analytic_distance(dtype):
    """DeepFool's first step on an affine model is the exact distance |w·x + b|/‖w‖ (plus its 1e-4 constant),
    whatever the side of the boundary; the public attack's verified perturbation is (1 + η) times that."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(20, generator=g, dtype=torch.float64)
    b = 0.3
    x = torch.rand(64, 20, generator=g, dtype=torch.float64) - 0.5
    clf = affine_classifier(w.to(dtype), b, bounds=(-100.0, 100.0))
    out = deepfool_batch(clf, x.to(dtype), clip=False, max_iter=5)
    exact = linear_distances(w, b, x)
    got = out.r_tot.double().flatten(1).norm(dim=1) - STEP_EPS
    tol = 1e-12 if dtype == torch.float64 else 1e-5 * float(exact.max() + 1)  # float32 rounding of ‖r‖
    assert (got - exact).abs().max() < tol
    assert bool(out.converged.all()) and bool((out.iterations == 1).all())
    res = deepfool(clf, x.to(dtype), clip=False)
    assert bool(res.success.all())
    assert torch.allclose(res.l2.double(), 1.02 * (exact + STEP_EPS), rtol=1e-5 if dtype == torch.float32 else 1e-10)


def test_bad_inputs_are_clear_errors():
    w = torch.ones(3, dtype=torch.float64)
    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(InputError, match="zero vector"):
        linear_distances(torch.zeros(3), 0.0, x)
    with pytest.raises(InputError, match="features"):
        linear_distances(w, 0.0, torch.zeros(4, 5))
    with pytest.raises(InputError, match="binary labels"):
        linear_risk_rho(w, 0.0, x, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(InputError, match="NaN"):
        linear_distances(w, 0.0, torch.full((2, 3), float("nan")))
    with pytest.raises(InputError, match="both classes"):
        distinguishability(x, torch.zeros(4, dtype=torch.long))


@needs_fmnist
@pytest.mark.slow
def test_repro_quick_and_replot(tmp_path):
    """The quick reproduction: every measured point below its bound, DeepFool agreeing with the exact distances;
    the figure is redrawn from the saved JSON alone (``--replot``)."""
    mod = load_script("repro/linear_tradeoff.py")
    out = mod.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    gauss, fm = out["result"]["panels"]
    for c in gauss["checks"]:
        assert c["deepfool_gap"] < 1e-9
        assert abs(c["risk_mc"] - c["risk_closed"]) < 5 * math.sqrt(0.25 / gauss["n_mc"])
    for ps in fm["points_full"].values():
        for p in ps:
            assert p["rho"] <= p["bound"] + 1e-9 and 0 <= p["risk"] <= 1
    assert fm["deepfool_gap"] < 1e-9
    png = tmp_path / "linear_tradeoff.png"
    saved = (tmp_path / "linear_tradeoff.json").read_text()
    png.unlink()
    mod.main(["--replot", "--out", str(tmp_path)])
    assert png.exists() and png.stat().st_size > 0
    assert (tmp_path / "linear_tradeoff.json").read_text() == saved
