"""Adversarial-example detectors: four :class:`~georobust.defenses.Detector` s from the literature.

================================ =========================================================================
class                            detector
================================ =========================================================================
:class:`DetectorSubnetwork`      Metzen, Genewein, Fischer & Bischoff, "On detecting adversarial
                                 perturbations", ICLR 2017: a small binary network on a hidden layer's
                                 activations, trained on clean vs adversarial examples
:class:`FeatureSqueezing`        Xu, Evans & Qi, "Feature squeezing: detecting adversarial examples in deep
                                 neural networks", NDSS 2018: bit-depth reduction and median smoothing,
                                 score = the largest L1 distance between the softmax outputs
:class:`Mahalanobis`             Lee, Lee, Lee & Shin, "A simple unified framework for detecting
                                 out-of-distribution samples and adversarial attacks", NeurIPS 2018:
                                 class-conditional Gaussians with a tied covariance on hidden features
:class:`LID`                     Ma et al., "Characterizing adversarial subspaces using local intrinsic
                                 dimensionality", ICLR 2018: LID estimates per layer, logistic regression
================================ =========================================================================

Every detector scores ``(N, ...) -> (N,)`` (higher = more suspicious; finite), computes on the inputs' device,
starts in eval mode, and keeps its fitted state in buffers and parameters; :meth:`save` writes that state (not
the classifier's weights) to a safetensors file and :func:`load_detector` / ``Cls.load(path, classifier)``
rebuild it around a classifier. Scoring before :meth:`fit` raises :class:`~georobust.errors.ModelError`; the
threshold comes from :meth:`~georobust.defenses.Detector.fit_threshold` on held-out clean data.

Helpers: :class:`Features` (a hidden layer's activations by a forward hook), :func:`median_filter` (the median
smoothing of Xu et al., in torch), :func:`bit_depth`, :func:`lid_mle` (the LID maximum-likelihood estimate),
:func:`make_adversarial` (PGD or DeepFool examples for fitting) and :func:`roc_auc` / :func:`tpr_at_fpr`.

Example::

    det = Mahalanobis(clf).fit(x_train, y_train).fit_threshold(x_val, fpr=0.05)
    flagged = det.detect(x_test)
    defended = Defended(clf, detector=det)
"""

from __future__ import annotations

import abc
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import deepfool, pgd
from ..checks import check_input_shape, check_iterations, check_labels, check_positive, check_x
from ..errors import InputError, ModelError, OptionError, WeightsError, unknown_name
from ..models.classifier import Classifier, as_classifier
from ..storage import read_safetensors, write_safetensors
from .defended import Detector

log = logging.getLogger(__name__)

__all__ = ["Features", "DetectorSubnetwork", "FeatureSqueezing", "Mahalanobis", "LID", "median_filter",
           "bit_depth", "lid_mle", "make_adversarial", "roc_auc", "tpr_at_fpr", "load_detector"]

#: modules whose output repeats their input's values (so a layer list skips them by default)
_PASS_THROUGH = (nn.Flatten, nn.Unflatten, nn.Identity, nn.modules.dropout._DropoutNd)


# ---- helpers ------------------------------------------------------------------------------------------------

def _classifier(classifier) -> Classifier:
    if not isinstance(classifier, nn.Module):
        raise ModelError(f"a detector needs a classifier (an nn.Module returning logits), got "
                         f"{type(classifier).__name__}")
    clf = as_classifier(classifier)
    training = [n or type(m).__name__ for n, m in clf.named_modules() if m.training]
    if training:
        raise ModelError(f"the classifier is in training mode ({', '.join(training[:3])}); call .eval() first — a "
                         "detector scores the deployed model")
    return clf


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, i + batch_size)


