"""Training objectives, each registered by name in ``georobust.registry.objectives``.

An objective is a callable ``obj(model, x, y) -> (loss, terms)`` where ``loss`` is the scalar to minimise
(mean over the batch) and ``terms`` a dict of floats shown in the progress bar and written to the log.
``model`` is the :class:`~georobust.Classifier` being trained, in training mode.

Registered objectives (options in each class's docstring):

``standard``          cross-entropy (ERM).
``adversarial``       PGD adversarial training, L∞ or L2 (Madry et al., ICLR 2018).
``fast-adversarial``  FGSM with random init, step 1.25·eps (Wong, Rice & Kolter, ICLR 2020): the one
                      spelling of fast adversarial training.
``cure``              curvature regularisation (Moosavi-Dezfooli, Fawzi, Uesato & Frossard, CVPR 2019).
``llr``               local linearity regulariser (Qin et al., NeurIPS 2019).
``margin-hinge``      CE + a hinge on the first-order margin ``f(x)/‖∇f(x)‖`` to the runner-up class, input
                      layer only (a simplification of Elsayed et al.; ``margin`` is its former name).
``large-margin``      the loss of Elsayed et al. (NeurIPS 2018): hinges on the first-order distances to every
                      other class's boundary, at chosen layers, aggregated by max/sum; replaces CE.

Two conventions shared by the robust objectives, chosen once and documented here:

* **Mode of the inner computations.** Inner maximisations (the attack of adversarial training, LLR's
  search) and the input gradients inside a regulariser are computed with every module in **eval mode**
  (batch-norm uses its running statistics, dropout is off), then the modules' own modes are restored.
  In eval mode a sample's input gradient is its own (train-mode batch-norm mixes the samples of a batch,
  so "per-sample gradient" would not mean anything), the attack never updates the running statistics,
  and both gradients of CURE are taken from one and the same function. The cross-entropy term is then
  computed in the model's training mode as in standard training (so batch-norm statistics keep being
  updated once per batch). For a model with no mode-dependent module (no batch-norm, dropout, ...) the
  two coincide and a single forward pass serves both.
* **Randomness** (random starts) comes from torch's global generator on the device of ``x``, which
  :func:`~georobust.defenses.fit` seeds and stores in each checkpoint, so a resumed run is exact. The start
  itself is the package's one convention, :func:`georobust.core.ops.random_start`.

Schedules: ``fit`` calls ``obj.set_progress(t, total)`` before each step, with ``t`` the (fractional)
number of epochs completed after that step and ``total`` the number of epochs; objectives with warm-ups
(CURE's ``h`` and ``gamma``) derive their current strength from it, so no state needs checkpointing.
"""

from __future__ import annotations

import abc
import inspect
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..checks import check_norm, check_positive
from ..core import ops
from ..core.losses import attack_loss
from ..core.modes import eval_mode, mode_dependent
from ..core.ops import bcast, flat_norm, project
from ..core.options import bind_options, keyword_options
from ..engine.pgd import pgd_kernel
from ..errors import OptionError, unknown_name

log = logging.getLogger(__name__)


class Objective(abc.ABC):
    """Base class: subclasses implement ``__call__`` and describe themselves in ``config``."""

    name = "objective"

    def config(self) -> dict:
        """The objective's name and options (JSON-serialisable); a resumed run must match it."""
        opts = {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters
                if k != "self" and hasattr(self, k)}
        return {"name": self.name, **opts}

    def set_progress(self, t: float, total: int) -> None:
        """Called by ``fit`` before each step: ``t`` epochs (fractional) done after it, out of ``total``."""
        self._t, self._total = float(t), int(total)

    @abc.abstractmethod
    def __call__(self, model, x: torch.Tensor, y: torch.Tensor):
        """Return ``(loss, terms)`` for the batch."""


