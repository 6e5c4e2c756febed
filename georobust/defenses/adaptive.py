"""Adaptive attacks on defended models, and the evaluation that runs them honestly.

Athalye, Carlini & Wagner ("Obfuscated gradients give a false sense of security: circumventing defenses to
adversarial examples", ICML 2018) showed that most detection and projection defences only *mask* the gradient:
a gradient attack run on the defended model as it is reports a high robust accuracy, an attack adapted to the
defence breaks it. This module builds the adapted attacks on top of :class:`~georobust.defenses.Defended`:

* **BPDA** through a non-differentiable projection (a quantiser, JPEG): the forward pass is the real
  transformation, the backward pass the identity (:class:`~georobust.defenses.BPDA`, section 4.1 of the paper).
* **Through a generative projection** ``x -> g(z*(x))`` with ``z* = argmin_z ‖g(z) − x‖²`` (Defense-GAN,
  Samangouei, Kabkab & Chellappa, ICLR 2018; attacked in section 5.3.2 of Athalye et al.):
  :class:`GeneratorRoute` keeps the real projection's value and takes its gradient through the generator at
  ``z*``, either by unrolling ``steps`` differentiable descent steps on ``z`` started at ``z*`` (found without
  gradient), or implicitly: at a least-squares optimum ``dz*/dx = (JᵀJ)⁻¹Jᵀ`` (Gauss–Newton, ``J = ∂g/∂z`` at
  ``z*``), so the projection's Jacobian is ``J (JᵀJ + μI)⁻¹ Jᵀ``, the orthogonal projector onto the
  generator's tangent space (``μ`` a small ridge).
* **EOT** over a randomized projection (:class:`~georobust.defenses.EOT`; Athalye, Engstrom, Ilyas & Kwok,
  ICML 2018).
* **Detector-aware** surrogates (Carlini & Wagner, "Adversarial examples are not easily detected: bypassing ten
  detection methods", AISec 2017): the surrogate's reject logit is the *combined logit*
  ``r(x) = max_k z_k(x) + w·(s(x) − τ)`` with ``s`` the detector's score, ``τ`` its threshold — the same
  decision as the real model (``r`` is the arg-max exactly when ``s > τ``) but *with* the detector's gradient.
  Any gradient attack run *targeted* on it (C&W's use: raise ``z_t`` above every other logit, the reject logit
  included) attacks classifier and detector together. For untargeted attacks :func:`adaptive_pgd` ascends the
  penalised loss ``L(z, y) − λ·max(s − τ, 0)·w`` (C&W's penalty form) and counts an iterate a success only
  when it is misclassified *and* not rejected.
* **SPSA** (Uesato, O'Donoghue, van den Oord & Kohli, ICML 2018), the gradient-free check: it only queries
  scores, so a masked gradient does not stop it.

:func:`adaptive_model` builds the surrogate a defence needs from what it declares (its projection's
``differentiable`` / ``randomized`` attributes, a ``project_latent`` method, an attached detector);
:func:`adaptive_evaluation` runs the non-adaptive PGD (on the real defended model), the adaptive PGD and SPSA,
re-verifies every result against the *whole real* defended model (:meth:`Defended.verify`: an input counts as
broken only when it is misclassified *and* no detector flags it), and measures gradient masking: the fraction of
inputs whose input gradient has vanished (the criterion of :func:`georobust.evaluation.alarms.gradients`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_iterations, check_norm, check_positive, check_x, prepare
from ..core import ops
from ..core.losses import loss_grad, margin_loss
from ..engine.pgd import WorstCase, pgd_kernel
from ..errors import InputError, ModelError, OptionError, unknown_name
from ..results import AttackResult, make_result
from .defended import BPDA, EOT, Defended, Detector, Projection, _ValueOf

log = logging.getLogger(__name__)

#: EOT draws used for a randomized projection when none are given (Athalye et al. use tens of draws on
#: ImageNet; the small models here average well with a few)
DEFAULT_EOT = 8

#: weight of the detector penalty in :func:`adaptive_pgd`, in logits per unit of ``w·(s − τ)``; with the
#: automatic ``w`` (one clean-score standard deviation = one logit) a flagged iterate's loss falls by ten logits
#: per standard deviation above the threshold: the penalty dominates the classification margin (a few logits on
#: the small models) until the iterate is accepted again
DEFAULT_PENALTY = 10.0

#: a fraction of inputs with vanished gradients above which the evaluation calls the gradient masked (the
#: default ``max_fraction`` of the ``gradients`` alarm, two points of accuracy)
MASKING_FRACTION = 0.02

#: the routes through a projection: ``none`` (autograd through the projection as it is), ``bpda`` (identity
#: backward), ``generator`` (through the generator at ``z*``, :class:`GeneratorRoute`)
ROUTES = ("auto", "none", "bpda", "generator")

#: the ways :class:`GeneratorRoute` differentiates ``z*(x)``
GENERATOR_MODES = ("implicit", "unroll")


def _generator_of(projection: nn.Module, generator: nn.Module | None) -> nn.Module:
    if generator is not None:
        if not callable(generator):
            raise OptionError(f"generator must be callable (z -> x), got {type(generator).__name__}")
        return generator
    gen = getattr(projection, "generate", None)   # the projection's own z -> x map (e.g. clamp(decoder(z)))
    if callable(gen):
        return gen
    for name in ("generator", "decoder", "g"):
        g = getattr(projection, name, None)
        if isinstance(g, nn.Module) or (g is not None and callable(g) and not isinstance(g, type)):
            return g
    raise OptionError(f"{type(projection).__name__} has no generator: give generator=<the module mapping a latent "
                      "z to an input>, or expose it as .generate(z), .generator or .decoder")


class GeneratorRoute(Projection):
    """Attack a generative projection ``x -> g(z*(x))`` through its generator (Athalye et al., ICML 2018,
    section 5.3.2, on Defense-GAN).

    ``GeneratorRoute(projection, generator=None, mode="implicit", steps=1, step_size=None, ridge=1e-3)``:
    ``projection`` must have ``project_latent(x) -> z*`` (the latent it projects to) and a generator
    (``generator=``, or its ``.generate(z)`` method, ``.generator`` or ``.decoder``); ``projection(x)`` is
    ``g(z*(x))``. The forward value
    is the real projection's output ``g(z*)`` (``z*`` is found without gradient); the backward pass is:

    ``mode="implicit"`` (default)
        the Jacobian of the least-squares projection at its optimum, ``P = J (JᵀJ + μI)⁻¹ Jᵀ`` with
        ``J = ∂g/∂z`` at ``z*`` (Gauss–Newton: the residual's curvature term is dropped) and ``μ`` = ``ridge``
        times the mean eigenvalue of ``JᵀJ``: the projector onto the generator's tangent space. ``J`` costs one
        forward-mode pass per latent dimension.
    ``mode="unroll"``
        ``steps`` differentiable gradient steps ``z ← z − α ∇_z ‖g(z) − x‖²`` from ``z*``, the gradient of
        ``g(z_T)``; ``α`` = ``step_size``, default ``d_z / (2‖J‖²_F)`` (the inverse of twice the mean eigenvalue
        of ``JᵀJ``, so one step moves ``z`` by about the Gauss–Newton step).

    The forward value is ``g(z*)`` with ``z* = projection.project_latent(x)``: the projection's output when, as
    for Defense-GAN, the projection *is* ``g(project_latent(x))``.
    """

    differentiable = True

    def __init__(self, projection: nn.Module, generator: nn.Module | None = None, *, mode: str = "implicit",
                 steps: int = 1, step_size: float | None = None, ridge: float = 1e-3):
        if not callable(getattr(projection, "project_latent", None)):
            raise OptionError(f"{type(projection).__name__} has no project_latent(x) method: the generator route "
                              "needs the latent z* the projection finds (use route='bpda' for other projections)")
        if mode not in GENERATOR_MODES:
            raise unknown_name("generator mode", mode, GENERATOR_MODES)
        check_iterations(steps, "steps")
        if step_size is not None:
            check_positive(step_size, "step_size")
        check_positive(ridge, "ridge")
        super().__init__(getattr(projection, "bounds", (0.0, 1.0)))
        self.projection = projection
        self.generator = _generator_of(projection, generator)
        self.mode, self.steps, self.step_size, self.ridge = mode, int(steps), step_size, float(ridge)
        self.randomized = bool(getattr(projection, "randomized", False))

    def _jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """``J`` per sample, ``(N, D, d_z)``: one forward-mode pass per latent dimension (samples independent)."""
        cols = []
        for i in range(z.shape[1]):
            e = torch.zeros_like(z)
            e[:, i] = 1.0
            _, col = torch.func.jvp(self.generator, (z,), (e,))
            cols.append(col.flatten(1))
        return torch.stack(cols, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.projection.project_latent(x.detach())
            value = self.generator(z)
            if value.numel() == x.numel():
                value = value.view_as(x)
        if value.shape != x.shape:
            raise ModelError(f"the generative projection returns shape {tuple(value.shape)} for inputs of shape "
                             f"{tuple(x.shape)}; a projection must keep the shape")
        if not (torch.is_grad_enabled() and x.requires_grad):
            return value
        z = z.detach()
        if self.mode == "implicit":
            with torch.no_grad():
                jac = self._jacobian(z)                                       # (N, D, dz)
                gram = jac.transpose(1, 2) @ jac                              # (N, dz, dz)
                mu = self.ridge * gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
                eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
                inv = torch.linalg.solve(gram + mu[:, None, None] * eye, jac.transpose(1, 2))  # (N, dz, D)
            path = (jac @ (inv @ x.flatten(1)[:, :, None]))[:, :, 0].view_as(x)
            return _ValueOf.apply(path, value)
        zt = z.clone().requires_grad_(True)
        alpha = self.step_size
        if alpha is None:
            with torch.no_grad():
                jac = self._jacobian(z)
                alpha = float(1.0 / (2.0 * jac.pow(2).sum((1, 2)).mean() / z.shape[1]).clamp_min(1e-12))
        with torch.enable_grad():
            for _ in range(self.steps):
                res = (self.generator(zt) - x).flatten(1).pow(2).sum()
                (gz,) = torch.autograd.grad(res, zt, create_graph=True)
                zt = zt - alpha * gz
            path = self.generator(zt).view_as(x)
        return _ValueOf.apply(path, value)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, steps={self.steps}, ridge={self.ridge}"


class _DetectorAware(Defended):
    """A :class:`Defended` whose reject logit is the combined logit ``max_k z_k + w·(s − τ)`` with the
    detector's gradient (Carlini & Wagner, AISec 2017): same decisions as the real model, a gradient that
    attacks the detector too."""

    def __init__(self, classifier, projection, detector, weight: float):
        super().__init__(classifier, projection, detector, "abstain")
        self.weight = float(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.class_logits(x)
        self.reject_class = int(z.shape[1])
        if self.detector.threshold is None:
            raise ModelError("the defended model's detector has no threshold yet: call "
                             "detector.fit_threshold(x_clean, fpr=...) first")
        s = self.detector.score(x)
        if not isinstance(s, torch.Tensor) or s.shape != (x.shape[0],):
            raise ModelError(f"{type(self.detector).__name__}.score must return one score per input, shape "
                             f"({x.shape[0]},)")
        r = z.amax(1) + self.weight * (s.to(z.dtype) - self.detector.threshold)
        return torch.cat([z, r[:, None]], 1)


def _check_defended(defended) -> Defended:
    if not isinstance(defended, Defended):
        raise OptionError(f"adaptive attacks take a georobust.defenses.Defended model, got {type(defended).__name__};"
                          " wrap the classifier: Defended(clf, projection=..., detector=...)")
    real = defended.__dict__.get("real")
    if real is not None:
        raise OptionError("this model is already an adaptive surrogate; give the real defended model")
    return defended


def detector_weight(defended: Defended, x_clean: torch.Tensor, batch_size: int = 256) -> float:
    """The automatic scale ``w`` of the combined reject logit: one standard deviation of the detector's scores
    on ``x_clean`` counts as one logit (``1.0`` without a detector or when the scores do not vary)."""
    det = defended.detector
    if det is None:
        return 1.0
    with torch.no_grad():
        s = torch.cat([det.score(x_clean[i:i + batch_size]) for i in range(0, x_clean.shape[0], batch_size)])
    sd = float(s.double().std()) if s.numel() > 1 else 0.0
    return 1.0 / sd if math.isfinite(sd) and sd > 0 else 1.0


def adaptive_model(defended: Defended, *, route: str = "auto", eot: int | None = None,
                   detector_aware: bool | None = None, weight: float | None = None,
                   x_clean: torch.Tensor | None = None, generator: nn.Module | None = None,
                   generator_mode: str = "implicit") -> Defended:
    """The differentiable surrogate an adaptive attack runs on, chosen from what the defence declares.

    ``route`` through the projection: ``"auto"`` — :class:`GeneratorRoute` when the projection has
    ``project_latent`` (a generative projection), :class:`BPDA` (identity backward) when it is not
    ``differentiable``, autograd otherwise; or ``"none"``, ``"bpda"``, ``"generator"`` explicitly.
    ``eot``: draws averaged (:class:`EOT`), default :data:`DEFAULT_EOT` for a ``randomized`` projection, else 1.
    ``detector_aware`` (default: whenever the model rejects): the reject logit becomes the combined logit
    ``max_k z_k + w·(s − τ)`` carrying the detector's gradient; ``w`` = ``weight``, or from ``x_clean``
    (:func:`detector_weight`), or 1.

    Returns a :class:`Defended` with the same classifier, detector and reject rule, whose ``real`` attribute is
    ``defended`` (so its ``verify`` verifies against the real model). Its decisions are the real model's for a
    deterministic defence. Run any gradient attack on it; with a detector, untargeted attacks may stop at a
    rejected iterate (the verified result does not count it) — use them targeted, or :func:`adaptive_pgd`.
    """
    defended = _check_defended(defended)
    if route not in ROUTES:
        raise unknown_name("route", route, ROUTES)
    if generator_mode not in GENERATOR_MODES:
        raise unknown_name("generator mode", generator_mode, GENERATOR_MODES)
    proj = defended.projection
    if route == "auto":
        if proj is None:
            route = "none"
        elif callable(getattr(proj, "project_latent", None)):
            route = "generator"
        else:
            route = "none" if proj.differentiable else "bpda"
    if proj is None and route != "none":
        raise OptionError(f"route={route!r} needs a projection; this defended model has none")
    if route == "bpda":
        proj = BPDA(proj)
    elif route == "generator":
        proj = GeneratorRoute(proj, generator, mode=generator_mode)
    randomized = bool(getattr(defended.projection, "randomized", False))
    if eot is None:
        eot = DEFAULT_EOT if randomized else 1
    check_iterations(eot, "eot")
    if detector_aware is None:
        detector_aware = defended.rejects
    if not isinstance(detector_aware, bool):
        raise OptionError(f"detector_aware must be True or False, got {detector_aware!r}")
    if detector_aware and not defended.rejects:
        raise OptionError("detector_aware=True needs a detector and reject='abstain' on the defended model")
    if weight is None:
        weight = detector_weight(defended, check_x(x_clean, defended.bounds, name="x_clean")) \
            if (detector_aware and x_clean is not None) else 1.0
    else:
        check_positive(weight, "weight")
    if detector_aware:
        sur = _DetectorAware(defended.classifier, proj, defended.detector, weight)
    else:
        sur = Defended(defended.classifier, proj, defended.detector, defended.reject)
    if eot > 1:
        sur.module = EOT(sur.module, eot)
    sur.name = f"adaptive-{defended.name}"
    sur.route, sur.eot, sur.detector_aware = route, int(eot), detector_aware
    object.__setattr__(sur, "real", defended)
    return sur


def _penalised_loss(base: str, penalty: float, reject: int | None):
    def loss(logits, y, target):
        z = logits if reject is None else logits[:, :reject]
        ell = margin_loss(z, y) if base == "cw" else F.cross_entropy(z, y, reduction="none")
        if reject is not None and penalty > 0:  # once misclassified: − penalty·w·max(s − τ, 0)
            pen = torch.relu(logits[:, reject] - z.amax(1))
            ell = ell - penalty * torch.where(z.argmax(1) != y, pen, torch.zeros_like(pen))
        return ell
    return loss


def _judge(loss, reject: int | None):
    def judge(logits, y, target):
        lab = logits.argmax(1)
        ok = lab != y
        if reject is not None:
            ok = ok & (lab != reject)
        return ok, loss(logits, y, target)
    return judge


def adaptive_pgd(defended: Defended, x, y=None, *, eps: float, norm="inf", steps: int = 40,
                 step_size: float | None = None, restarts: int = 1, loss: str = "cw",
                 penalty: float = DEFAULT_PENALTY, seed: int | None = 0, surrogate: Defended | None = None,
                 batch_size: int = 256, **surrogate_options) -> AttackResult:
    """Untargeted PGD (Madry et al., ICLR 2018) adapted to a defence, verified against the whole real model.

    Runs on ``surrogate`` (default :func:`adaptive_model` ``(defended, x_clean=x, **surrogate_options)``: BPDA /
    generator route / EOT / detector-aware as the defence requires). The ascended loss is the C&W margin
    (``loss="cw"``) or cross-entropy (``"ce"``) on the class logits, minus ``penalty·w·max(s − τ, 0)`` when the
    model rejects (Carlini & Wagner's detector penalty; ``w·(s − τ)`` is read off the surrogate's combined reject
    logit). Each sample keeps its first iterate that the surrogate misclassifies and does not reject (early
    stop), else its highest-loss iterate; the result is built by re-running the *real* defended model
    (:func:`~georobust.results.make_result`): success = misclassified and not rejected.
    Samples the real model already gets wrong (or rejects) are not attacked. ``step_size`` defaults to
    ``2.5·eps/steps``; ``seed`` fixes the random start.
    """
    defended = _check_defended(defended)
    norm = check_norm(norm)
    check_positive(eps, "eps", allow_zero=True)
    check_iterations(steps, "steps")
    check_iterations(restarts, "restarts")
    check_positive(batch_size, "batch_size", integer=True)
    if loss not in ("cw", "ce"):
        raise unknown_name("loss", loss, ("cw", "ce"))
    check_positive(penalty, "penalty", allow_zero=True)
    step_size = 2.5 * float(eps) / steps if step_size is None else step_size
    check_positive(step_size, "step_size", allow_zero=True)
    p = prepare(defended, x, y)
    sur = surrogate if surrogate is not None else adaptive_model(defended, x_clean=p.x, **surrogate_options)
    if not isinstance(sur, Defended) or sur.__dict__.get("real") is not defended:
        raise OptionError("surrogate must be adaptive_model(defended, ...) of this defended model")
    reject = p.num_classes - 1 if defended.rejects else None
    fn = _penalised_loss(loss, float(penalty), reject)
    track = WorstCase(p.x, judge=_judge(fn, reject))
    gen = ops.make_generator(p.x.device, seed)
    eps, step_size = float(eps), float(step_size)
    todo = (p.pred == p.y).nonzero().squeeze(1)
    if eps > 0:
        for first in range(0, todo.numel(), batch_size):
            chunk = todo[first:first + batch_size]
            for _ in range(restarts):
                pos = chunk[~track.success[chunk]]
                if pos.numel() == 0:
                    break
                x0 = p.x[pos]
                start = (x0 + ops.random_start(x0, eps, norm, gen)).clamp(*p.clf.bounds)
                pgd_kernel(sur, x0, p.y[pos], eps=eps, norm=norm, steps=steps, step_size=step_size,
                           bounds=p.clf.bounds, loss=fn, start=start, tracker=track, index=pos)
    params = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "restarts": restarts,
              "loss": loss, "penalty": float(penalty), "route": getattr(sur, "route", None),
              "eot": getattr(sur, "eot", None), "detector_aware": getattr(sur, "detector_aware", None)}
    return make_result("adaptive-pgd", p.clf, p.x, track.best_x, p.y, p.pred, iterations=track.iterations,
                       params=params, threat="bounded-lp")


def vanished_gradients(model, x: torch.Tensor, y: torch.Tensor, losses=("ce", "cw"),
                       batch_size: int = 256) -> torch.Tensor:
    """``(N,)`` bool: inputs whose input gradient has vanished on ``model`` for *every* loss of ``losses``
    (``"ce"``, ``"cw"``, ``"dlr"``) — not finite, or ``‖g‖₁·(hi − lo) <= eps_dtype·max(|L|, 1)``: a step across
    the whole box would change the loss by less than its round-off. The criterion of the ``gradients`` alarm
    (:mod:`georobust.evaluation.alarms`), where the cross-entropy alone also vanishes on confidently classified
    inputs (a saturated softmax) while the margin still moves them: masking is when no loss gives a direction."""
    lo, hi = model.bounds
    losses = (losses,) if isinstance(losses, str) else tuple(losses)
    out = []
    for i in range(0, x.shape[0], batch_size):
        bad = torch.ones(x[i:i + batch_size].shape[0], dtype=torch.bool, device=x.device)
        for loss in losses:
            g, ell, _ = loss_grad(model, x[i:i + batch_size], y[i:i + batch_size], None, loss)
            g = g.flatten(1).double()
            finite = torch.isfinite(g).all(1) & torch.isfinite(ell)
            g1 = g.abs().sum(1).nan_to_num(nan=math.inf)
            tiny = g1 * (hi - lo) <= torch.finfo(x.dtype).eps * ell.double().abs().clamp_min(1.0)
            bad &= ~finite | tiny
        out.append(bad)
    return torch.cat(out)


def detection_metrics(detector: Detector, x_clean: torch.Tensor, x_adv: torch.Tensor,
                      batch_size: int = 256) -> dict[str, float]:
    """Detection of ``x_adv`` against ``x_clean`` by a fitted ``detector``: ``tpr`` (fraction of ``x_adv``
    flagged at the detector's threshold), ``fpr`` (fraction of ``x_clean`` flagged) and ``auc`` (the
    probability that an adversarial input scores above a clean one, ties counting one half: the Mann–Whitney
    statistic), with the counts."""
    if detector.threshold is None:
        raise ModelError(f"{type(detector).__name__} has no threshold yet: call fit_threshold(x_clean, fpr=...)")
    if x_clean.shape[0] == 0 or x_adv.shape[0] == 0:
        raise InputError("detection_metrics needs at least one clean and one adversarial input")

    def scores(v):
        with torch.no_grad():
            return torch.cat([detector.score(v[i:i + batch_size]) for i in range(0, v.shape[0], batch_size)]
                             ).double().cpu()
    sc, sa = scores(x_clean), scores(x_adv)
    return {"tpr": float((sa > detector.threshold).double().mean()),
            "fpr": float((sc > detector.threshold).double().mean()),
            "auc": auc(sc, sa), "n_clean": int(sc.numel()), "n_adv": int(sa.numel())}


def auc(clean_scores: torch.Tensor, adv_scores: torch.Tensor) -> float:
    """Area under the ROC curve of ``adv_scores`` vs ``clean_scores`` (higher = adversarial): the fraction of
    (adversarial, clean) pairs ordered right, ties counting one half."""
    sc = clean_scores.double().flatten().sort().values
    sa = adv_scores.double().flatten()
    below = torch.searchsorted(sc, sa, right=False).double()     # clean scores strictly below
    equal = torch.searchsorted(sc, sa, right=True).double() - below
    return float((below + 0.5 * equal).sum() / (sc.numel() * sa.numel()))


@dataclass
class AdaptiveEvaluation:
    """What :func:`adaptive_evaluation` measured; every robust accuracy is verified against the whole real
    defended model (correct, and the adversarial input either still correct or rejected)."""

    n: int
    eps: float
    norm: str
    clean_accuracy: float
    #: fraction of the clean inputs the detector flags (0 without a detector)
    clean_rejected: float
    #: robust accuracy per attack: ``pgd`` (non-adaptive, on the real model), ``adaptive-pgd``, ``spsa``
    robust: dict[str, float]
    #: the per-sample worst case over every attack run (an input any of them breaks is broken): the number to
    #: report
    robust_adaptive: float
    #: per attack: the fraction of the attacked inputs (clean-correct) whose adversarial example is rejected
    detected: dict[str, float]
    #: per attack: the fraction of clean inputs whose loss gradient vanished on the model it attacked
    masking: dict[str, float]
    #: whether the non-adaptive number is masked (more than MASKING_FRACTION vanished gradients)
    masked: bool
    surrogate: dict[str, Any]
    verdict: str
    results: dict[str, AttackResult] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("n", "eps", "norm", "clean_accuracy", "clean_rejected", "robust",
                                           "robust_adaptive", "detected", "masking", "masked", "surrogate",
                                           "verdict")}
        return d


def _robust(res: AttackResult, y: torch.Tensor) -> torch.Tensor:
    return (res.label_clean == y) & ~res.success


def adaptive_evaluation(defended: Defended, x, y, eps: float, *, norm="inf", steps: int = 40, restarts: int = 1,
                        eot: int | None = None, route: str = "auto", penalty: float = DEFAULT_PENALTY,
                        spsa: bool = True, spsa_steps: int = 40, spsa_samples: int = 64, spsa_lr: float = 0.01,
                        seed: int = 0, batch_size: int = 128) -> AdaptiveEvaluation:
    """Evaluate a defended model honestly: non-adaptive PGD, adaptive PGD, SPSA, all verified on the real model.

    1. ``pgd``: :func:`georobust.pgd` on the real defended model as it is (what a non-adaptive evaluation
       reports; a quantiser's zero gradient leaves its iterates at the random start).
    2. ``adaptive-pgd``: :func:`adaptive_pgd` on :func:`adaptive_model` ``(defended, route=route, eot=eot)`` —
       BPDA / generator route / EOT / detector-aware as the defence declares.
    3. ``spsa`` (``spsa=True``): :func:`georobust.spsa` (gradient-free) on the classifier behind the projection,
       the detector not rejecting (``reject="ignore"``: SPSA's untargeted margin would otherwise walk into the
       reject class), re-verified against the whole real model like every other result.

    Masking: the fraction of clean-correct inputs whose input gradients of both the cross-entropy and the C&W
    margin vanished (:func:`vanished_gradients`)
    on the real model (``pgd``) and on the surrogate (``adaptive-pgd``); ``masked`` when the real model's exceeds
    :data:`MASKING_FRACTION`, and the verdict then says the non-adaptive number is no robustness claim.
    """
    from ..attacks.pgd import pgd as _pgd_attack
    from ..attacks.spsa import spsa as _spsa_attack

    defended = _check_defended(defended)
    norm = check_norm(norm)
    check_positive(eps, "eps")
    if not isinstance(spsa, bool):
        raise OptionError(f"spsa must be True or False, got {spsa!r}")
    check_iterations(spsa_steps, "spsa_steps")
    if route not in ROUTES:
        raise unknown_name("route", route, ROUTES)
    if eot is not None:
        check_iterations(eot, "eot")
    check_positive(penalty, "penalty", allow_zero=True)
    p = prepare(defended, x, y, labels_required=True)
    x, y = p.x, p.y
    sur = adaptive_model(defended, route=route, eot=eot, x_clean=x)
    results: dict[str, AttackResult] = {}
    results["pgd"] = defended.verify(_pgd_attack(defended, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts,
                                                 seed=seed, batch_size=batch_size))
    results["adaptive-pgd"] = adaptive_pgd(defended, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts,
                                           penalty=penalty, seed=seed, surrogate=sur, batch_size=batch_size)
    if spsa:
        open_model = Defended(defended.classifier, defended.projection, defended.detector, "ignore") \
            if defended.detector is not None else defended
        res = _spsa_attack(open_model, x, y, eps=eps, norm=norm, steps=spsa_steps, samples=spsa_samples,
                           lr=spsa_lr, seed=seed, batch_size=batch_size)
        results["spsa"] = defended.verify(res)
    correct = p.pred == y
    n_correct = max(int(correct.sum()), 1)
    robust = {k: float(_robust(r, y).double().mean()) for k, r in results.items()}
    worst = torch.ones_like(correct)
    for r in results.values():
        worst &= _robust(r, y)
    detected = {}
    reject = p.num_classes - 1 if defended.rejects else None
    for k, r in results.items():
        detected[k] = 0.0 if reject is None else float(((r.label_adv == reject) & correct).sum()) / n_correct
    yy = y[correct]
    xx = x[correct]
    masking = {"pgd": float(vanished_gradients(defended, xx, yy).double().mean()) if yy.numel() else 0.0,
               "adaptive-pgd": float(vanished_gradients(sur, xx, yy).double().mean()) if yy.numel() else 0.0}
    masked = masking["pgd"] > MASKING_FRACTION
    clean_rej = 0.0 if reject is None else float((p.pred == reject).double().mean())
    ra = float(worst.double().mean())
    gap = robust["pgd"] - ra
    if masked:
        verdict = (f"gradient masking: the loss gradient vanished on {masking['pgd']:.0%} of the inputs of the real "
                   f"model, so the non-adaptive robust accuracy {robust['pgd']:.3f} is no robustness claim; "
                   f"adaptive attacks leave {ra:.3f}")
    elif gap > MASKING_FRACTION:
        verdict = (f"the adaptive attacks break {gap:.3f} more than non-adaptive PGD ({robust['pgd']:.3f} -> "
                   f"{ra:.3f}): the non-adaptive number overstates the robustness")
    else:
        verdict = f"adaptive and non-adaptive attacks agree within {MASKING_FRACTION:.0%}: robust accuracy {ra:.3f}"
    log.info("adaptive evaluation of %s at eps=%g (%s): %s", defended.name, eps, norm, verdict)
    return AdaptiveEvaluation(
        n=p.n, eps=float(eps), norm=norm, clean_accuracy=float(correct.double().mean()), clean_rejected=clean_rej,
        robust=robust, robust_adaptive=ra, detected=detected, masking=masking, masked=masked,
        surrogate={"route": sur.route, "eot": sur.eot, "detector_aware": sur.detector_aware,
                   "weight": getattr(sur, "weight", None), "penalty": float(penalty)},
        verdict=verdict, results=results)