class Features(nn.Module):
    """The activations of hidden layers of a classifier, by a forward hook: ``Features(classifier, layer)``.

    ``layer``: a module name of the classifier (as in ``classifier.named_modules()``, with or without the
    :class:`~georobust.Classifier`'s leading ``"module."``; its *output* is taken), ``"penultimate"`` (default:
    the *input* of the classifier's last ``nn.Linear``, i.e. the features the logits are computed from) or
    ``"logits"`` (the classifier's output); or a sequence of them. Each activation is flattened to ``(N, D)``.

    ``pool=True`` averages an activation of shape ``(N, C, H, W)`` (or any ``(N, C, ...)``) over its spatial
    positions first, one value per channel (Lee et al.'s convention for convolutional features).

    ``features(x)`` returns ``(N, D)`` (for several layers: their concatenation) and :meth:`all` the list, one
    ``(N, D_i)`` per layer, from one forward pass. The hook lives only during the call. Gradients flow (the
    adaptive attacks differentiate through it); the classifier is a sub-module (``.to(device)`` moves it).
    """

    def __init__(self, classifier, layer: str | Sequence[str] = "penultimate", pool: bool = False):
        super().__init__()
        if not isinstance(pool, bool):
            raise OptionError(f"pool must be True or False, got {pool!r}")
        self.pool = pool
        self.classifier = _classifier(classifier)
        self.training = False
        layers = (layer,) if isinstance(layer, str) else tuple(layer) if isinstance(layer, (list, tuple)) else None
        if not layers or not all(isinstance(name, str) for name in layers):
            raise OptionError(f"layer must be a module name, 'penultimate', 'logits' or a non-empty sequence of "
                              f"them, got {layer!r}")
        names = dict(self.classifier.named_modules())
        self.layers = layers
        self._targets: list[tuple[str, bool]] = []  # (module name, take its input) — names, not sub-modules
        for name in layers:
            if name == "logits":
                self._targets.append(("", False))
            elif name == "penultimate":
                lin = [n for n, m in self.classifier.named_modules() if isinstance(m, nn.Linear)]
                if not lin:
                    raise OptionError("layer='penultimate' is the input of the classifier's last nn.Linear, and this "
                                      "classifier has none; name a layer: one of " + ", ".join(n for n in names if n))
                self._targets.append((lin[-1], True))
            elif name in names and name:
                self._targets.append((name, False))
            elif f"module.{name}" in names:
                self._targets.append((f"module.{name}", False))
            else:
                raise unknown_name("layer", name, [n for n in names if n] + ["penultimate", "logits"])

    @staticmethod
    def default_layers(classifier) -> tuple[str, ...]:
        """Every leaf module of ``classifier`` that changes its input's values (no ``Flatten``/``Identity``/
        dropout), in order — the last one is the logits for a sequential network."""
        clf = as_classifier(classifier)
        out = tuple(n for n, m in clf.named_modules() if n and not list(m.children()) and
                    not isinstance(m, _PASS_THROUGH))
        if not out:
            raise OptionError("the classifier has no named leaf layers; give the layers explicitly")
        return out

    def all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One ``(N, D_i)`` activation per layer, from one forward pass."""
        mods = dict(self.classifier.named_modules())
        got: dict[int, torch.Tensor] = {}
        handles = []
        for i, (name, pre) in enumerate(self._targets):
            if not name:
                continue
            if pre:
                def hook(_m, args, i=i):
                    got[i] = args[0]
                handles.append(mods[name].register_forward_pre_hook(hook))
            else:
                def hook(_m, _args, out, i=i):
                    got[i] = out
                handles.append(mods[name].register_forward_hook(hook))
        try:
            logits = self.classifier(x)
        finally:
            for h in handles:
                h.remove()
        out = []
        for i, (name, _) in enumerate(self._targets):
            a = logits if not name else got.get(i)
            if not isinstance(a, torch.Tensor):
                raise ModelError(f"layer {self.layers[i]!r} produced no tensor in the forward pass (is it used?)")
            out.append(a.flatten(2).mean(2) if self.pool and a.ndim >= 3 else a.flatten(1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.all(x)
        return feats[0] if len(feats) == 1 else torch.cat(feats, 1)

    def extra_repr(self) -> str:
        return f"layers={self.layers}" + (", pool=True" if self.pool else "")


def bit_depth(x: torch.Tensor, bits: int, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Bit-depth reduction (Xu et al., NDSS 2018): ``bits`` bits per value, i.e. ``2**bits`` evenly spaced
    levels spanning ``bounds``; each value goes to the nearest level (ties to even, as ``numpy.rint``)."""
    lo, hi = bounds
    levels = 2 ** int(bits) - 1
    u = ((x - lo) / (hi - lo)).clamp(0, 1)
    return torch.round(u * levels) / levels * (hi - lo) + lo


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    i = torch.arange(-before, n + after, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - i - 1, i)


def _size2(size) -> tuple[int, int]:
    s = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size) \
        if isinstance(size, (tuple, list)) else None
    if s is None or len(s) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s):
        raise OptionError(f"a median window is a positive int or a pair (h, w) of positive ints, got {size!r}")
    return s  # type: ignore[return-value]


