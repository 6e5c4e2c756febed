"""Robustness versus risk of linear classifiers (Fawzi, Fawzi & Frossard, "Analysis of classifiers' robustness
to adversarial perturbations", Machine Learning 107(3), 2018; arXiv:1502.02590).

Setting. Two classes ``s ∈ {+1, −1}`` (labels 1 and 0 here) with priors ``p₊, p₋`` and an affine classifier
``f(x) = w·x + b`` that predicts class 1 when ``f(x) > 0``. Everything below is exact (float64, no attack):

* the **risk** ``R(f) = P(s·f(x) ≤ 0)`` (a point on the boundary counts as an error);
* the **robustness** ``ρ_adv(f) = E[Δ_adv(x)]`` with ``Δ_adv(x) = |f(x)| / ‖w‖₂``, the L2 distance from ``x`` to
  the hyperplane, averaged over *all* points (correct or not), the paper's definition of ``ρ_adv``. It is the
  unconstrained distance (no input box). DeepFool on the affine model finds exactly this distance in one step
  (plus its ``1e-4`` step constant): :func:`affine_classifier` builds the model, the tests compare.

**The bound** (:func:`linear_bound`). Fawzi et al. bound the robustness of every linear classifier by the
*distinguishability* of the classes — the distance between their (prior-weighted) means — plus a term
proportional to the risk and to the size of the data's support: a classifier cannot be both accurate and
robust when the means are close, however it is trained. We implement the statement in the following exact form
and prove it here (our derivation; the paper's theorem has this form, and we did not check its constant):

    Let the data lie in the ball ‖x − c‖₂ ≤ M (any centre ``c``), and write ``f(x) = w·(x − c) + β`` with
    ``‖w‖ = 1`` (so ``β = f(c)``). Then, for every affine ``f``,

        ρ_adv(f) ≤ ‖p₊(m₊ − c) − p₋(m₋ − c)‖₂ + |β|·|p₊ − p₋| + 2 (M + |β|) R(f)

    with ``m±`` the class means. For a classifier through the centre (``β = 0``):
    ``ρ_adv ≤ δ + 2 M R`` with ``δ = ‖p₊(m₊ − c) − p₋(m₋ − c)‖``.

Proof: ``|f| = s f + 2|f|·1[s f < 0]`` pointwise, hence ``ρ_adv = E[s f] + 2 E[|f|·1[err]]``. First,
``E[s f] = w·(p₊(m₊−c) − p₋(m₋−c)) + β(p₊ − p₋) ≤ δ + |β||p₊ − p₋|`` (Cauchy–Schwarz, ``‖w‖ = 1``). Second,
``|f(x)| ≤ ‖x − c‖ + |β| ≤ M + |β|`` on the support, so ``E[|f|·1[err]] ≤ (M + |β|) R``. ∎ The bound holds for
any distribution, the empirical one of a finite test set included, so a point measured on a test set lies below
its own bound exactly.

**Two isotropic Gaussians, closed form** (:func:`gaussian_point`, :func:`gaussian_frontier`). Classes
``N(±μ, σ² I)``, priors ½, ``f(x) = w·x + b`` with ``‖w‖ = 1`` and ``a = w·μ``: ``f`` is ``N(a + b, σ²)`` on class
1 and ``N(−a + b, σ²)`` on class 0, so

    R = ½ [Φ(−(a + b)/σ) + Φ((b − a)/σ)],      ρ_adv = ½ [g(a + b) + g(b − a)],
    g(m) = E|N(m, σ²)| = σ √(2/π) exp(−m²/2σ²) + m (1 − 2Φ(−m/σ)).

Without bias every linear classifier of risk ``R ≤ ½`` has ``a = σ Φ⁻¹(1 − R)`` and therefore exactly

    ρ_adv(R) = σ √(2/π) exp(−a²/2σ²) + a (1 − 2R),     a = σ Φ⁻¹(1 − R),   R ≥ Φ(−‖μ‖/σ),

the frontier of the family (no such classifier does better or worse at that risk; ``Φ(−‖μ‖/σ)`` is the Bayes
risk). Since ``ρ_adv(R) ≤ a + σ√(2/π) ≤ ‖μ‖ + 0.8 σ``, robustness is capped by the distance between the means
while the inputs' norms grow like ``σ√d``: the paper's point (the support is unbounded here, so the general bound
with ``M`` does not apply; the identity in its proof is what the closed form evaluates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError, OptionError
from ..models.classifier import Classifier

__all__ = ["AffineBinary", "affine_classifier", "linear_distances", "linear_risk_rho", "distinguishability",
           "linear_bound", "gaussian_point", "gaussian_frontier", "LinearPoint", "evaluate_linear"]


class AffineBinary(nn.Module):
    """A two-class affine model: logits ``(0, w·x + b)`` on the flattened input (class 1 when ``w·x + b > 0``)."""

    def __init__(self, w: torch.Tensor, b: float | torch.Tensor):
        super().__init__()
        w = torch.as_tensor(w).detach().flatten()
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = nn.Parameter(torch.as_tensor(b, dtype=w.dtype).detach().reshape(()).clone(),
                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1) @ self.weight + self.bias
        return torch.stack([torch.zeros_like(f), f], 1)


def affine_classifier(w: torch.Tensor, b: float | torch.Tensor, *, bounds: tuple[float, float] = (0.0, 1.0),
                      name: str = "affine") -> Classifier:
    """:class:`AffineBinary` wrapped as a :class:`~georobust.Classifier` in eval mode (dtype of ``w``)."""
    w = _check_w(w)
    return Classifier(AffineBinary(w, b), bounds=bounds, name=name).eval()


def _check_w(w) -> torch.Tensor:
    w = torch.as_tensor(w)
    if not w.is_floating_point():
        raise InputError(f"w must be a floating tensor, got dtype {w.dtype}")
    if not bool(torch.isfinite(w).all()):
        raise InputError("w holds NaN or inf; pass a finite weight vector")
    if float(w.norm()) == 0.0:
        raise InputError("w is the zero vector: the classifier has no boundary; pass a non-zero weight vector")
    return w.flatten()


def _check_xy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None):
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise InputError("x must be a floating tensor (N, ...)")
    if x.ndim < 2 or x[0].numel() != w.numel():
        raise InputError(f"x must be (N, ...) with {w.numel()} features per sample (the size of w), "
                         f"got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("x holds NaN or inf")
    if y is not None:
        if not torch.is_tensor(y) or y.shape != (x.shape[0],):
            raise InputError(f"y must be a tensor of shape ({x.shape[0]},), got {getattr(y, 'shape', y)}")
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            raise InputError("y must hold the binary labels 0 and 1 (class 1: w·x + b > 0)")


def linear_distances(w: torch.Tensor, b: float, x: torch.Tensor) -> torch.Tensor:
    """``|w·x + b| / ‖w‖₂`` per sample, in float64: the exact L2 distance of each input to the hyperplane."""
    w = _check_w(w)
    _check_xy(w, x)
    w64 = w.double().to(x.device)
    return (x.flatten(1).double() @ w64 + float(b)).abs() / w64.norm()


def linear_risk_rho(w: torch.Tensor, b: float, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Exact ``(risk, ρ_adv)`` of ``f(x) = w·x + b`` on the sample ``(x, y)`` (labels 0/1, see the module)."""
    w = _check_w(w)
    _check_xy(w, x, y)
    f = x.flatten(1).double() @ w.double().to(x.device) + float(b)
    s = 2.0 * y.to(x.device).double() - 1.0
    risk = float((s * f <= 0).double().mean())
    rho = float((f.abs() / w.double().norm()).mean())
    return risk, rho


