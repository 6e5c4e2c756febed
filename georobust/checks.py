"""Input validation shared by every public entry point. Everything here runs *before* any work.

Conventions (ARCHITECTURE.md): inputs are float32 ``(N, C, H, W)`` or ``(N, D)`` inside the model's bounds,
labels int64 ``(N,)``; the model returns logits ``(N, K)`` and is in eval mode.

**dtype policy.** Inputs of any floating dtype (float16, bfloat16, float32, float64) are accepted and
converted to the dtype of the model's floating parameters (float32 for a model without any) before any
work, with a logged note (INFO) when a conversion happens; attacks and geometry then compute in the model's
dtype. So a float32 model given float64 inputs runs in float32, and a float64 model (``model.double()``,
as the geometry tools use on purpose for exact Hessian spectra) given float32 or float64 inputs runs in
float64. Integer, bool and complex inputs are refused.

**Shape.** When the model knows the shape of one input (``Classifier.input_shape``, recorded in the weights
written by ``save_weights`` and the zoo), inputs of another shape are refused with both shapes named. When
it does not, the first probe forward pass on two samples is the check: if the model raises there, the error
is a :class:`~georobust.errors.ModelError` quoting the input shape and the first line of torch's message.

**Probabilities.** A model must return logits. If its outputs on the probe batch are all non-negative with
rows summing to 1 (up to float round-off, ``8·K·eps`` of the output dtype) it very likely ends in a softmax:
minimal perturbations, robust accuracy and geometry are then wrong (a softmax saturates, its gradients
vanish). This is not refused, but warned about loudly: a logged WARNING, the message in the model's
``output_warnings`` and in the ``warnings`` of every ``AttackResult`` and ``Evaluation`` made with it. The fix
is ``Classifier(module, logits="log")`` or ``load_model(spec, logits="log")``.

**Counts and sizes.** Every count of iterations of an attack (``steps``, ``max_iter``, ``restarts``,
``max_passes``, ``search_steps``, evaluation and query budgets) must be an integer >= 1: an attack asked to
do no work is refused (:class:`~georobust.errors.OptionError`), not run as a no-op. A size that cannot be
met (more eigenvalues than the input dimension, a subspace larger than the number of normals) is refused
before any work, never silently cut.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .core.tasks import task as get_task
from .errors import InputError, ModelError, OptionError
from .models.classifier import Classifier, as_classifier

log = logging.getLogger(__name__)

CLASSIFICATION = get_task("classification")
DENSE = get_task("dense")

#: float round-off after normalisation may push inputs this far outside the bounds; it is clamped away.
BOUNDS_TOL = 1e-6

#: the warning attached to results of a model whose outputs look like probabilities
PROBABILITIES_WARNING = (
    "the model's outputs look like probabilities (non-negative, each row sums to 1), not logits: minimal "
    "perturbations, robust accuracies and geometry measured on them are wrong (a softmax saturates). "
    "Remove the final softmax, or wrap the model as Classifier(module, logits='log') / "
    "load_model(spec, logits='log') (CLI: --logits log)"
)


def check_x(x: Any, bounds: tuple[float, float] = (0.0, 1.0), *, name: str = "x") -> torch.Tensor:
    """Validate a batch of inputs; return it (clamped into the bounds if it was off by round-off only)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}; use torch.as_tensor")
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise InputError(f"{name} must be a floating tensor (float32), got {x.dtype}; use {name}.float()")
    if x.ndim not in (2, 3, 4, 5):
        raise InputError(
            f"{name} must be a batch (N, D) or (N, C, H, W), got shape {tuple(x.shape)}; "
            f"add a batch dimension with {name}.unsqueeze(0)"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{name} contains NaN or inf in {n_bad} sample(s); clean the data first")
    lo, hi = bounds
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - BOUNDS_TOL or xmax > hi + BOUNDS_TOL:
        raise InputError(
            f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the model's bounds [{lo:g}, {hi:g}]; "
            "pass unnormalised inputs and put mean/std in Classifier(..., mean=, std=), "
            "or declare other bounds"
        )
    if xmin < lo or xmax > hi:
        x = x.clamp(lo, hi)
    return x


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs are converted to for ``model``: that of its first floating parameter (else buffer),
    float32 for a model without any."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def match_dtype(x: torch.Tensor, model: nn.Module, *, name: str = "x") -> torch.Tensor:
    """Convert ``x`` to :func:`model_dtype` (the module docstring's dtype policy), with a logged note."""
    dt = model_dtype(model)
    if x.dtype != dt:
        log.info("%s is %s but the model computes in %s: converting %s to %s", name,
                 str(x.dtype).removeprefix("torch."), str(dt).removeprefix("torch."), name,
                 str(dt).removeprefix("torch."))
        x = x.to(dt)
    return x


def _fmt_shape(shape) -> str:
    return "(N, " + ", ".join(str(int(s)) for s in shape) + ")"


def check_input_shape(model: nn.Module, x: torch.Tensor, *, name: str = "x") -> None:
    """Refuse ``x`` if ``model`` declares ``input_shape`` (one sample) and ``x``'s samples have another shape."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return
    shape = tuple(shape)
    got = tuple(x.shape[1:])
    if got == shape:
        return
    mname = getattr(model, "name", type(model).__name__)
    if tuple(x.shape) == shape:
        hint = f"this is one sample without the batch dimension: use {name}.unsqueeze(0)"
    elif math.prod(got) == math.prod(shape):
        hint = f"the sizes match: reshape with {name}.reshape(-1, {', '.join(map(str, shape))})"
    else:
        hint = "use data of the shape the model was trained on, or another model"
    raise InputError(
        f"model {mname!r} expects inputs of shape {_fmt_shape(shape)}, but {name} has shape {tuple(x.shape)}; {hint}"
    )


def _looks_like_probabilities(out: torch.Tensor) -> bool:
    """Non-negative rows that sum to 1 up to the round-off of summing ``K`` values (``8·K·eps``)."""
    if not out.is_floating_point() or bool((out < 0).any()):
        return False
    o = out.detach().double()
    tol = 8 * out.shape[1] * torch.finfo(out.dtype).eps
    return bool(((o.sum(1) - 1).abs() <= tol).all())


def check_labels(y: Any, n: int, num_classes: int | None = None, *, name: str = "y") -> torch.Tensor:
    """Validate int labels of length ``n`` in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if y.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
        raise InputError(f"{name} must hold integer class indices (int64), got {y.dtype}; use {name}.long()")
    if y.ndim != 1:
        raise InputError(f"{name} must have shape (N,), got {tuple(y.shape)}")
    if y.shape[0] != n:
        raise InputError(f"{name} has {y.shape[0]} labels for {n} inputs; they must match")
    y = y.long()
    if n and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise InputError(
            f"{name} has labels in [{int(y.min())}, {int(y.max())}], outside [0, {num_classes}) "
            f"for a model with {num_classes} classes"
        )
    return y


def check_label_maps(y: Any, n: int, shape: tuple[int, ...], num_classes: int | None = None, *, name: str = "y",
                     ignore_index: int | None = DENSE.ignore_index) -> torch.Tensor:
    """Validate int label maps ``(N, H, W)`` of a dense-prediction model (``shape`` = its output's ``(H, W)``):
    values in ``[0, num_classes)`` or ``ignore_index`` (pixels that do not count; ``None``: none allowed)."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of int64 label maps (N, H, W), got {type(y).__name__}")
    if y.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
        raise InputError(f"{name} must hold integer class indices (int64), got {y.dtype}; use {name}.long()")
    want = (n, *shape)
    if tuple(y.shape) != want:
        hint = ("; labels (N,) are for classifiers — a segmenter needs one label per pixel" if y.ndim == 1 else "")
        raise InputError(f"{name} has shape {tuple(y.shape)}, but the model predicts label maps of shape {want} "
                         f"for these {n} inputs: one label per output pixel{hint}")
    y = y.long()
    counted = y if ignore_index is None else y[y != ignore_index]
    if counted.numel() and (int(counted.min()) < 0 or (num_classes is not None and int(counted.max()) >= num_classes)):
        ign = "" if ignore_index is None else f" (or {ignore_index}, the ignore index)"
        raise InputError(f"{name} has labels in [{int(counted.min())}, {int(counted.max())}], outside "
                         f"[0, {num_classes}){ign} for a model with {num_classes} classes per pixel")
    return y


def model_task(model: Any, x: torch.Tensor) -> str:
    """The task of ``model`` read from its output on (up to two samples of) ``x``: ``"dense"`` when it returns
    logits ``(N, K, H, W)``, else ``"classification"`` (validated by :func:`check_model` afterwards)."""
    if not isinstance(model, nn.Module):
        return "classification"
    clf = as_classifier(model)
    probe = match_dtype(x[:2], clf) if x.is_floating_point() else x[:2]
    try:
        with torch.inference_mode():
            out = clf(probe)
    except RuntimeError:
        return "classification"  # check_model reports the failure with its shapes
    return "dense" if isinstance(out, torch.Tensor) and out.ndim == 4 else "classification"


def check_model(model: Any, x: torch.Tensor | None = None, *, task: str = "classification") -> tuple[Classifier, int]:
    """Wrap and validate a model; return ``(classifier, num_classes)``.

    Refuses a model in training mode, a model on another device than ``x``, and a model whose output on
    (up to two samples of) ``x`` is not finite logits of shape ``(N, K)``, ``K >= 2`` — or, for
    ``task="dense"``, ``(N, K, H, W)`` (then ``clf.output_shape`` is set to ``(H, W)``).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"expected a torch.nn.Module returning logits (N, K), got {type(model).__name__}"
        )
    clf = as_classifier(model)
    training = [n or type(m).__name__ for n, m in clf.named_modules() if m.training]
    if training:
        raise ModelError(
            f"the model is in training mode ({', '.join(training[:3])}); call model.eval() first — "
            "attacks never switch modes silently, because dropout/batch-norm would change the answer"
        )
    if x is None:
        return clf, -1
    p = next(clf.parameters(), None)
    if p is not None and p.device != x.device:
        raise ModelError(f"model is on {p.device} but inputs are on {x.device}; move one of them")
    check_input_shape(clf, x)
    probe = match_dtype(x[:2], clf) if x.is_floating_point() else x[:2]
    try:
        with torch.inference_mode():
            out = clf(probe)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ""
        if x.ndim == 3:
            hint = " (a 3-D x is read as a batch (N, H, W); one image (C, H, W) needs x.unsqueeze(0))"
        elif x.ndim == 2:
            hint = " (flat (N, D) inputs; an image model needs (N, C, H, W): x.reshape(N, C, H, W))"
        raise ModelError(
            f"the model fails on inputs of shape {tuple(x.shape)} (one sample: {tuple(x.shape[1:])}, "
            f"{str(probe.dtype).removeprefix('torch.')}){hint}: {first} — give inputs of the shape the model "
            "expects"
        ) from e
    m = min(2, x.shape[0])
    if task == "dense":
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            raise ModelError(f"this method needs a dense-prediction model (a segmenter returning logits (N, K, H, W)); "
                             f"the model is a classifier (it returns {tuple(out.shape)}): attack it with a "
                             "classification attack (pgd, fgsm, ...)")
        DENSE.check_output(out, m)
        clf.output_shape = tuple(out.shape[2:])  # type: ignore[attr-defined]
    else:
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            raise ModelError(f"the model returns per-pixel logits {tuple(out.shape)} (a segmenter): this method needs "
                             "a classifier returning (N, K); attack a segmenter with houdini or dense-pgd")
        CLASSIFICATION.check_output(out, m)
    if not torch.isfinite(out).all():
        raise ModelError("model returns NaN or inf logits on these inputs")
    warnings = []
    if out.ndim == 2 and _looks_like_probabilities(out):
        warnings.append(PROBABILITIES_WARNING)
        if not getattr(clf, "_probabilities_logged", False):
            log.warning("%s: %s", clf.name, PROBABILITIES_WARNING)
            clf._probabilities_logged = True  # type: ignore[attr-defined]
    clf.output_warnings = warnings
    return clf, int(out.shape[1])