# ------------------------------------------------------------------------------------------- helpers
def inner_max(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "inf", steps: int = 10,
              step_size: float | None = None, random_start: bool = True) -> torch.Tensor:
    """The lean inner maximisation of adversarial training: projected gradient ascent of the CE.

    ``δ ← Π_{B(eps)}(δ + α·d(∇_δ CE(x + δ, y)))`` with ``d`` the steepest-ascent direction of the norm
    (``sign`` for L∞, normalised gradient for L2), clipped to the model's bounds after each step (Madry
    et al., 2018). It is the package's one PGD kernel (:func:`georobust.engine.pgd.pgd_kernel`) without a
    tracker: unlike :func:`georobust.attacks.pgd.pgd` it neither validates, verifies nor keeps the best
    iterate, and it never synchronises with the host — the cheap attack run at every training step. The
    random start is :func:`georobust.core.ops.random_start` from torch's global generator. The caller
    chooses the model's mode (the objectives use :func:`eval_mode`). Returns ``x + δ`` (detached).
    ``step_size`` defaults to ``2.5·eps/steps`` (Madry et al.).
    """
    bounds = tuple(model.bounds) if hasattr(model, "bounds") else (0.0, 1.0)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    start = (x + ops.random_start(x, eps, norm)).clamp(*bounds) if random_start else None
    return pgd_kernel(model, x, y, eps=float(eps), norm=norm, steps=int(steps), step_size=float(alpha),
                      bounds=bounds, loss="ce", start=start)


def _ramp(final: float, warmup: float, t: float | None) -> float:
    """Linear warm-up of a strength from 0 to ``final`` over the first ``warmup`` epochs."""
    if warmup <= 0 or t is None:
        return final
    return final * min(1.0, t / warmup)


def _check_nonneg(value, name):
    return check_positive(value, name, allow_zero=True)


# ---------------------------------------------------------------------------------------- objectives
@registry.objectives.register("standard")
class Standard(Objective):
    """Plain cross-entropy (empirical risk minimisation)."""

    name = "standard"

    def __call__(self, model, x, y):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"ce": float(loss.detach()), "acc": float(acc)}


@registry.objectives.register("adversarial", norms=("inf", "2"))
class Adversarial(Objective):
    """PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models
    resistant to adversarial attacks", ICLR 2018): minimise ``E max_{‖δ‖≤eps} CE(x + δ, y)``.

    The inner maximisation is :func:`inner_max` run in eval mode (see the module doc). The outer loss is the
    cross-entropy at the adversarial points, in the model's training mode, plus ``clean_weight`` times the
    clean cross-entropy (0 = Madry et al.; 0.5 = the mix of Goodfellow et al., 2015).

    Options:
        eps: radius of the threat model (default 0.1, L∞, images in [0, 1]).
        norm: ``"inf"`` or ``"2"``.
        steps: PGD steps (default 10). step_size: default ``2.5·eps/steps``.
        random_start: start from a random point of the ball (default True).
        clean_weight: weight of the clean cross-entropy added to the adversarial one.

    The single-step "fast" variant is :class:`FastAdversarial` (``fast-adversarial``).
    """

    name = "adversarial"

    def __init__(self, eps: float = 0.1, norm: str = "inf", steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, clean_weight: float = 0.0):
        self.eps = float(check_positive(eps, "eps"))
        self.norm = check_norm(norm)
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.step_size = float(check_positive(step_size, "step_size")) if step_size is not None else None
        self.random_start = bool(random_start)
        self.clean_weight = float(_check_nonneg(clean_weight, "clean_weight"))

    def __call__(self, model, x, y):
        with eval_mode(model):
            x_adv = inner_max(model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                              step_size=self.step_size, random_start=self.random_start)
        logits = model(x_adv)
        adv = F.cross_entropy(logits, y)
        loss = adv
        terms = {"ce_adv": adv.detach(), "acc_adv": (logits.argmax(1) == y).float().mean()}
        if self.clean_weight > 0:
            clean = F.cross_entropy(model(x), y)
            loss = (1 - self.clean_weight) * adv + self.clean_weight * clean
            terms["ce"] = clean.detach()
        return loss, {k: float(v) for k, v in terms.items()}


@registry.objectives.register("fast-adversarial", norms=("inf", "2"))
class FastAdversarial(Adversarial):
    """Fast adversarial training (Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial
    training", ICLR 2020): :class:`Adversarial` with one FGSM step of ``step_size`` (default ``1.25·eps``)
    from a random start in the ball — the one spelling of fast adversarial training. Options: eps, norm,
    step_size."""

    name = "fast-adversarial"

    def __init__(self, eps: float = 0.1, norm: str = "inf", step_size: float | None = None):
        eps = float(check_positive(eps, "eps"))
        super().__init__(eps=eps, norm=norm, steps=1, step_size=1.25 * eps if step_size is None else step_size,
                         random_start=True)

    def config(self) -> dict:
        return {"name": self.name, "eps": self.eps, "norm": self.norm, "step_size": self.step_size}


