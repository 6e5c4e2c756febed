"""The defended-model interface: detectors, input transformations, the model composing them around a
classifier, and the hooks adaptive attacks need (BPDA, EOT).

A defence that is not a training objective changes what the *deployed* model computes. Three pieces:

:class:`Detector`
    Scores each input (higher = more suspicious) and flags those above a threshold fitted on clean data at
    a chosen false-positive rate (:meth:`Detector.fit_threshold`; the quantile rule is in its docstring).
:class:`Projection`
    An input transformation ``x -> x'`` that stays in the input box (denoisers, quantisers, random
    resizing). It declares whether it is ``differentiable`` and whether it is ``randomized``: exactly what an
    adaptive attack must know about it. Toy members: :class:`Quantize` (not differentiable) and
    :class:`RandomNoise` (randomized); the real ones build on this class.
:class:`Defended`
    ``Defended(classifier, projection=None, detector=None, reject="abstain")``: a
    :class:`~georobust.Classifier` (same ``bounds``, ``input_shape``, mode), so every attack, geometry tool and
    metric accepts it as a model. Its forward is ``classifier(projection(x))``; with a detector and
    ``reject="abstain"`` it returns one more logit, the *reject class* ``K`` (:attr:`Defended.reject_class`),
    which is the arg-max exactly for the inputs the detector flags.

**How success is judged on a defended model.** A detected adversarial example is a *failure* of the attack:
the defence abstained instead of being fooled. Its prediction (the reject class) differs from ``y``, so a
naive untargeted criterion (``label_adv != y``) would count it a success; georobust does not. Every
:class:`~georobust.AttackResult` is verified by re-running the model it was made with
(:func:`~georobust.results.make_result`), and verification reads the model's ``reject_class``: an input whose
prediction is the reject class is never a success (untargeted or targeted). A clean input the detector flags
(a false positive) has the reject class as its clean prediction. With labels given it is reported
unperturbed, not fooled, and not clean-correct (so not robust: robust accuracy counts inputs classified right
*and* not fooled). Without labels (``y`` = the clean prediction = the reject class) it is not fooled either
(there is no class to move it away from), and by that convention counts as clean-correct: give labels to
charge false positives.
An attack's own bookkeeping (e.g. PGD's early stop) may still take a rejected iterate for a success; the
verified result does not.

**Adaptive attacks** (Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security:
circumventing defenses to adversarial examples", ICML 2018). A quantiser has a zero gradient almost
everywhere and a randomized transformation a noisy one, so a gradient attack run on the defended model
itself under-reports its weakness. :meth:`Defended.adaptive` returns the differentiable *surrogate* attacks
should be run on: each non-differentiable projection wrapped in :class:`BPDA` (forward through the real
transformation, backward through a substitute, the identity by default) and, with ``eot=k``, the
classifier-after-projection averaged over ``k`` draws of the projection's randomness (:class:`EOT`;
Athalye, Engstrom, Ilyas & Kwok, "Synthesizing robust adversarial examples", ICML 2018). The surrogate is
itself a :class:`Defended` (same detector, same reject class), so an attack on it returns a verified result;
for a deterministic defence its predictions are the real ones exactly (BPDA's forward is the real
transformation). :meth:`Defended.verify` re-verifies any result against the *whole real* defended model —
the answer to report, and the only one for a randomized defence (one draw of its randomness per input).

Example::

    defended = Defended(clf, projection=Quantize(8), detector=my_detector.fit_threshold(x_clean, fpr=0.05))
    res = defended.verify(georobust.pgd(defended.adaptive(eot=1), x, y, eps=0.1))
    res.success_rate          # detected or still-correct inputs are not successes

The detector sees the input as given (before the projection). Detectors with a gradient can be attacked
jointly with the classifier (Carlini & Wagner, "Adversarial examples are not easily detected", AISec 2017);
the surrogate keeps the detector's decision but not its gradient (the reject logit follows the class
logits), so an attack on it is detector-oblivious and its detected outputs are simply not counted.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import replace

import torch
from torch import nn

from ..checks import check_iterations, check_positive, check_x
from ..errors import InputError, ModelError, OptionError, unknown_name
from ..models.classifier import Classifier, as_classifier
from ..results import AttackResult, make_result

log = logging.getLogger(__name__)

#: values of ``Defended(reject=...)``: ``"abstain"`` (a flagged input is predicted as the reject class, which
#: never counts as fooled) or ``"ignore"`` (the detector is attached for :meth:`Defended.accepts` only and does
#: not change the predictions)
REJECT = ("abstain", "ignore")

#: the logit of the reject class is this far above the best class logit on a flagged input, and this far below
#: the worst one on an accepted input, so the arg-max is the detector's decision with no tie
REJECT_MARGIN = 1.0

_ANY_BOUNDS = (-math.inf, math.inf)


def _check_scores(s, n: int, who: str) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or s.shape != (n,):
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ModelError(f"{who}.score must return one score per input, shape ({n},); it returned {shape}")
    if not torch.isfinite(s).all():
        raise ModelError(f"{who}.score returned NaN or inf scores")
    return s


class Detector(nn.Module, abc.ABC):
    """An adversarial-example detector: one suspicion score per input, and a threshold.

    Subclasses implement :meth:`score` ``(N, ...) -> (N,)`` (higher = more suspicious). The threshold is set by
    :meth:`fit_threshold` from clean data at a false-positive rate; :meth:`detect` flags inputs whose score is
    strictly above it and refuses to run before a threshold is fitted (or assigned to ``threshold``).

    A detector starts in eval mode (a detector scores; it is not trained by the attacks). Layers a subclass
    creates after ``super().__init__()`` start in training mode as in torch: call ``.eval()``; an attack refuses
    a model with any module in training mode.
    """

    def __init__(self):
        super().__init__()
        self.training = False
        #: flags inputs with ``score > threshold``; ``None`` until fitted
        self.threshold: float | None = None
        #: the false-positive rate the threshold was fitted at (``None``: not fitted, or assigned by hand)
        self.fpr: float | None = None

    @abc.abstractmethod
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Suspicion score per input, ``(N,)``; higher = more likely adversarial."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)

    def _scores(self, x, name: str) -> torch.Tensor:
        x = check_x(x, _ANY_BOUNDS, name=name)
        with torch.no_grad():
            return _check_scores(self.score(x), x.shape[0], type(self).__name__)

    def fit_threshold(self, x_clean: torch.Tensor, fpr: float = 0.05) -> Detector:
        """Set :attr:`threshold` so that a fraction ``fpr`` of clean inputs is flagged; return ``self``.

        Quantile rule: with the ``n`` clean scores sorted, ``s_(1) <= … <= s_(n)``, the threshold is the order
        statistic ``s_(k)``, ``k = ⌈(1 − fpr)·n⌉`` (the empirical ``1 − fpr`` quantile, no interpolation), and an
        input is flagged when its score is *strictly* above it. So at most ``fpr·n`` of the fitting scores are
        flagged, and, without ties, at least ``fpr·n − 1``; on fresh clean data drawn like them the rate is
        ``fpr`` up to the sampling error of the quantile (about ``sqrt(fpr·(1 − fpr)/n)``). ``fpr`` must lie in
        ``(0, 1)`` and ``fpr·n >= 1`` (fewer clean samples cannot resolve that rate).
        """
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 < float(fpr) < 1.0:
            raise OptionError(f"fpr is a false-positive rate and must lie strictly between 0 and 1, got {fpr!r}")
        s = self._scores(x_clean, "x_clean").double()
        n, fpr = s.shape[0], float(fpr)
        if fpr * n < 1 - 1e-9:
            raise InputError(f"fpr={fpr:g} on {n} clean sample(s) flags fewer than one of them; give at least "
                             f"{math.ceil(1 / fpr - 1e-9)} clean samples or a larger fpr")
        k = min(n, max(1, math.ceil(round((1.0 - fpr) * n, 9))))
        self.threshold = float(s.sort().values[k - 1])
        self.fpr = fpr
        log.info("%s: threshold %.6g flags %d of %d clean inputs (fpr %.3g)", type(self).__name__, self.threshold,
                 int((s > self.threshold).sum()), n, fpr)
        return self

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: which inputs are flagged (``score > threshold``)."""
        if self.threshold is None:
            raise ModelError(f"{type(self).__name__} has no threshold yet: call fit_threshold(x_clean, fpr=...) "
                             "first (or set .threshold)")
        return self._scores(x, "x") > self.threshold

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, fpr={self.fpr}"


