"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep
neural networks", CVPR 2016), multi-class, for the L2 and L∞ norms.

At ``x_i`` the classifier is linearised around the original class ``k̂`` and the candidate classes ``k``
(fixed once: the ``candidates`` largest logits at ``x₀``, the predicted class first)::

    f'_k = f_k(x_i) − f_k̂(x_i),    w'_k = ∇f_k(x_i) − ∇f_k̂(x_i)
    l    = argmin_k |f'_k| / ‖w'_k‖_q                       (the closest linearised boundary)
    r_i  = (|f'_l| / ‖w'_l‖_q + 1e-4) · |w'_l|^{q−1} ⊙ sign(w'_l) / ‖w'_l‖_q^{q−1}

with ``q`` the dual exponent of ``p`` (``q = 2`` for L2, ``q = 1`` for L∞, where the step is
``(|f'_l|/‖w'_l‖₁ + 1e-4)·sign(w'_l)``). The ``1e-4`` is the reference implementation's. The steps add up
to ``r_tot`` and the iterate is ``x_{i+1} = x₀ + (1+η)·r_tot`` (overshoot ``η``, paper: 0.02); a sample
stops as soon as ``x_{i+1}`` is misclassified, or after ``max_iter`` steps. For an affine classifier the
first step is exactly the minimal perturbation ``min_k |f'_k| / ‖w'_k‖_q`` (plus the 1e-4 and overshoot).

``clip=True`` (default) clamps each iterate into the model's input bounds, as image attacks must (and
as Foolbox does); it changes the algorithm — the paper's DeepFool is unconstrained — so ``clip=False``
gives the paper's iteration (the returned ``x_adv`` is still clamped into the bounds and re-verified).

Implementation: the per-class gradients are taken batched over the *active* samples (those not yet
fooled): one forward pass per iteration and one backward for each of the ``candidates − 1`` class
differences (one backward per class over the active batch), never per sample. The same forward gives
the stopping test, so no pass is wasted.

:func:`deepfool_batch` is the reusable building block (universal perturbations, SparseFool, subspace
DeepFool, curvature at the boundary): it returns the boundary point, ``r_tot``, the class reached and the
convergence flag, accepts explicit candidate classes, and a ``project`` hook applied to the gradients
(``project(w, idx)`` with ``w`` of shape ``(M, K−1, *x.shape[1:])`` and ``idx`` the active samples'
indices), so DeepFool restricted to a subspace reuses the same loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checks import check_candidates, check_norm, check_positive, prepare
from ..core.ops import bcast
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)

#: the constant the reference implementation adds to each step's length, "for numerical stability"
STEP_EPS = 1e-4

Project = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DeepFoolOutput:
    """Everything one DeepFool run knows, per sample (all tensors have the batch as first dimension).

    ``x_adv = clip(x + (1+η)·r_tot)`` is the returned example; ``boundary = clip(x + r_tot)`` lies (up to the
    linearisation and the 1e-4) on the decision boundary that was crossed; ``label`` is the class at
    ``x_adv``; ``boundary_class`` the class ``l`` of the last linearised boundary stepped to; ``converged``
    whether ``label`` differs from ``orig`` (the attacked class); ``iterations`` the steps taken.
    """

    x_adv: torch.Tensor
    r_tot: torch.Tensor
    boundary: torch.Tensor
    label: torch.Tensor
    orig: torch.Tensor
    boundary_class: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    classes: torch.Tensor


def top_classes(logits: torch.Tensor, candidates: int) -> torch.Tensor:
    """The ``candidates`` classes with the largest logits, largest first: ``(N, min(candidates, K))``."""
    k = min(int(candidates), logits.shape[1])
    return logits.topk(k, dim=1).indices