def distinguishability(x: torch.Tensor, y: torch.Tensor, centre: torch.Tensor | None = None
                       ) -> tuple[float, float, float, torch.Tensor]:
    """``(δ, M, p₊ − p₋, c)`` of the sample: ``δ = ‖p₊(m₊ − c) − p₋(m₋ − c)‖₂``, ``M = max ‖x − c‖₂`` and the
    prior gap, for the centre ``c`` (default: the sample mean). Needs both classes."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 2:
        raise InputError("x must be a floating tensor (N, ...)")
    _check_xy(torch.ones(x[0].numel()), x, y)
    xf = x.flatten(1).double()
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        raise InputError("distinguishability needs samples of both classes 0 and 1")
    c = xf.mean(0) if centre is None else torch.as_tensor(centre).double().flatten().to(xf.device)
    p1, p0 = n1 / xf.shape[0], n0 / xf.shape[0]
    m1, m0 = xf[y == 1].mean(0), xf[y == 0].mean(0)
    delta = float((p1 * (m1 - c) - p0 * (m0 - c)).norm())
    radius = float((xf - c).norm(dim=1).max())
    return delta, radius, p1 - p0, c


def linear_bound(risk, delta: float, radius: float, *, beta: float = 0.0, prior_gap: float = 0.0):
    """The upper bound on ``ρ_adv`` of an affine classifier of risk ``risk`` (module docstring):
    ``δ + |β|·|p₊ − p₋| + 2 (M + |β|) R``. ``risk`` may be a float or a tensor (a curve)."""
    if delta < 0 or radius < 0:
        raise OptionError(f"delta and radius must be >= 0, got {delta}, {radius}")
    return delta + abs(beta) * abs(prior_gap) + 2.0 * (radius + abs(beta)) * risk


def _phi(t: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(t)


def _abs_mean(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """``E|N(m, σ²)|``, closed form."""
    return sigma * math.sqrt(2 / math.pi) * torch.exp(-m ** 2 / (2 * sigma ** 2)) + m * (1 - 2 * _phi(-m / sigma))


def gaussian_point(a, b, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(risk, ρ_adv)`` of ``f(x) = w·x + b`` (``‖w‖ = 1``, ``a = w·μ``) on the classes ``N(±μ, σ²I)`` with
    priors ½ (module docstring). ``a`` and ``b`` broadcast; float64 tensors are returned."""
    if not sigma > 0:
        raise OptionError(f"sigma must be > 0, got {sigma}")
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    risk = 0.5 * (_phi(-(a + b) / sigma) + _phi((b - a) / sigma))
    rho = 0.5 * (_abs_mean(a + b, sigma) + _abs_mean(b - a, sigma))
    return risk, rho