def median_filter(x: torch.Tensor, size: int | tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Median smoothing of images ``(N, C, H, W)`` over an ``h × w`` window (Xu et al., NDSS 2018), per channel.

    The conventions of ``scipy.ndimage.median_filter(x, size=(1, 1, h, w), mode="reflect")``, which Xu et al.
    used: the window of pixel ``(i, j)`` covers rows ``i − h//2 … i + (h−1)//2`` (and likewise columns), the image
    is extended by mirror symmetry (``d c b a | a b c d | d c b a``), and the value is the element of rank
    ``h·w // 2`` (0-based) of the sorted window — the median for an odd window, the upper of the two middle
    values for an even one. Written with ``unfold`` + ``kthvalue``: differentiable almost everywhere (the
    gradient goes to the selected pixel), on any device.
    """
    h, w = _size2(size)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise InputError(f"median_filter takes images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    n, c, hh, ww = x.shape
    if h > hh or w > ww:
        raise OptionError(f"the median window {h}x{w} is larger than the images ({hh}x{ww})")
    if h == w == 1:
        return x
    xp = x.index_select(2, _symmetric_index(hh, h // 2, (h - 1) // 2, x.device))
    xp = xp.index_select(3, _symmetric_index(ww, w // 2, (w - 1) // 2, x.device))
    cols = F.unfold(xp.reshape(n * c, 1, *xp.shape[2:]), (h, w))  # (N·C, h·w, H·W)
    med = cols.kthvalue(h * w // 2 + 1, dim=1).values
    return med.reshape(n, c, hh, ww)


def lid_mle(query: torch.Tensor, reference: torch.Tensor, k: int = 20, *, exclude_self: bool = False) -> torch.Tensor:
    """Maximum-likelihood estimate of local intrinsic dimensionality (Ma et al., ICLR 2018, eq. 3; Amsaleg et
    al., KDD 2015): ``LID(x) = −( (1/k) Σ_{i=1..k} log(r_i(x) / r_k(x)) )^{-1}``, with ``r_i`` the Euclidean
    distance from ``x`` to its ``i``-th nearest neighbour among the rows of ``reference``.

    ``query`` ``(N, D)``, ``reference`` ``(M, D)`` with ``M >= k`` (``M >= k + 1`` with ``exclude_self``, which
    drops each query's nearest neighbour — its own copy when the query is a reference row). Returns ``(N,)``,
    finite (distances are floored at ``1e-12`` and the sum of logs capped below zero, so duplicates and equal
    distances give a finite value). If the ``k`` nearest neighbours are locally uniform in a ``d``-dimensional
    set, the ``−log(r_i/r_k)`` (``i < k``) are independent ``Exp(d)``, so the estimate is ``k / Gamma(k−1, d)``
    with mean ``d·k/(k−2)``.
    """
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise InputError(f"lid_mle takes query (N, D) and reference (M, D), got {tuple(query.shape)} and "
                         f"{tuple(reference.shape)}")
    need = k + 1 if exclude_self else k
    if reference.shape[0] < need:
        raise InputError(f"lid_mle with k={k} needs at least {need} reference points, got {reference.shape[0]}")
    d = torch.cdist(query, reference.to(query.dtype))
    r = d.topk(need, dim=1, largest=False).values
    if exclude_self:
        r = r[:, 1:]
    r = r.clamp_min(1e-12)
    s = torch.log(r / r[:, -1:]).sum(1) / k
    return -1.0 / s.clamp(max=-1e-12)


def roc_auc(scores_negative: torch.Tensor, scores_positive: torch.Tensor) -> float:
    """Area under the ROC curve: ``P(s_pos > s_neg) + ½·P(s_pos = s_neg)`` over all pairs (the Mann–Whitney
    statistic), exact, from the two score samples (higher = more likely positive)."""
    neg = torch.as_tensor(scores_negative).detach().double().flatten().cpu()
    pos = torch.as_tensor(scores_positive).detach().double().flatten().cpu()
    if neg.numel() == 0 or pos.numel() == 0:
        raise InputError("roc_auc needs at least one negative and one positive score")
    allv = torch.cat([neg, pos])
    # mid-ranks (ties share the mean rank)
    order = allv.argsort()
    sorted_v = allv[order]
    ranks = torch.empty_like(allv)
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid = ends - (counts.double() - 1) / 2
    ranks[order] = mid[inverse]
    n_neg, n_pos = neg.numel(), pos.numel()
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_neg * n_pos))


def tpr_at_fpr(detector: Detector, x_positive: torch.Tensor) -> float:
    """Fraction of ``x_positive`` the (threshold-fitted) detector flags: the detection rate at its FPR."""
    return float(detector.detect(x_positive).double().mean())


def make_adversarial(classifier, x: torch.Tensor, y: torch.Tensor | None = None, attack: str = "pgd", *,
                     eps: float = 0.1, norm="inf", steps: int = 20, early_stop: bool = False, seed: int = 0,
                     batch_size: int = 1024, **options) -> torch.Tensor:
    """Adversarial examples to fit a detector on (the training set's, by convention): ``x_adv`` ``(N, ...)``.

    ``attack="pgd"``: :func:`georobust.pgd` with ``eps``, ``norm``, ``steps``, ``seed`` and, by default,
    ``early_stop=False`` (every sample runs all steps, as the fixed-iteration PGD of the detection papers, not
    stopping just across the boundary). ``attack="deepfool"``: :func:`georobust.deepfool` (L2 unless ``norm``;
    ``eps``, ``steps``, ``seed`` and ``early_stop`` do not apply). Other keyword ``options`` go to the attack.
    The rows of an unsuccessful attack (and, with ``y`` given, of inputs already misclassified) are returned as
    the attack left them; the success rate is logged.
    """
    if attack == "pgd":
        res = pgd(classifier, x, y, eps=eps, norm=norm, steps=steps, early_stop=early_stop, seed=seed,
                  batch_size=batch_size, **options)
    elif attack == "deepfool":
        res = deepfool(classifier, x, y, norm=2 if norm == "inf" else norm, batch_size=batch_size, **options)
    else:
        raise unknown_name("attack", attack, ("pgd", "deepfool"))
    log.info("make_adversarial: %s fooled %.1f%% of %d inputs", attack, 100 * float(res.success.double().mean()),
             res.x_adv.shape[0])
    return res.x_adv.detach()


class _Adam:
    """Adam (Kingma & Ba, ICLR 2015) with L2 ``weight_decay`` added to the gradient, as ``torch.optim.Adam``; a
    few lines here rather than ``torch.optim`` (whose first use imports the compiler stack, seconds on CPU)."""

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if self.wd:
                g = g + self.wd * p
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** self.t))


def _logistic_regression(z: torch.Tensor, t: torch.Tensor, weights: torch.Tensor, l2: float,
                         max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted L2-penalised logistic regression by Newton's method with step halving (float64): minimise
    ``Σ_i weights_i · BCE(z_i·w + b, t_i) + ½·l2·‖w‖²``; returns ``(w, b)``. Stops when the Newton decrement is
    below 1e-20 (the minimum, to float64 precision) or after ``max_iter`` steps."""
    z, t, weights = z.double(), t.double(), weights.double()
    xb = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], 1)
    ridge = torch.full((xb.shape[1],), l2, dtype=z.dtype, device=z.device)
    ridge[-1] = 0.0
    theta = torch.zeros(xb.shape[1], dtype=z.dtype, device=z.device)

    def loss(th):
        return float((weights * F.binary_cross_entropy_with_logits(xb @ th, t, reduction="none")).sum()
                     + 0.5 * (ridge * th * th).sum())

    cur = loss(theta)
    for _ in range(max_iter):
        p = torch.sigmoid(xb @ theta)
        grad = xb.T @ (weights * (p - t)) + ridge * theta
        hess = (xb * (weights * p * (1 - p))[:, None]).T @ xb + torch.diag(ridge + 1e-12)
        step = torch.linalg.solve(hess, grad)
        if float(grad @ step) < 1e-20:
            break
        scale, new = 1.0, math.inf
        while scale > 1e-6:
            new = loss(theta - scale * step)
            if new <= cur:
                break
            scale /= 2
        if new > cur:  # no decrease along the Newton direction: at the minimum up to round-off
            break
        theta, cur = theta - scale * step, new
    return theta[:-1].clone(), theta[-1].clone()


# ---- the common base ----------------------------------------------------------------------------------------

class _Fitted(Detector):
    """A detector around a classifier with a fitted state (buffers/parameters), savable to safetensors."""

    #: state-dict prefixes that belong to the classifier (not saved with the detector)
    _shared = ("features.classifier.", "classifier.")

    # -- fitted state
    @abc.abstractmethod
    def _is_fitted(self) -> bool:
        """Whether the fitted state is there."""

    def _require_fitted(self) -> None:
        if not self._is_fitted():
            raise ModelError(f"{type(self).__name__} is not fitted: call .fit(...) first (see its docstring), or "
                             f"load a fitted one with {type(self).__name__}.load(path, classifier)")

    @abc.abstractmethod
    def _classifier_of(self) -> Classifier:
        """The classifier the detector looks at."""

    def _check_fit_x(self, x, name: str) -> torch.Tensor:
        clf = self._classifier_of()
        x = check_x(x, clf.bounds, name=name)
        check_input_shape(clf, x, name=name)
        return x

    def _check_score_x(self, x) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise InputError(f"{type(self).__name__}.score takes a batch (N, ...), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        check_input_shape(self._classifier_of(), x)

    def _device(self) -> torch.device:
        for t in self._classifier_of().parameters():
            return t.device
        return torch.device("cpu")

    # -- persistence
    @abc.abstractmethod
    def _config(self) -> dict:
        """The constructor's keyword options (JSON-able), to rebuild the detector."""

    def _own_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items() if not k.startswith(self._shared)}

    def save(self, path: str | Path) -> Path:
        """Write the fitted state (not the classifier's weights), the constructor options, the threshold and its
        FPR to a safetensors file; :meth:`load` (or :func:`load_detector`) rebuilds the detector."""
        self._require_fitted()
        meta = {"detector": type(self).__name__, "config": json.dumps(self._config()),
                "threshold": json.dumps(self.threshold), "fpr": json.dumps(self.fpr)}
        tensors = {k: v.contiguous().cpu() for k, v in self._own_state().items()}
        return write_safetensors(path, tensors, meta, what="the detector")

    def _allocate(self, state: dict[str, torch.Tensor]) -> None:
        """Give every buffer/parameter the shape it has in ``state`` before ``load_state_dict``."""
        for key, value in state.items():
            owner_name, _, leaf = key.rpartition(".")
            try:
                owner = self.get_submodule(owner_name) if owner_name else self
            except AttributeError as e:
                raise WeightsError(f"the saved state has a tensor {key!r} that a {type(self).__name__} does not "
                                   "have; was it written by another version or another detector?") from e
            if leaf in owner._buffers:
                owner._buffers[leaf] = torch.empty_like(value)

    @classmethod
    def load(cls, path: str | Path, classifier) -> _Fitted:
        """Rebuild a detector saved by :meth:`save` around ``classifier`` (the one it was fitted with)."""
        det = load_detector(path, classifier)
        if not isinstance(det, cls):
            raise WeightsError(f"{path} holds a {type(det).__name__}, not a {cls.__name__}")
        return det


def load_detector(path: str | Path, classifier) -> _Fitted:
    """Rebuild any detector of this module saved with ``detector.save(path)``, around ``classifier``."""
    path = Path(path)
    state, meta = read_safetensors(path, what="detector file")
    kinds = {c.__name__: c for c in (DetectorSubnetwork, FeatureSqueezing, Mahalanobis, LID)}
    if meta.get("detector") not in kinds:
        raise WeightsError(f"{path} was not written by a georobust detector's save() (metadata 'detector' is "
                           f"{meta.get('detector')!r})")
    det = kinds[meta["detector"]](classifier, **json.loads(meta["config"]))
    det._allocate(state)
    try:
        missing, unexpected = det.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"the state in {path} does not fit a {meta['detector']}: {e}") from e
    missing = [k for k in missing if not k.startswith(det._shared)]
    if missing or unexpected:
        raise WeightsError(f"the state in {path} does not fit a {meta['detector']}: missing {missing}, "
                           f"unexpected {unexpected}")
    det.threshold = json.loads(meta["threshold"])
    det.fpr = json.loads(meta["fpr"])
    return det.to(det._device()).eval()