def _grads_batched(diff: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Gradients of each column of ``diff`` (M, C) w.r.t. ``xr`` (M, ...): returns (M, C, ...).

    One backward pass per column, each batched over all M samples (their gradients do not mix: models in
    eval mode treat samples independently). On CPU this measured faster than one vmapped backward
    (``is_grads_batched``) or ``torch.func.vmap(jacrev)``, whose batching rules for convolution and
    max-pooling backward are slower than the plain kernels.
    """
    c = diff.shape[1]
    gs = [torch.autograd.grad(diff[:, j].sum(), xr, retain_graph=j < c - 1)[0] for j in range(c)]
    return torch.stack(gs, 1)


def linearise(model, x: torch.Tensor, classes: torch.Tensor, project: Project | None = None,
              idx: torch.Tensor | None = None):
    """Logits at ``x``, ``f'_k = f_k − f_{k̂}`` and ``w'_k = ∇f'_k`` for ``classes`` (first column: ``k̂``).

    Returns ``(logits (M, K), f (M, C), w (M, C, *x.shape[1:]))`` with ``C = classes.shape[1] − 1``;
    ``project(w, idx)`` is applied to ``w`` when given.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        z = logits.gather(1, classes)
        diff = z[:, 1:] - z[:, :1]
        w = _grads_batched(diff, xr)
    w = w.detach()
    if project is not None:
        w = project(w, idx if idx is not None else torch.arange(x.shape[0], device=x.device))
    return logits.detach(), diff.detach(), w


def _step(f: torch.Tensor, w: torch.Tensor, norm: str):
    """Closest linearised boundary and the step to it (plus ``STEP_EPS``); returns ``(r, l_index)``."""
    wf = w.flatten(2)
    wn = wf.norm(dim=2) if norm == "2" else wf.abs().sum(2)  # dual norm ‖w'‖_q
    wn = wn.clamp_min(1e-12)
    dist = f.abs() / wn
    best = dist.argmin(1)
    rows = torch.arange(f.shape[0], device=f.device)
    d, wb, nb = dist[rows, best] + STEP_EPS, w[rows, best], wn[rows, best]
    if norm == "2":
        r = bcast(d / nb, wb) * wb
    else:
        r = bcast(d, wb) * wb.sign()
    return r, best


def deepfool_batch(model, x: torch.Tensor, *, norm: str = "2", overshoot: float = 0.02, max_iter: int = 50,
                   candidates: int = 10, clip: bool = True, classes: torch.Tensor | None = None,
                   active: torch.Tensor | None = None, project: Project | None = None) -> DeepFoolOutput:
    """The DeepFool loop on one batch, without validation (callers validate; see :func:`deepfool`).

    Args:
        model: a :class:`~georobust.Classifier` in eval mode (``model.bounds`` is used when ``clip``).
        x: the batch ``(N, ...)``.
        norm: ``"2"`` or ``"inf"``.
        classes: explicit candidate classes ``(N, K)``, the attacked class first; default: the top
            ``candidates`` logits at ``x``.
        active: boolean mask ``(N,)`` of the samples to attack (the others get ``r_tot = 0``, 0 iterations).
        project: hook ``project(w, idx) -> w`` applied to the gradient differences, e.g. a projection onto
            a subspace (subspace DeepFool); ``idx`` are the indices in ``x`` of the rows of ``w``.
    """
    n = x.shape[0]
    dev = x.device
    lo, hi = model.bounds
    x0 = x.detach()
    if classes is None:
        with torch.inference_mode():
            logits0 = model(x0)
        classes = top_classes(logits0, candidates)
    classes = classes.to(dev)
    orig = classes[:, 0].clone()
    r_tot = torch.zeros_like(x0)
    x_cur = x0.clone()
    label = orig.clone()
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    bclass = orig.clone()
    idx = torch.arange(n, device=dev) if active is None else active.nonzero().squeeze(1)
    if classes.shape[1] < 2:
        raise OptionError("DeepFool needs at least 2 candidate classes")
    for it in range(max_iter + 1):
        if idx.numel() == 0:
            break
        xa = x_cur[idx]
        if it < max_iter:
            logits, f, w = linearise(model, xa, classes[idx], project, idx)
        else:  # last check only
            with torch.inference_mode():
                logits = model(xa)
        lab = logits.argmax(1)
        label[idx] = lab
        still = lab == orig[idx]
        if it == max_iter:
            break
        if not bool(still.all()):
            keep = still.nonzero().squeeze(1)
            idx, xa, f, w = idx[keep], xa[keep], f[keep], w[keep]
            if idx.numel() == 0:
                break
        r, best = _step(f, w, norm)
        bclass[idx] = classes[idx, 1:].gather(1, best[:, None]).squeeze(1)
        r_tot[idx] += r
        xn = x0[idx] + (1.0 + overshoot) * r_tot[idx]
        x_cur[idx] = xn.clamp(lo, hi) if clip else xn
        iters[idx] += 1
    boundary = x0 + r_tot
    if clip:
        boundary = boundary.clamp(lo, hi)
    return DeepFoolOutput(x_adv=x_cur, r_tot=r_tot, boundary=boundary, label=label, orig=orig,
                          boundary_class=bclass, converged=label != orig, iterations=iters, classes=classes)


def check_deepfool_options(norm, overshoot, max_iter, candidates, batch_size, clip) -> str:
    """Validate DeepFool's options before any work (shared by :func:`deepfool` and the analyses that run its
    batches); returns the normalised norm name."""
    norm = check_norm(norm)
    check_positive(overshoot, "overshoot", allow_zero=True)
    check_positive(max_iter, "max_iter", integer=True)
    check_candidates(candidates)
    check_positive(batch_size, "batch_size", integer=True)
    if not isinstance(clip, bool):
        raise OptionError(f"clip must be True or False, got {clip!r}")
    return norm


@attack("deepfool", threat="minimal-lp", norms=("2", "inf"), chunking="position")
def deepfool(model, x, y=None, *, norm=2, overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10,
             clip: bool = True, batch_size: int = 1024) -> Run:
    """DeepFool (Moosavi-Dezfooli et al., CVPR 2016): the minimal perturbation, L2 or L∞, multi-class.

    Args:
        model: an ``nn.Module`` returning logits (no softmax), or a :class:`~georobust.Classifier`, in eval
            mode.
        x: inputs inside the model's bounds.
        y: labels. ``None`` (default) attacks the model's prediction, the paper's convention for ρ_adv over a
            test set. With labels given, samples the model already misclassifies are reported as successes
            with a zero perturbation; the others are attacked away from their (predicted = true) class.
        norm: ``2`` or ``"inf"`` (the latter steps along ``sign(w')`` with ‖·‖₁ distances).
        overshoot: ``η``; the returned perturbation is ``(1+η)·r_tot`` (paper: 0.02).
        max_iter: steps per sample (paper's reference: 50).
        candidates: classes considered, the ``candidates`` largest logits at ``x`` including the predicted
            one (paper: 10), fixed for the whole run.
        clip: clamp every iterate into the model's bounds (default; the paper's DeepFool does not).
        batch_size: samples per batch (the active set shrinks inside each batch).

    Returns:
        An :class:`AttackResult` (``minimal=True``) with verified success and per-sample iterations.
    """
    norm = check_deepfool_options(norm, overshoot, max_iter, candidates, batch_size, clip)
    p = prepare(model, x, y)
    x_adv = torch.empty_like(p.x)
    iters = torch.zeros(p.n, dtype=torch.long, device=p.x.device)
    for i in range(0, p.n, batch_size):
        sl = slice(i, i + batch_size)
        out = deepfool_batch(p.clf, p.x[sl], norm=norm, overshoot=float(overshoot), max_iter=max_iter,
                             candidates=candidates, clip=clip, active=p.pred[sl] == p.y[sl])
        x_adv[sl] = out.x_adv
        iters[sl] = out.iterations
    return Run(p, x_adv, iterations=iters, params={"norm": norm, "candidates": min(candidates, p.num_classes)})
