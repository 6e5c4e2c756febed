"""The one projected-gradient kernel (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models
resistant to adversarial attacks", ICLR 2018), shared by the PGD attack and adversarial training.

Each step ascends the per-sample loss ``J`` (:func:`~georobust.core.losses.attack_loss`) along the steepest
direction of the norm and projects back onto the ball around ``x`` and into the box::

    x_{t+1} = clip_[lo, hi]( x + Π_eps( x_t + α · d(∇ₓJ(x_t)) − x ) ),   d = sign(·) (L∞) or ·/‖·‖₂ (L2)

Two uses, one loop:

* **lean** (``tracker=None``): the inner maximisation of adversarial training — returns the last iterate,
  never synchronises with the host, keeps nothing else;
* **tracked** (a :class:`WorstCase`): the attack — every iterate ``x_0 … x_T`` is scored, per sample, by
  ``(success, J)`` lexicographically and the best is kept; with early stopping a sample leaves the active set
  at its first successful iterate (the active set is compacted every ``compact_every`` steps).
"""

from __future__ import annotations

import math

import torch

from ..core.losses import attack_loss, loss_grad
from ..core.ops import bcast, project, steepest_direction


class WorstCase:
    """Per-sample worst case over every iterate offered (all steps of all restarts) for ``n`` samples.

    ``best_x`` starts at ``x``; an iterate replaces it when it is successful and the best is not, or (with
    ``early_stop=False``) when it has the same status and a higher loss; with ``early_stop=True`` a sample's
    best is frozen at its first successful iterate. ``iterations`` counts gradient evaluations per sample.

    ``judge(logits, y, target) -> (success, score)``, when given, replaces the classification rule (arg-max
    label ≠ ``y`` / = ``target``) and ranks the iterates by ``score`` instead of the loss — a dense task judges
    per-pixel maps and ranks by the fraction of pixels that meet the goal.
    """

    def __init__(self, x: torch.Tensor, *, early_stop: bool = True, judge=None):
        n, dev = x.shape[0], x.device
        self.early_stop = bool(early_stop)
        self.judge = judge
        self.best_x = x.detach().clone()
        self.best_loss = torch.full((n,), -math.inf, device=dev)
        self.success = torch.zeros(n, dtype=torch.bool, device=dev)
        self.iterations = torch.zeros(n, dtype=torch.long, device=dev)

    def update(self, index: torch.Tensor, xa: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor,
               y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Offer iterates ``xa`` of samples ``index``; return which of them are successful."""
        if self.judge is not None:
            ok, loss = self.judge(logits, y, target)
        else:
            lab = logits.argmax(1)
            ok = lab == target if target is not None else lab != y
        old_ok, old_loss = self.success[index], self.best_loss[index]
        if self.early_stop:
            better = ~old_ok & (ok | (loss > old_loss))
        else:
            better = (ok & ~old_ok) | ((ok == old_ok) & (loss > old_loss))
        self.best_x[index] = torch.where(bcast(better, xa), xa, self.best_x[index])
        self.best_loss[index] = torch.where(better, loss.to(old_loss.dtype), old_loss)
        self.success[index] = old_ok | ok
        return ok


def pgd_kernel(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int, step_size: float,
               bounds: tuple[float, float], target: torch.Tensor | None = None, loss: str = "ce",
               start: torch.Tensor | None = None, tracker: WorstCase | None = None,
               index: torch.Tensor | None = None, compact_every: int = 1) -> torch.Tensor:
    """Run ``steps`` projected steepest-ascent steps of ``loss`` from ``start`` (default ``x``).

    Nothing is validated: public callers validate once (:func:`georobust.attacks.pgd.pgd`, the training
    objectives). ``model`` is called as it is (the caller chooses its mode). With a ``tracker``, iterates are
    offered to it under the global sample positions ``index`` (default ``0 … N−1``), including the last
    one, and early stopping shrinks the active set; the return value is then the last iterate of the samples
    still active. Without one, the last iterate of every sample is returned (detached).
    """
    lo, hi = bounds
    x0 = x.detach()
    xa = x0.clone() if start is None else start.detach()
    if tracker is not None and index is None:
        index = torch.arange(x0.shape[0], device=x0.device)
    ya, ta = y, target
    for t in range(steps + 1):
        if t < steps:
            g, ell, logits = loss_grad(model, xa, ya, ta, loss)
            if tracker is not None:
                tracker.iterations[index] += 1
        elif tracker is None:
            break
        else:
            with torch.inference_mode():
                logits = model(xa)
                ell = attack_loss(logits, ya, ta, loss)
        if tracker is not None:
            ok = tracker.update(index, xa, logits, ell, ya, ta)
            if t == steps:
                break
            if tracker.early_stop and (t + 1) % compact_every == 0:
                keep = (~ok).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                if keep.numel() < index.numel():
                    index, x0, xa, ya, g = index[keep], x0[keep], xa[keep], ya[keep], g[keep]
                    ta = None if ta is None else ta[keep]
        xa = xa + step_size * steepest_direction(g, norm)
        xa = (x0 + project(xa - x0, eps, norm)).clamp(lo, hi)
    return xa.detach()