# ---- Metzen et al. ------------------------------------------------------------------------------------------

class DetectorSubnetwork(_Fitted):
    """Detector subnetwork (Metzen, Genewein, Fischer & Bischoff, "On detecting adversarial perturbations",
    ICLR 2017): a small binary classifier attached to a hidden layer of the (frozen) classifier, trained to tell
    clean inputs from adversarial ones.

    ``DetectorSubnetwork(classifier, layer="penultimate", hidden=(256,))``: the layer's activations (see
    :class:`Features`) are standardised (mean and standard deviation of the fitting set) and fed to an MLP
    ``D → hidden… → 1`` with ReLUs (the paper attaches a small convolutional net to a ResNet stage; on LeNet's
    flat hidden layers an MLP is the same idea). :meth:`fit` trains it with the class-balanced logistic loss
    (Adam). ``score`` = the subnetwork's logit — differentiable in the input, so a detector-aware attack can use
    its gradient. The classifier's weights are not changed.
    """

    def __init__(self, classifier, layer: str | Sequence[str] = "penultimate", hidden: Sequence[int] = (256,)):
        super().__init__()
        hidden = (hidden,) if isinstance(hidden, int) and not isinstance(hidden, bool) else tuple(hidden)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise OptionError(f"hidden must be a sequence of positive layer widths, got {hidden!r}")
        self.features = Features(classifier, layer)
        self.layer = layer if isinstance(layer, str) else list(layer)
        self.hidden = hidden
        self.register_buffer("mu", torch.empty(0))
        self.register_buffer("sd", torch.empty(0))
        self.net: nn.Sequential | None = None

    def _classifier_of(self) -> Classifier:
        return self.features.classifier

    def _config(self) -> dict:
        return {"layer": self.layer, "hidden": list(self.hidden)}

    def _is_fitted(self) -> bool:
        return self.net is not None and self.mu.numel() > 0

    def _build(self, d: int) -> None:
        dims = (d, *self.hidden, 1)
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers).to(self._device()).eval()

    def _allocate(self, state: dict[str, torch.Tensor]) -> None:
        if "mu" not in state:
            raise WeightsError("the saved DetectorSubnetwork state has no 'mu'")
        self._build(int(state["mu"].numel()))
        super()._allocate(state)

    def _feats(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.features(x[s]) for s in _batches(x.shape[0], batch_size)])

    def fit(self, x_clean: torch.Tensor, x_adv: torch.Tensor, *, epochs: int = 10, lr: float = 1e-3,
            batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0) -> DetectorSubnetwork:
        """Train the subnetwork on ``x_clean`` (label 0) vs ``x_adv`` (label 1; e.g. :func:`make_adversarial` of
        the training set); return ``self``. Deterministic given ``seed`` (initialisation and batch order).
        ``epochs`` passes of Adam (``lr``, ``weight_decay``) over minibatches of ``batch_size``."""
        check_iterations(epochs, "epochs")
        check_positive(lr, "lr")
        check_positive(batch_size, "batch_size", integer=True)
        check_positive(weight_decay, "weight_decay", allow_zero=True)
        x_clean = self._check_fit_x(x_clean, "x_clean")
        x_adv = self._check_fit_x(x_adv, "x_adv")
        fc, fa = self._feats(x_clean, 1024), self._feats(x_adv, 1024)
        f = torch.cat([fc, fa])
        t = torch.cat([torch.zeros(len(fc)), torch.ones(len(fa))]).to(f)
        self.mu = f.mean(0)
        self.sd = f.std(0).clamp_min(1e-6)
        z = (f - self.mu) / self.sd
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build(f.shape[1])
        gen = torch.Generator().manual_seed(seed)
        adam = _Adam(list(self.net.parameters()), float(lr), float(weight_decay))
        pos_weight = torch.tensor(len(fc) / len(fa), device=f.device, dtype=f.dtype)
        for epoch in range(epochs):
            order = torch.randperm(len(f), generator=gen).to(f.device)
            total = 0.0
            for s in _batches(len(f), batch_size):
                i = order[s]
                with torch.enable_grad():
                    loss = F.binary_cross_entropy_with_logits(self.net(z[i])[:, 0], t[i], pos_weight=pos_weight)
                    grads = torch.autograd.grad(loss, adam.params)
                adam.step(grads)
                total += float(loss.detach()) * len(i)
            log.debug("DetectorSubnetwork epoch %d: loss %.4f", epoch + 1, total / len(f))
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        self._check_score_x(x)
        return self.net((self.features(x) - self.mu) / self.sd)[:, 0]

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, hidden={self.hidden}"