class Projection(nn.Module, abc.ABC):
    """An input transformation ``x -> x'`` that keeps inputs in the box ``bounds`` (a "projection" onto what
    the defence considers natural inputs: a denoiser, a quantiser, a random resize-and-pad).

    Class attributes an adaptive attack reads: ``differentiable`` — whether autograd through :meth:`forward`
    gives a useful gradient (``False``: :meth:`Defended.adaptive` wraps it in :class:`BPDA`); ``randomized`` —
    whether two calls on the same input differ (``True``: average over draws with :class:`EOT`). Like a
    :class:`Detector`, a projection starts in eval mode.
    """

    differentiable: bool = True
    randomized: bool = False

    def __init__(self, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.training = False
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise OptionError(f"bounds must satisfy low < high, got {bounds!r}")
        self.bounds = (lo, hi)

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed inputs, same shape, inside :attr:`bounds`."""


class Quantize(Projection):
    """Round every input value to one of ``levels`` evenly spaced grey levels of the box (bit-depth reduction,
    Xu, Evans & Qi, "Feature squeezing", NDSS 2018): ``lo + round((x − lo)/(hi − lo)·(L − 1))·(hi − lo)/(L − 1)``.

    Piecewise constant: its gradient is zero almost everywhere (``differentiable = False``), the textbook
    obfuscated gradient that BPDA circumvents."""

    differentiable = False

    def __init__(self, levels: int = 8, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds)
        check_positive(levels, "levels", integer=True)
        if levels < 2:
            raise OptionError(f"levels must be an integer >= 2 (grey levels kept), got {levels}")
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        step = (hi - lo) / (self.levels - 1)
        return (torch.round((x - lo) / step) * step + lo).clamp(lo, hi)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, bounds={self.bounds}"


class RandomNoise(Projection):
    """Add Gaussian noise of standard deviation ``sigma`` and clip to the box (the randomized toy transformation;
    randomized smoothing's noise, Cohen, Rosenfeld & Kolter, ICML 2019, used here as a defence's randomness).

    ``generator``: the source of the noise (default torch's global generator, so ``torch.manual_seed`` fixes it).
    """

    randomized = True

    def __init__(self, sigma: float = 0.1, bounds: tuple[float, float] = (0.0, 1.0), *,
                 generator: torch.Generator | None = None):
        super().__init__(bounds)
        check_positive(sigma, "sigma")
        self.sigma = float(sigma)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(*self.bounds)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, bounds={self.bounds}"


class _ValueOf(torch.autograd.Function):
    """``out`` has the value of ``value`` and the gradient of ``grad_path``: the backward pass hands the incoming
    gradient to ``grad_path`` unchanged (exact: no ``s + (t − s).detach()`` round-off in the forward value)."""

    @staticmethod
    def forward(ctx, grad_path: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class BPDA(Projection):
    """Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, ICML 2018, section 4.1).

    ``BPDA(transform, substitute=None)``: the forward pass is the real ``transform`` (bit for bit); the backward
    pass is that of ``substitute`` (a differentiable module with ``substitute(x) ≈ transform(x)``), the identity
    by default — the paper's choice for transformations that approximately preserve the input. The gradient of
    ``L(BPDA(x))`` is therefore ``J_substitute(x)ᵀ ∇L(transform(x))``: the loss's gradient at the real
    transformed point, carried back through the substitute.
    """

    differentiable = True

    def __init__(self, transform: nn.Module, substitute: nn.Module | None = None):
        if not isinstance(transform, nn.Module):
            raise OptionError(f"BPDA wraps an nn.Module transformation, got {type(transform).__name__}")
        if substitute is not None and not isinstance(substitute, nn.Module):
            raise OptionError(f"the BPDA substitute must be an nn.Module (default: identity), got "
                              f"{type(substitute).__name__}")
        super().__init__(getattr(transform, "bounds", (0.0, 1.0)))
        self.transform = transform
        self.substitute = substitute if substitute is not None else nn.Identity().eval()
        self.randomized = bool(getattr(transform, "randomized", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            value = self.transform(x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return value
        path = self.substitute(x)
        if path.shape != value.shape:
            raise ModelError(f"BPDA: the substitute returns shape {tuple(path.shape)} but the transformation "
                             f"{tuple(value.shape)}; they must agree")
        return _ValueOf.apply(path, value)


class EOT(nn.Module):
    """Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok, ICML 2018): ``EOT(module, samples=k)``
    returns the mean of ``k`` calls of a randomized ``module`` (its logits), so that its gradient is the mean of
    ``k`` draws' gradients — an estimate of the gradient of the expected logits whose variance falls like
    ``1/k``. ``samples=1`` is ``module`` itself."""

    def __init__(self, module: nn.Module, samples: int = 1):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise OptionError(f"EOT averages an nn.Module, got {type(module).__name__}")
        check_iterations(samples, "samples")
        self.module = module
        self.samples = samples
        self.training = module.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        for _ in range(self.samples - 1):
            out = out + self.module(x)
        return out if self.samples == 1 else out / self.samples

    def extra_repr(self) -> str:
        return f"samples={self.samples}"


class _Chain(nn.Module):
    """``classifier(projection(x))``."""

    def __init__(self, projection: nn.Module, classifier: nn.Module):
        super().__init__()
        self.projection = projection
        self.classifier = classifier
        self.training = classifier.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = self.projection(x)
        if not isinstance(xp, torch.Tensor) or xp.shape != x.shape:
            got = tuple(xp.shape) if isinstance(xp, torch.Tensor) else type(xp).__name__
            raise ModelError(f"the projection {type(self.projection).__name__} returned {got} for inputs of shape "
                             f"{tuple(x.shape)}; a projection must return a tensor of its input's shape")
        return self.classifier(xp)


class Defended(Classifier):
    """A classifier behind a defence: ``Defended(classifier, projection=None, detector=None, reject="abstain")``.

    A :class:`~georobust.Classifier` with the classifier's ``bounds``, ``input_shape`` and mode (so every
    attack accepts it as a model: ``georobust.pgd(defended, x, y, eps=...)``). Forward:
    ``z = classifier(projection(x))``, logits ``(N, K)``. With a ``detector`` and ``reject="abstain"`` one more
    logit is appended, the reject class ``K``: ``max_k z_k + REJECT_MARGIN`` on the inputs the detector flags,
    ``min_k z_k − REJECT_MARGIN`` on the others, so the prediction is the reject class exactly on flagged
    inputs. Results verified against this model never count a rejected input as a success (module docstring).
    ``reject="ignore"`` keeps the detector for :meth:`accepts` only (K logits, predictions unchanged).

    Args:
        classifier: an ``nn.Module`` returning logits (wrapped by :func:`~georobust.models.as_classifier`).
        projection: a :class:`Projection` applied to every input first (``None``: none).
        detector: a :class:`Detector` with a fitted threshold, looking at the input as given (``None``: none).
        reject: ``"abstain"`` or ``"ignore"`` (:data:`REJECT`).
    """

    def __init__(self, classifier: nn.Module, projection: Projection | None = None, detector: Detector | None = None,
                 reject: str = "abstain"):
        if reject not in REJECT:
            raise unknown_name("reject option", reject, REJECT)
        if projection is not None and not isinstance(projection, Projection):
            raise OptionError(f"projection must be a georobust.defenses.Projection (it declares whether it is "
                              f"differentiable and randomized), got {type(projection).__name__}; subclass "
                              "Projection")
        if detector is not None and not isinstance(detector, Detector):
            raise OptionError(f"detector must be a georobust.defenses.Detector, got {type(detector).__name__}")
        clf = as_classifier(classifier)
        if projection is not None and projection.bounds != clf.bounds:
            raise OptionError(f"the projection keeps inputs in {projection.bounds} but the classifier's bounds are "
                              f"{clf.bounds}; give the projection bounds={clf.bounds}")
        body = clf if projection is None else _Chain(projection, clf)
        super().__init__(body, bounds=clf.bounds, name=f"defended-{clf.name}", input_shape=clf.input_shape)
        self.training = clf.training
        self.classifier = clf
        self.projection = projection
        self.detector = detector
        self.reject = reject
        #: index of the reject class (``K``, the classifier's number of logits), known after the first forward
        #: pass; ``None`` when no input can be rejected (no detector, or ``reject="ignore"``)
        self.reject_class: int | None = None

    @property
    def rejects(self) -> bool:
        """Whether flagged inputs are predicted as the reject class."""
        return self.detector is not None and self.reject == "abstain"

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits ``(N, K)`` after the projection (no reject class)."""
        return self.module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.class_logits(x)
        if not self.rejects:
            return z
        self.reject_class = int(z.shape[1])
        flagged = self._flagged(x)
        top, bottom = z.amax(1), z.amin(1)
        rej = torch.where(flagged, top + REJECT_MARGIN, bottom - REJECT_MARGIN)
        return torch.cat([z, rej[:, None]], 1)

    def _flagged(self, x: torch.Tensor) -> torch.Tensor:
        if self.detector.threshold is None:
            raise ModelError("the defended model's detector has no threshold yet: call "
                             "detector.fit_threshold(x_clean, fpr=...) first")
        with torch.no_grad():
            s = _check_scores(self.detector.score(x.detach()), x.shape[0], type(self.detector).__name__)
        return s > self.detector.threshold

    def accepts(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: the inputs the detector lets through (all of them without a detector)."""
        x = check_x(x, self.bounds)
        if self.detector is None:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return ~self.detector.detect(x)

    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The defended decision per input: a class in ``[0, K)``, or :attr:`reject_class` when rejected."""
        x = check_x(x, self.bounds)
        with torch.no_grad():
            return torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])

    def verify(self, result: AttackResult, batch_size: int = 1024) -> AttackResult:
        """Re-verify ``result`` (an attack's result on any model of the same inputs, e.g. the
        :meth:`adaptive` surrogate) against this whole defended model: its clean labels, ``label_adv`` and
        ``success`` are recomputed by running this model on ``result.x`` and ``result.x_adv`` (one draw of a
        randomized defence); a rejected input is not a success. Everything else is kept."""
        real = self.__dict__.get("real")
        if real is not None:
            return real.verify(result, batch_size)
        if not isinstance(result, AttackResult):
            raise InputError(f"verify takes an AttackResult, got {type(result).__name__}")
        if result.task != "classification":
            raise InputError(f"a Defended model is a classifier; this result was judged by the {result.task!r} "
                             "task")
        x = check_x(result.x, self.bounds, name="result.x")
        pred = self.predict(x, batch_size)
        out = make_result(result.attack, self, x, result.x_adv, result.y, pred, target=result.target,
                          params=result.params, minimal=result.minimal, threat=result.threat, task=result.task,
                          size=result.size)
        return replace(result, x_adv=out.x_adv, label_clean=out.label_clean, label_adv=out.label_adv,
                       success=out.success, warnings=sorted(set(result.warnings) | set(out.warnings)))

    def adaptive(self, bpda: bool = True, eot: int = 1) -> Defended:
        """The differentiable surrogate adaptive attacks run on (Athalye, Carlini & Wagner, ICML 2018).

        ``bpda``: wrap a projection that is not ``differentiable`` in :class:`BPDA` (identity backward).
        ``eot``: average the classifier-after-projection over ``eot`` draws (:class:`EOT`) — for a
        ``randomized`` projection; ``eot=1`` adds nothing. The surrogate is a :class:`Defended` with the same
        classifier, detector and reject rule, whose ``real`` attribute is this model; its :meth:`verify`
        verifies against the real one. Without projection, it computes what this model computes.
        """
        if not isinstance(bpda, bool):
            raise OptionError(f"bpda must be True or False, got {bpda!r}")
        check_iterations(eot, "eot")
        proj = self.projection
        if proj is not None and bpda and not proj.differentiable:
            proj = BPDA(proj)
        sur = Defended(self.classifier, proj, self.detector, self.reject)
        if eot > 1:
            sur.module = EOT(sur.module, eot)
        sur.name = f"adaptive-{self.name}"
        object.__setattr__(sur, "real", self)  # not a submodule: the surrogate shares, not owns, the real model
        return sur

    def extra_repr(self) -> str:
        return f"name={self.name!r}, bounds={self.bounds}, reject={self.reject!r}"