def gaussian_frontier(risk, mu_norm: float, sigma: float) -> torch.Tensor:
    """The closed form ``ρ_adv(R)`` of every bias-free linear classifier of risk ``R`` on ``N(±μ, σ²I)``
    (module docstring): ``σ√(2/π)·exp(−a²/2σ²) + a(1 − 2R)`` with ``a = σΦ⁻¹(1 − R)``. ``R`` must lie in
    ``[Φ(−‖μ‖/σ), ½]`` (below it no linear classifier exists); ``mu_norm = ‖μ‖``, half the distance of the means."""
    if not sigma > 0 or not mu_norm >= 0:
        raise OptionError(f"sigma must be > 0 and mu_norm >= 0, got {sigma}, {mu_norm}")
    r = torch.as_tensor(risk, dtype=torch.float64)
    bayes = float(_phi(torch.tensor(-mu_norm / sigma, dtype=torch.float64)))
    if bool(((r < bayes * (1 - 1e-12)) | (r > 0.5)).any()):
        raise OptionError(f"risk must lie in [Bayes risk {bayes:.6g}, 0.5] for N(±μ, σ²I) with ‖μ‖ = {mu_norm}, "
                          f"σ = {sigma}; got {r.min().item():.6g}..{r.max().item():.6g}")
    a = (sigma * torch.special.ndtri(1 - r)).clamp(max=mu_norm)
    return sigma * math.sqrt(2 / math.pi) * torch.exp(-a ** 2 / (2 * sigma ** 2)) + a * (1 - 2 * r)


@dataclass
class LinearPoint:
    """One linear classifier measured exactly: its name, ``risk``, ``rho`` (ρ_adv), ``beta`` (``f(c)/‖w‖``) and
    the ``bound`` of :func:`linear_bound` at its own risk and bias (``rho <= bound`` always)."""

    name: str
    risk: float
    rho: float
    beta: float
    bound: float

    def as_dict(self) -> dict:
        return {"name": self.name, "risk": self.risk, "rho": self.rho, "beta": self.beta, "bound": self.bound}


def evaluate_linear(name: str, w: torch.Tensor, b: float, x: torch.Tensor, y: torch.Tensor, *, delta: float,
                    radius: float, prior_gap: float, centre: torch.Tensor) -> LinearPoint:
    """Risk, ρ_adv and the bound of ``f(x) = w·x + b`` on ``(x, y)`` (see :func:`distinguishability` for
    ``delta``, ``radius``, ``prior_gap`` and ``centre``)."""
    w = _check_w(w)
    risk, rho = linear_risk_rho(w, b, x, y)
    w64 = w.double()
    beta = float((w64 @ centre.double().to(w64.device).flatten() + float(b)) / w64.norm())
    return LinearPoint(name, risk, rho, beta, float(linear_bound(risk, delta, radius, beta=beta,
                                                                 prior_gap=prior_gap)))