# ---- Xu et al. ----------------------------------------------------------------------------------------------

class FeatureSqueezing(_Fitted):
    """Feature squeezing (Xu, Evans & Qi, NDSS 2018): compare the classifier's softmax on the input with its
    softmax on "squeezed" versions of it; an adversarial perturbation tends to be undone by squeezing, moving
    the prediction a lot, a clean input's much less.

    ``FeatureSqueezing(classifier, bits=1, median=(2, 2))``: one squeezer per bit depth in ``bits`` (an int or a
    sequence of them; :func:`bit_depth`) and one median smoothing (:func:`median_filter`) over the window
    ``median``: ``(h, w)``, an int ``s`` for ``s × s``, or ``None`` for none. The defaults are the paper's MNIST
    configuration (1-bit depth, 2×2 median). ``score(x) = max_squeezer ‖softmax(f(x)) − softmax(f(squeeze(x)))‖₁`` (the paper's joint
    detector), in ``[0, 2]``. Nothing is learned: :meth:`fit` only exists for a uniform interface (it returns
    ``self``); the threshold comes from :meth:`fit_threshold`. The squeezers are not differentiable
    (rounding: zero gradient; the median passes the gradient to the selected pixel).
    """

    def __init__(self, classifier, bits: int | Sequence[int] = 1, median: int | tuple[int, int] | None = (2, 2)):
        super().__init__()
        self.classifier = _classifier(classifier)
        bits = (bits,) if isinstance(bits, int) and not isinstance(bits, bool) else tuple(bits)
        if not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16 for b in bits):
            raise OptionError(f"bits must be bit depths between 1 and 16, got {bits!r}")
        median = None if median is None else _size2(median)
        if not bits and not median:
            raise OptionError("FeatureSqueezing needs at least one squeezer: give bits and/or median")
        shape = self.classifier.input_shape
        if median and shape is not None and len(shape) != 3:
            raise OptionError(f"median smoothing needs image inputs (C, H, W); this classifier takes {shape}: use "
                              "median=None (bit-depth reduction only)")
        self.bits = bits
        self.median = median

    def _classifier_of(self) -> Classifier:
        return self.classifier

    def _config(self) -> dict:
        return {"bits": list(self.bits), "median": None if self.median is None else list(self.median)}

    def _is_fitted(self) -> bool:
        return True

    def squeezers(self) -> list[tuple[str, object]]:
        """``(name, function)`` of each squeezer."""
        lo_hi = self.classifier.bounds
        out: list[tuple[str, object]] = [(f"bits{b}", lambda x, b=b: bit_depth(x, b, lo_hi)) for b in self.bits]
        if self.median is not None:
            h, w = self.median
            out.append((f"median{h}x{w}", lambda x: median_filter(x, (h, w))))
        return out

    def fit(self, *args, **kwargs) -> FeatureSqueezing:
        """Nothing to learn (the squeezers are fixed); returns ``self``. Fit the threshold with
        :meth:`fit_threshold`."""
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        self._check_score_x(x)
        if self.median and x.ndim != 4:
            raise InputError(f"median smoothing needs images (N, C, H, W), got {tuple(x.shape)}")
        p = F.softmax(self.classifier(x), 1)
        best = None
        for _, squeeze in self.squeezers():
            d = (p - F.softmax(self.classifier(squeeze(x)), 1)).abs().sum(1)
            best = d if best is None else torch.maximum(best, d)
        return best

    def extra_repr(self) -> str:
        return f"bits={self.bits}, median={self.median}"