class _Regularised(Objective):
    """Shared skeleton: the clean CE in training mode plus a regulariser computed in eval mode."""

    def _clean_and_input(self, model, x, y):
        """``(xr, logits_reg, ce_vec, logits_train)``: ``xr`` requires grad; ``logits_reg`` are eval-mode
        logits at ``xr`` (the same tensor as the training logits when the model has no mode-dependent
        module, so one forward pass serves both)."""
        xr = x.detach().clone().requires_grad_(True)
        if not mode_dependent(model):
            logits = model(xr)
            return xr, logits, F.cross_entropy(logits, y, reduction="none"), logits
        logits_train = model(x)
        with eval_mode(model):
            logits = model(xr)
        return xr, logits, F.cross_entropy(logits, y, reduction="none"), logits_train


@registry.objectives.register("cure")
class Cure(_Regularised):
    """CURE (Moosavi-Dezfooli, Fawzi, Uesato & Frossard, "Robustness via curvature regularization, and vice
    versa", CVPR 2019): a finite-difference estimate of the curvature of the loss along the direction that
    matters for an L∞ attacker, added to the cross-entropy. Two scalings are offered (``reg``), and they
    differ in strength for the same ``γ``, so the exact formulas, for a batch of ``N`` samples with per-sample
    losses ``ℓ_i`` and ``Δ_i = ∇_{x_i}ℓ_i(x_i + h z_i) − ∇_{x_i}ℓ_i(x_i)``:

    * ``reg="per-sample-squared"`` (default; the paper's Eq. 5 per sample)::

          loss = CE + γ · (1/N) Σ_i ‖Δ_i‖₂²

    * ``reg="authors"`` (the authors' published code: the *un-squared* norm of the gradient difference of
      the *batch-mean* loss ``ℓ̄ = (1/N) Σ_i ℓ_i``, whose gradient with respect to ``x_i`` is ``Δ_i / N``)::

          loss = CE + γ · (1/N) Σ_i ‖Δ_i / N‖₂ = CE + γ/N² · Σ_i ‖Δ_i‖₂

    With batch 128 and ``‖Δ_i‖ ≈ 1`` the authors' term is about ``128 × 128 = 16,000`` times weaker at the same
    ``γ`` (and depends on the batch size); ``γ = 4`` does not mean the same thing in the two. The shipped
    ``lenet-fmnist-cure`` was trained with ``per-sample-squared`` (the only scaling then; its manifest command
    has no ``reg`` option).

    Choices (each one explicit, because implementations differ):

    * ``z = sign(∇ₓℓ(x)) / ‖sign(∇ₓℓ(x))‖₂`` is computed from the current gradient and **held constant**
      (detached): no gradient flows through ``z``, as in the paper.
    * ``per-sample-squared``: ``‖·‖²`` is the squared L2 norm of the difference (the paper's Eq. 5), summed
      over input dimensions; ``ℓ`` is each sample's own loss and the per-sample losses are *summed* before
      differentiating, so ``∇ₓℓ`` of sample ``i`` is that sample's gradient, not divided by the batch size.
      The regulariser is then averaged over the batch, like the CE.
    * **Double backprop**: the gradient difference is built with ``create_graph=True`` so the parameter
      gradient of the regulariser is exact (second derivatives through the network).
    * **Mode**: both gradients are taken in eval mode — the same mode for both, so the difference measures
      the curvature of one function (see the module doc); the CE term is in training mode.
    * **Schedules**: ``h`` and ``γ`` ramp linearly from 0 to their values over the first ``h_warmup`` and
      ``gamma_warmup`` epochs (the paper increases ``h`` during the first epochs of fine-tuning).

    Options:
        gamma: weight γ of the regulariser (default 4.0). h: finite-difference step, an L2 length in input
            space since ``‖z‖₂ = 1`` (default 1.5: for 28×28 inputs a sign step of L∞ size ≈ 0.054).
        h_warmup, gamma_warmup: warm-up lengths in epochs (0 = constant; default 1 epoch for h).
        loss: ``"ce"`` (paper) or ``"cw"`` (the margin ``max_{k≠y} z_k − z_y``, piecewise affine in the
            logits — with it the regulariser of an affine model is exactly 0).
        reg: ``"per-sample-squared"`` (default) or ``"authors"`` (formulas above).
    """

    name = "cure"
    REGS = ("per-sample-squared", "authors")

    def __init__(self, gamma: float = 4.0, h: float = 1.5, h_warmup: float = 1.0, gamma_warmup: float = 0.0,
                 loss: str = "ce", reg: str = "per-sample-squared"):
        self.gamma = float(_check_nonneg(gamma, "gamma"))
        self.h = float(check_positive(h, "h"))
        self.h_warmup = float(_check_nonneg(h_warmup, "h_warmup"))
        self.gamma_warmup = float(_check_nonneg(gamma_warmup, "gamma_warmup"))
        if loss not in ("ce", "cw"):
            raise unknown_name("CURE loss", loss, ("ce", "cw"))
        self.loss = loss
        if reg not in self.REGS:
            raise unknown_name("CURE reg (scaling of the regulariser)", reg, self.REGS)
        self.reg = reg
        self._t: float | None = None

    def config(self) -> dict:
        cfg = super().config()
        if self.reg == "per-sample-squared":  # the default: configs of runs made before the option stay equal
            cfg.pop("reg", None)
        return cfg

    def current(self) -> tuple[float, float]:
        """``(h, γ)`` at the current point of the schedule."""
        return _ramp(self.h, self.h_warmup, self._t), _ramp(self.gamma, self.gamma_warmup, self._t)

    def regulariser(self, model, x, y, h: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample CURE term (differentiable w.r.t. the parameters) and the per-sample loss ``ℓ(x)``, both
        in eval mode: ``‖Δ_i‖²`` (``per-sample-squared``) or ``‖Δ_i / N‖`` (``authors``); the objective adds
        ``γ`` times their batch mean. ``h`` defaults to the scheduled value."""
        h = self.current()[0] if h is None else h
        with eval_mode(model):
            xr = x.detach().clone().requires_grad_(True)
            return self._reg(model, xr, model(xr), y, h)

    def _reg(self, model, xr, logits, y, h):
        ell = attack_loss(logits, y, None, self.loss)
        # one backward over the clean graph gives both ∇ℓ(x) (kept in the graph) and z (detached)
        (g,) = torch.autograd.grad(ell.sum(), xr, create_graph=True)
        s = g.detach().sign()
        z = s / bcast(flat_norm(s, "2").clamp_min(1e-12), s)  # held constant
        ell_h = attack_loss(model(xr + h * z), y, None, self.loss)
        (g_h,) = torch.autograd.grad(ell_h.sum(), xr, create_graph=True)
        diff = (g_h - g).flatten(1)
        if self.reg == "authors":  # gradient of the batch-mean loss (Δ_i / N), un-squared L2 norm
            return (diff / xr.shape[0]).norm(dim=1), ell
        return diff.pow(2).sum(1), ell

    def __call__(self, model, x, y):
        h, gamma = self.current()
        xr, logits, ce_vec, logits_train = self._clean_and_input(model, x, y)
        if mode_dependent(model):
            with eval_mode(model):
                reg, _ = self._reg(model, xr, logits, y, h)
            ce = F.cross_entropy(logits_train, y)
        else:
            reg, _ = self._reg(model, xr, logits, y, h)
            ce = ce_vec.mean()
        reg = reg.mean()
        loss = ce + gamma * reg
        acc = (logits_train.argmax(1) == y).float().mean()
        return loss, {"ce": float(ce.detach()), "cure": float(reg.detach()), "acc": float(acc), "h": h,
                      "gamma": gamma}


@registry.objectives.register("llr")
class LocalLinearity(_Regularised):
    """Local linearity regularisation (Qin, Martens, Gowal, Krishnan, Dvijotham, Fawzi, De, Stanforth &
    Kohli, "Adversarial robustness through local linearization", NeurIPS 2019).

    ``g(δ; x) = |ℓ(x + δ) − ℓ(x) − δᵀ∇ₓℓ(x)|`` measures how far the loss is from its first-order Taylor
    model; ``γ(eps, x) = max_{‖δ‖∞ ≤ eps} g(δ; x)`` is found by ``steps`` projected sign-gradient ascent
    steps of size ``step_size`` from a random start (eval mode; ``∇ₓℓ(x)`` held constant during the
    search). The loss is the paper's Eq. 8::

        CE(x, y) + λ·γ(eps, x) + μ·|δ_LLRᵀ ∇ₓℓ(x)|

    with ``δ_LLR`` the maximiser; ``∇ₓℓ(x)`` is kept in the graph (double backprop) for the outer step.

    Options: eps (L∞ radius, default 0.1), steps of the search (default 2; the paper uses few), step_size
    (default ``min(eps, 2.5·eps/steps)``), lam λ (default 4.0), mu μ (default 3.0) — the paper's CIFAR-10
    weights.
    """

    name = "llr"

    def __init__(self, eps: float = 0.1, steps: int = 2, step_size: float | None = None, lam: float = 4.0,
                 mu: float = 3.0):
        self.eps = float(check_positive(eps, "eps"))
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.step_size = float(check_positive(step_size, "step_size")) if step_size is not None else None
        self.lam = float(_check_nonneg(lam, "lam"))
        self.mu = float(_check_nonneg(mu, "mu"))

    def _terms(self, model, xr, logits, y):
        lo, hi = model.bounds if hasattr(model, "bounds") else (0.0, 1.0)
        ell = F.cross_entropy(logits, y, reduction="none")
        (g,) = torch.autograd.grad(ell.sum(), xr, create_graph=True)
        x0, g0, ell0 = xr.detach(), g.detach(), ell.detach()
        alpha = min(self.eps, 2.5 * self.eps / self.steps) if self.step_size is None else self.step_size
        delta = (x0 + ops.random_start(x0, self.eps, "inf")).clamp(lo, hi) - x0
        for _ in range(self.steps):  # maximise g(δ) with the Taylor model frozen
            delta.requires_grad_(True)
            ell_d = F.cross_entropy(model(x0 + delta), y, reduction="none")
            lin = ell0 + (delta * g0).flatten(1).sum(1)
            (gd,) = torch.autograd.grad((ell_d - lin).abs().sum(), delta)
            delta = project(delta.detach() + alpha * gd.sign(), self.eps, "inf")
            delta = (x0 + delta).clamp(lo, hi) - x0
        delta = delta.detach()
        ell_d = F.cross_entropy(model(xr + delta), y, reduction="none")
        first = (delta * g).flatten(1).sum(1)
        gamma = (ell_d - ell - first).abs()
        return gamma, first.abs()

    def __call__(self, model, x, y):
        xr, logits, ce_vec, logits_train = self._clean_and_input(model, x, y)
        if mode_dependent(model):
            with eval_mode(model):
                gamma, first = self._terms(model, xr, logits, y)
            ce = F.cross_entropy(logits_train, y)
        else:
            gamma, first = self._terms(model, xr, logits, y)
            ce = ce_vec.mean()
        loss = ce + self.lam * gamma.mean() + self.mu * first.mean()
        acc = (logits_train.argmax(1) == y).float().mean()
        return loss, {"ce": float(ce.detach()), "llr": float(gamma.mean().detach()),
                      "grad_term": float(first.mean().detach()), "acc": float(acc)}


@registry.objectives.register("margin-hinge", norms=("2",))
class MarginHinge(_Regularised):
    """Cross-entropy plus a hinge on the first-order L2 margin to the runner-up class, at the input layer only.

    A simplification of Elsayed, Krishnan, Mobahi, Regan & Bengio ("Large margin deep networks", NeurIPS
    2018) — their loss is :class:`LargeMargin` (``large-margin``): it aggregates over all other classes and
    over layers, and replaces the cross-entropy. Here, with ``f(x) = z_y(x) − z_k(x)``, ``k`` the highest other
    logit, the L2 distance to the nearest decision boundary is approximated to first order by
    ``d(x) = f(x) / ‖∇ₓf(x)‖₂`` (the DeepFool / linearised distance). We keep the sign (negative for a
    misclassified input), so a misclassified input is pushed towards the right side rather than away from
    the boundary. The loss::

        CE(x, y) + λ · mean_i max(0, target − d_i)

    ``∇ₓf`` stays in the graph (double backprop), so the parameter gradient accounts for the change of the
    gradient norm. Computed in eval mode (module doc). (Registered as ``margin`` before; that name still
    works and logs that it is this objective.)

    Options: target — the desired L2 margin (default 1.0); lam λ (default 0.1).
    """

    name = "margin-hinge"

    def __init__(self, target: float = 1.0, lam: float = 0.1):
        self.target = float(check_positive(target, "target"))
        self.lam = float(_check_nonneg(lam, "lam"))

    def margins(self, model, x, y) -> torch.Tensor:
        """The signed first-order margins ``d_i`` (eval mode, differentiable w.r.t. the parameters)."""
        with eval_mode(model):
            xr = x.detach().clone().requires_grad_(True)
            return self._margins(xr, model(xr), y)

    @staticmethod
    def _margins(xr, logits, y):
        f = -attack_loss(logits, y, None, "cw")  # z_y − max_{k≠y} z_k
        (g,) = torch.autograd.grad(f.sum(), xr, create_graph=True)
        return f / flat_norm(g, "2").clamp_min(1e-12)

    def __call__(self, model, x, y):
        xr, logits, ce_vec, logits_train = self._clean_and_input(model, x, y)
        if mode_dependent(model):
            with eval_mode(model):
                d = self._margins(xr, logits, y)
            ce = F.cross_entropy(logits_train, y)
        else:
            d = self._margins(xr, logits, y)
            ce = ce_vec.mean()
        hinge = F.relu(self.target - d).mean()
        loss = ce + self.lam * hinge
        acc = (logits_train.argmax(1) == y).float().mean()
        return loss, {"ce": float(ce.detach()), "hinge": float(hinge.detach()),
                      "margin_median": float(d.detach().median()), "acc": float(acc)}


@registry.objectives.register("margin", norms=("2",),
                              summary="former name of margin-hinge (CE + first-order margin hinge, input layer)")
class _MarginFormerName(MarginHinge):
    """``margin``: the former name of :class:`MarginHinge`; logs the new name and behaves exactly like it."""

    def __init__(self, target: float = 1.0, lam: float = 0.1):
        log.warning("objective 'margin' is now called 'margin-hinge' (CE + a first-order margin hinge on the "
                    "runner-up class at the input); 'large-margin' is Elsayed et al.'s loss")
        super().__init__(target=target, lam=lam)


Margin = MarginHinge  # the former class name


@registry.objectives.register("large-margin", norms=("2", "inf"))
class LargeMargin(Objective):
    """The large-margin loss of Elsayed, Krishnan, Mobahi, Regan & Bengio ("Large margin deep networks",
    NeurIPS 2018, Eq. 9–10), which *replaces* the cross-entropy.

    For a layer ``l`` with activations ``h_l(x)`` (``l = input``: ``x`` itself) and each class ``j ≠ y``, the
    first-order distance of ``x`` to the boundary between ``y`` and ``j``, measured in ``h_l`` in the L_p norm, is
    ``d_{l,j} = (z_y − z_j) / (ε + ‖∇_{h_l}(z_y − z_j)‖_q)`` with ``q`` the dual norm of ``p`` (``p = 2``: ``q = 2``;
    ``p = ∞``: ``q = 1``); it is exact for a model affine in ``h_l``. The loss of a sample is::

        Σ_{l ∈ layers}  A_{j ≠ y}  max(0, γ_l − d_{l,j})

    with ``A`` = ``max`` or ``sum`` over the other classes (``top_k > 0``: only the ``top_k`` highest other
    logits, the paper's speed-up), averaged over the batch. The gradients ``∇_{h_l}`` stay in the graph (double
    backprop: the paper's "the norm is differentiated too"). Computed in eval mode like the other
    regularisers (module doc: a sample's gradient is its own).

    Options:
        gamma: the desired margin ``γ`` at the input layer (default 1.0; an L_p length in input space).
        gamma_hidden: ``γ`` at every hidden layer of ``layers`` (default 1.0; a length in activation space).
        layers: comma-separated ``input`` and/or names of sub-modules of the model whose outputs are the
            hidden layers (``model.named_modules()`` names, e.g. ``module.fc1``); default ``input``.
        aggregation: ``"max"`` (default) or ``"sum"`` over the other classes.
        norm: ``"2"`` (default) or ``"inf"`` — the norm the margin is measured in.
        top_k: only the ``top_k`` highest other classes (0: all).
        eps: ``ε`` in the denominator (default 1e-6).
    """

    name = "large-margin"

    def __init__(self, gamma: float = 1.0, gamma_hidden: float = 1.0, layers: str = "input",
                 aggregation: str = "max", norm: str = "2", top_k: int = 0, eps: float = 1e-6):
        self.gamma = float(check_positive(gamma, "gamma"))
        self.gamma_hidden = float(check_positive(gamma_hidden, "gamma_hidden"))
        names = [t.strip() for t in str(layers).split(",") if t.strip()]
        if not names or len(set(names)) != len(names):
            raise OptionError(f"layers={layers!r}: give 'input' and/or distinct sub-module names, comma-separated")
        self.layers = ",".join(names)
        if aggregation not in ("max", "sum"):
            raise unknown_name("large-margin aggregation", aggregation, ("max", "sum"))
        self.aggregation = aggregation
        self.norm = check_norm(norm, ("2", "inf"))
        self.top_k = int(check_positive(top_k, "top_k", integer=True, allow_zero=True))
        self.eps = float(check_positive(eps, "eps"))

    def _hidden(self, model) -> list[tuple[str, nn.Module]]:
        out = []
        for name in self.layers.split(","):
            if name == "input":
                continue
            try:
                out.append((name, model.get_submodule(name)))
            except AttributeError:
                names = [n for n, _ in model.named_modules() if n]
                raise OptionError(f"large-margin: the model has no sub-module {name!r}; layers are 'input' or "
                                  f"one of: {', '.join(names[:30])}") from None
        return out

    def losses(self, model, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample loss (differentiable w.r.t. the parameters) and logits, in eval mode."""
        hidden = self._hidden(model)
        acts: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: acts.append(o)) for _, m in hidden]
        try:
            with eval_mode(model):
                xr = x.detach().clone().requires_grad_(True)
                logits = model(xr)
        finally:
            for h in hooks:
                h.remove()
        use_input = "input" in self.layers.split(",")
        wrt = ([xr] if use_input else []) + acts
        gammas = ([self.gamma] if use_input else []) + [self.gamma_hidden] * len(acts)
        n, k = logits.shape
        others = torch.ones_like(logits, dtype=torch.bool)
        others[torch.arange(n, device=x.device), y] = False
        if self.top_k and self.top_k < k - 1:
            masked = logits.detach().masked_fill(~others, -math.inf)
            keep = torch.zeros_like(others)
            keep.scatter_(1, masked.topk(self.top_k, dim=1).indices, True)
            others &= keep
        zy = logits.gather(1, y[:, None]).squeeze(1)
        dual = 2.0 if self.norm == "2" else 1.0
        terms = []
        for j in range(k):
            diff = zy - logits[:, j]  # z_y − z_j (zero and unused where j = y)
            grads = torch.autograd.grad(diff.sum(), wrt, create_graph=True)
            hinge = 0
            for g, gam in zip(grads, gammas):
                d = diff / (self.eps + g.flatten(1).norm(p=dual, dim=1))
                hinge = hinge + F.relu(gam - d)
            terms.append(torch.where(others[:, j], hinge, torch.zeros_like(hinge)))
        t = torch.stack(terms, 1)  # (N, K), zero where excluded (every hinge is ≥ 0)
        per_sample = t.max(1).values if self.aggregation == "max" else t.sum(1)
        return per_sample, logits

    def __call__(self, model, x, y):
        per, logits = self.losses(model, x, y)
        loss = per.mean()
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"large_margin": float(loss.detach()), "acc": float(acc)}


def make_objective(name: str | Objective, **options) -> Objective:
    """An objective by name with its options (unknown options are an error), or pass one through.

    Option values given as strings (from the command line ``-O key=value``) are converted to the type of
    the option's default (``"0.1"`` → 0.1, ``"true"`` → True).
    """
    if isinstance(name, Objective):
        if options:
            raise TypeError("options given together with an Objective instance")
        return name
    entry = registry.objectives.get(name)
    return entry.fn(**bind_options(f"objective {name!r}", keyword_options(entry.fn), options))