def check_norm(norm: Any, allowed=("2", "inf")) -> str:
    """Normalise a norm spec (2, '2', 'l2', inf, 'inf', 'linf', 1, 'l1', 0) to a string."""
    s = str(norm).lower().removeprefix("l")
    if s in ("infinity", "nf", str(math.inf)):
        s = "inf"
    if s in ("2.0", "1.0", "0.0"):
        s = s[0]
    if s not in allowed:
        raise OptionError(f"norm {norm!r} is not supported here; choose one of {', '.join(allowed)}")
    return s


def check_positive(value: Any, name: str, *, allow_zero: bool = False, integer: bool = False) -> Any:
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value):
        raise OptionError(f"{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise OptionError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def check_candidates(candidates: Any) -> int:
    """The number of classes a DeepFool-type step considers: an integer >= 2 (the predicted class and at
    least one other)."""
    check_positive(candidates, "candidates", integer=True)
    if candidates < 2:
        raise OptionError(f"candidates must be >= 2 (the predicted class and at least one other), got {candidates}")
    return candidates


def check_iterations(value: Any, name: str) -> int:
    """An iteration count of an attack: an integer >= 1 (the rule of the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} counts iterations and must be an integer >= 1, got {value!r}")
    return value


def check_images(x: Any, what: str, does: str, *, alternative: str | None = None, min_size: int = 1) -> None:
    """Refuse, before any work, inputs that are not a batch of images ``(N, C, H, W)`` (at least ``min_size``
    pixels a side) for a method that needs image geometry (``what`` ``does``: e.g. "ManiFool" "transforms
    images"). Non-tensors are left to :func:`check_x`."""
    if not isinstance(x, torch.Tensor):
        return
    if x.ndim != 4:
        raise InputError(f"{what} {does}: it needs images (N, C, H, W), got shape {tuple(x.shape)}; a flat (N, D) "
                         "input has no geometry: reshape it (x.reshape(N, C, H, W)) and give the model a Classifier "
                         "that accepts images" + (f", or use {alternative}" if alternative else ""))
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise InputError(f"{what} needs images of at least {min_size}×{min_size} pixels, got {tuple(x.shape[2:])}")


@dataclass
class Prepared:
    """What :func:`prepare` hands an attack or a geometry tool: the validated classifier and inputs.

    ``y`` is the given labels, or the clean prediction when none were given (the papers' convention for ρ_adv
    over a test set); ``pred`` the clean prediction; ``target`` the target labels (targeted attacks) or
    ``None``; ``num_classes`` the number of logits."""

    clf: Classifier
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    num_classes: int
    pred: torch.Tensor
    #: the task (georobust.core.tasks): ``classification`` (labels (N,)) or ``dense`` (label maps (N, H, W))
    task: str = "classification"

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def prepare(model: Any, x: Any, y: Any = None, *, target: Any = None, labels_required: bool = False,
            task: str = "classification") -> Prepared:
    """The common preamble of a public entry point: validate model, inputs, labels and targets, once.

    ``task="dense"``: the model must be a segmenter (logits ``(N, K, H, W)``); ``y`` and ``target`` are label maps
    ``(N, H, W)`` (:func:`check_label_maps`; an int target is that class at every pixel). Returns a
    :class:`Prepared`. Public functions call it once and pass the prepared pieces to trusting
    internals (``deepfool`` → ``deepfool_batch``): nothing is validated or predicted twice.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module returning logits (N, K), got {type(model).__name__}")
    clf = as_classifier(model)
    x = check_x(x, clf.bounds)
    check_input_shape(clf, x)
    x = match_dtype(x, clf)
    clf, k = check_model(clf, x, task=get_task(task).name)
    dense = get_task(task).name == "dense"
    shape = tuple(clf.output_shape) if dense else ()
    if y is None:
        if labels_required:
            raise InputError("labels y are required for this method")
    else:
        if isinstance(y, torch.Tensor) and y.device != x.device:
            raise InputError(f"labels are on {y.device} but inputs are on {x.device}")
        y = check_label_maps(y, x.shape[0], shape, k) if dense else check_labels(y, x.shape[0], k)
    if target is not None:
        if isinstance(target, int) and not isinstance(target, bool):
            target = torch.full((x.shape[0], *shape), target, dtype=torch.long, device=x.device)
        if dense:
            target = check_label_maps(target, x.shape[0], shape, k, name="target", ignore_index=None)  # every pixel
        else:
            target = check_labels(target, x.shape[0], k, name="target")
        if target.device != x.device:
            raise InputError(f"target is on {target.device} but inputs are on {x.device}")
    with torch.inference_mode():
        pred = predict(clf, x)
    if y is None:
        y = pred.clone()
    return Prepared(clf, x, y, target, k, pred, task=get_task(task).name)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels of ``model`` on ``x``, batched, under inference mode."""
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])