# ---- Lee et al. ---------------------------------------------------------------------------------------------

class Mahalanobis(_Fitted):
    """Mahalanobis-distance detector (Lee, Lee, Lee & Shin, NeurIPS 2018): class-conditional Gaussians with one
    shared (tied) covariance on a hidden layer's features ``f(x)``.

    ``Mahalanobis(classifier, layer="penultimate", noise=0.0)``. :meth:`fit` ``(x, y)`` estimates the class
    means ``μ_c`` and the tied covariance ``Σ = (1/N) Σ_c Σ_{i: y_i = c} (f_i − μ_c)(f_i − μ_c)ᵀ`` (maximum
    likelihood, as the paper), in float64, and stores ``W = Σ^{+1/2}`` (the pseudo-inverse square root from an
    eigendecomposition; eigenvalues below ``D·eps·λ_max`` are dropped, as ``scipy.linalg.pinvh``). ``score(x) =
    min_c (f(x) − μ_c)ᵀ Σ⁺ (f(x) − μ_c)`` — the squared distance to the closest class, i.e. minus the paper's
    confidence score ``M(x)`` (higher = more suspicious). Differentiable in ``x``. A convolutional layer's
    activations are averaged over positions (one feature per channel, as the paper), so any layer can be named;
    several layers are concatenated into one Gaussian.

    ``noise > 0``: the paper's input pre-processing, ``x̂ = x − noise·sign(∇_x score(x))`` (a step that decreases
    the distance; clean inputs move closer than adversarial ones) and the score is taken at ``x̂``; as in the
    paper ``x̂`` is not clipped to the input box. The sign is a constant for autograd, so the score's gradient
    is that of the distance at ``x̂``.
    """

    def __init__(self, classifier, layer: str | Sequence[str] = "penultimate", noise: float = 0.0):
        super().__init__()
        check_positive(noise, "noise", allow_zero=True)
        self.features = Features(classifier, layer, pool=True)
        self.layer = layer if isinstance(layer, str) else list(layer)
        self.noise = float(noise)
        self.register_buffer("means", torch.empty(0, dtype=torch.float64))
        self.register_buffer("whiten", torch.empty(0, dtype=torch.float64))

    def _classifier_of(self) -> Classifier:
        return self.features.classifier

    def _config(self) -> dict:
        return {"layer": self.layer, "noise": self.noise}

    def _is_fitted(self) -> bool:
        return self.means.numel() > 0

    def fit(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> Mahalanobis:
        """Estimate the class means and the tied covariance from ``x`` with labels ``y`` (the training set);
        return ``self``. Every class of the classifier needs at least one sample."""
        check_positive(batch_size, "batch_size", integer=True)
        x = self._check_fit_x(x, "x")
        with torch.no_grad():
            k = int(self.features.classifier(x[:1]).shape[1])
            y = check_labels(y, x.shape[0], k).to(x.device)
            f = torch.cat([self.features(x[s]) for s in _batches(x.shape[0], batch_size)]).double()
        counts = torch.bincount(y, minlength=k)
        if (counts == 0).any():
            missing = (counts == 0).nonzero()[:, 0].tolist()
            raise InputError(f"Mahalanobis.fit needs samples of every class; classes {missing} have none")
        means = torch.zeros(k, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, y, f)
        means /= counts[:, None].double()
        centred = f - means[y]
        cov = centred.T @ centred / f.shape[0]
        lam, vec = torch.linalg.eigh(cov)
        keep = lam > lam.max().clamp_min(0) * f.shape[1] * torch.finfo(torch.float64).eps
        if not keep.any():
            raise InputError("the features have zero variance within classes; Mahalanobis cannot be fitted")
        self.means = means
        self.whiten = vec[:, keep] / lam[keep].sqrt()  # (D, r): ‖(f − μ) W‖² = (f − μ)ᵀ Σ⁺ (f − μ)
        log.info("Mahalanobis: %d features, covariance rank %d, %d samples", f.shape[1], int(keep.sum()), len(f))
        return self

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)``: the squared Mahalanobis distance of ``f(x)`` to each class mean."""
        self._require_fitted()
        z = self.features(x).double() @ self.whiten
        m = self.means @ self.whiten
        return (z[:, None, :] - m[None]).pow(2).sum(-1)

    def _min_distance(self, x: torch.Tensor) -> torch.Tensor:
        return self.distances(x).amin(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        self._check_score_x(x)
        if self.noise > 0:
            with torch.enable_grad():
                xd = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._min_distance(xd).sum(), xd)
            x = x - self.noise * g.sign()
        return self._min_distance(x).to(x.dtype)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, noise={self.noise}"


# ---- Ma et al. ----------------------------------------------------------------------------------------------

class LID(_Fitted):
    """Local intrinsic dimensionality detector (Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle &
    Bailey, "Characterizing adversarial subspaces using local intrinsic dimensionality", ICLR 2018).

    ``LID(classifier, layers=None, k=20, batch=100)``: for each layer in ``layers`` (default: every leaf layer
    of the classifier, :meth:`Features.default_layers`, as the paper's "all layers"), the LID
    maximum-likelihood estimate (:func:`lid_mle`) of the input's activation among ``k`` nearest neighbours;
    a logistic regression on the (standardised) per-layer LIDs gives the score (its logit).

    The paper estimates LID within each minibatch of ``batch`` clean inputs. Here the neighbours come from a
    fixed **reference set** of ``batch`` clean activations stored at :meth:`fit` time, so the score of a single
    input (or of any batch) is well defined and does not depend on what it is batched with: at fit and at score
    time every input is compared with the same ``batch`` reference points. Differentiable in ``x`` (through the
    distances to the selected neighbours).
    """

    def __init__(self, classifier, layers: Sequence[str] | None = None, k: int = 20, batch: int = 100):
        super().__init__()
        check_positive(k, "k", integer=True)
        check_positive(batch, "batch", integer=True)
        if k < 2:
            raise OptionError(f"LID needs k >= 2 neighbours (the estimate uses log(r_i / r_k)), got k={k}")
        if batch < k:
            raise OptionError(f"the reference batch ({batch}) must hold at least k={k} points")
        if layers is None:
            layers = Features.default_layers(classifier)
        elif isinstance(layers, str):
            layers = (layers,)
        self.features = Features(classifier, tuple(layers))
        self.layers = list(self.features.layers)
        self.k, self.batch = int(k), int(batch)
        for i in range(len(self.layers)):
            self.register_buffer(f"ref{i}", torch.empty(0))
        self.register_buffer("mu", torch.empty(0))
        self.register_buffer("sd", torch.empty(0))
        self.weight = nn.Parameter(torch.zeros(0))
        self.bias = nn.Parameter(torch.zeros(0))

    def _classifier_of(self) -> Classifier:
        return self.features.classifier

    def _config(self) -> dict:
        return {"layers": self.layers, "k": self.k, "batch": self.batch}

    def _is_fitted(self) -> bool:
        return self.weight.numel() > 0

    def _allocate(self, state: dict[str, torch.Tensor]) -> None:
        super()._allocate(state)
        for name in ("weight", "bias"):
            if name in state:
                setattr(self, name, nn.Parameter(torch.empty_like(state[name])))

    def references(self) -> list[torch.Tensor]:
        """The stored reference activations, one ``(batch, D_i)`` per layer."""
        return [getattr(self, f"ref{i}") for i in range(len(self.layers))]

    def lids(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """``(N, L)``: the LID estimate of each input at each layer against the reference set."""
        if self.ref0.numel() == 0:
            self._require_fitted()
        out = []
        for s in _batches(x.shape[0], batch_size):
            acts = self.features.all(x[s])
            out.append(torch.stack([lid_mle(a, r, self.k) for a, r in zip(acts, self.references())], 1))
        return torch.cat(out)

    def fit(self, x_clean: torch.Tensor, x_adv: torch.Tensor, x_noisy: torch.Tensor | None = None, *,
            l2: float = 1e-3, seed: int = 0) -> LID:
        """Fit on ``x_clean`` (negatives), ``x_adv`` (positives) and optionally ``x_noisy`` (negatives: inputs
        with random noise of the adversarial perturbations' size, as the paper); return ``self``.

        ``batch`` of the clean inputs (chosen at random with ``seed``) become the reference set and are not
        used as training negatives, so ``x_clean`` needs more than ``batch`` inputs. The logistic regression
        (L2 penalty ``l2`` on the weights, class-balanced) is fitted by Newton's method in float64.
        """
        check_positive(l2, "l2", allow_zero=True)
        x_clean = self._check_fit_x(x_clean, "x_clean")
        x_adv = self._check_fit_x(x_adv, "x_adv")
        if x_noisy is not None:
            x_noisy = self._check_fit_x(x_noisy, "x_noisy")
        n = x_clean.shape[0]
        if n <= self.batch:
            raise InputError(f"LID.fit takes {self.batch} of x_clean as the reference set and needs more clean "
                             f"inputs than that to train on; got {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x_clean.device)
        with torch.no_grad():
            acts = self.features.all(x_clean[perm[:self.batch]])
            for i, a in enumerate(acts):
                setattr(self, f"ref{i}", a.detach().clone())
            neg = [self.lids(x_clean[perm[self.batch:]])]
            if x_noisy is not None:
                neg.append(self.lids(x_noisy))
            neg = torch.cat(neg).double()
            pos = self.lids(x_adv).double()
        feats = torch.cat([neg, pos])
        t = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))]).to(feats)
        mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-12)
        z = (feats - mu) / sd
        wts = torch.where(t > 0, 0.5 / len(pos), 0.5 / len(neg))
        w, b = _logistic_regression(z, t, wts, float(l2))
        dt = x_clean.dtype
        self.mu, self.sd = mu.to(dt), sd.to(dt)
        self.weight = nn.Parameter(w.to(dt))
        self.bias = nn.Parameter(b.reshape(1).to(dt))
        log.info("LID: %d layers, weights %s", len(self.layers), [round(v, 3) for v in self.weight.tolist()])
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        self._check_score_x(x)
        return ((self.lids(x) - self.mu) / self.sd) @ self.weight + self.bias

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, k={self.k}, batch={self.batch}"
