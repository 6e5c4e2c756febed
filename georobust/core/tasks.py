"""Tasks: what a model outputs and how an attack's success is judged on it.

Every attack is registered with the task it attacks (``registry.attacks.register(..., task=...)``), and its
result is verified by that task: the model is re-run on ``x_adv`` and the task says whether the goal is met.

``classification``
    Output: logits ``(N, K)``, ``K >= 2``. Prediction: the arg-max label. Success: the label differs from
    ``y`` (untargeted) or equals ``target``.
``dense``
    Dense prediction (semantic segmentation): logits ``(N, K, H, W)``. Prediction: the per-pixel arg-max
    ``(N, H, W)``. Labels ``y`` are ``(N, H, W)`` maps (``ignore_index`` pixels do not count); a target is a
    map too. Success: at least ``min_fraction`` of the counted pixels changed away from ``y`` (untargeted) or
    reached the target (targeted) — Houdini (Cisse et al., NeurIPS 2017) reports per-pixel accuracy and mIoU,
    which :meth:`Dense.pixel_accuracy` and :meth:`Dense.miou` give.
``detection``
    Object detection: per input a set of boxes ``(M, 4)`` (``x1, y1, x2, y2``) with scores ``(M,)``, as a list
    of ``(boxes, scores)`` pairs. Prediction: the boxes scored at least ``score_threshold``. Labels ``y``: the
    ground-truth boxes per input. Success (a *hiding* attack, e.g. a patch that hides people): no predicted
    box overlaps a ground-truth box with IoU ``>= iou_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, ModelError, unknown_name


@dataclass(frozen=True)
class Classification:
    name: str = "classification"

    def check_output(self, out, n: int) -> None:
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"model must return logits of shape (N, K); for {n} inputs it returned {shape}")
        if out.shape[1] < 2:
            raise ModelError(f"model returns {out.shape[1]} logit(s); a classifier needs K >= 2 "
                             "(use two logits for binary)")

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(1)

    def success(self, pred_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return pred_adv == target if target is not None else pred_adv != y


@dataclass(frozen=True)
class Dense:
    name: str = "dense"
    ignore_index: int = -100
    min_fraction: float = 1.0

    def check_output(self, out, n: int) -> None:
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"a dense-prediction model must return logits (N, K, H, W); for {n} inputs it "
                             f"returned {shape}")
        if out.shape[1] < 2:
            raise ModelError(f"a dense-prediction model needs K >= 2 classes per pixel, got {out.shape[1]}")

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(1)

    def _check_maps(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        if y.shape != pred.shape:
            raise InputError(f"label maps have shape {tuple(y.shape)}, the model predicts {tuple(pred.shape)}")

    def changed_fraction(self, pred_adv: torch.Tensor, y: torch.Tensor,
                         target: torch.Tensor | None = None) -> torch.Tensor:
        """Per sample: the fraction of counted pixels that meet the goal (moved off ``y``, or onto ``target``)."""
        self._check_maps(pred_adv, y)
        counted = y != self.ignore_index
        hit = pred_adv == target if target is not None else pred_adv != y
        num = (hit & counted).flatten(1).sum(1).double()
        return num / counted.flatten(1).sum(1).clamp_min(1).double()

    def success(self, pred_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.changed_fraction(pred_adv, y, target) >= self.min_fraction - 1e-12

    def pixel_accuracy(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per sample: the fraction of counted pixels predicted right."""
        self._check_maps(pred, y)
        counted = y != self.ignore_index
        return ((pred == y) & counted).flatten(1).sum(1).double() / counted.flatten(1).sum(1).clamp_min(1).double()

    def miou(self, pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
        """Mean intersection over union over the classes present in ``pred`` or ``y`` (counted pixels)."""
        self._check_maps(pred, y)
        counted = y != self.ignore_index
        ious = []
        for c in range(num_classes):
            p, t = (pred == c) & counted, (y == c) & counted
            union = int((p | t).sum())
            if union:
                ious.append(int((p & t).sum()) / union)
        return float(sum(ious) / len(ious)) if ious else float("nan")


    def set_metrics(self, pred: torch.Tensor, y: torch.Tensor, num_classes: int,
                    target: torch.Tensor | None = None) -> dict[str, float]:
        """Over a whole set of label maps: ``miou`` (:meth:`miou`), ``pixel_accuracy`` (every counted pixel
        weighs the same) and, with ``target``, ``target_agreement`` (the fraction of counted pixels predicted as
        the target)."""
        self._check_maps(pred, y)
        counted = y != self.ignore_index
        total = counted.sum().clamp_min(1).double()
        out = {"miou": self.miou(pred, y, num_classes),
               "pixel_accuracy": float(((pred == y) & counted).sum().double() / total)}
        if target is not None:
            out["target_agreement"] = float(((pred == target) & counted).sum().double() / total)
        return out

def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(M, G)`` of boxes ``a`` ``(M, 4)`` and ``b`` ``(G, 4)``, corners ``x1, y1, x2, y2``."""
    a, b = a.double(), b.double()
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-12)


@dataclass(frozen=True)
class Detection:
    name: str = "detection"
    score_threshold: float = 0.0
    iou_threshold: float = 0.5

    def check_output(self, out, n: int) -> None:
        if not isinstance(out, (list, tuple)) or len(out) != n:
            raise ModelError(f"a detector must return one (boxes, scores) pair per input; for {n} inputs it "
                             f"returned {type(out).__name__}")
        for i, pair in enumerate(out):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ModelError(f"detection {i} is not a (boxes, scores) pair")
            boxes, scores = pair
            if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
                raise ModelError(f"detection {i}: boxes must be (M, 4) and scores (M,), got "
                                 f"{tuple(boxes.shape)} and {tuple(scores.shape)}")

    def predict(self, out) -> list[torch.Tensor]:
        return [boxes[scores >= self.score_threshold] for boxes, scores in out]

    def success(self, pred_adv: list[torch.Tensor], y: list[torch.Tensor], target=None) -> torch.Tensor:
        if target is not None:
            raise InputError("detection attacks here are hiding attacks: they take no target")
        if len(pred_adv) != len(y):
            raise InputError(f"{len(y)} ground-truth box sets for {len(pred_adv)} inputs")
        hidden = []
        for boxes, gt in zip(pred_adv, y):
            if gt.numel() == 0 or boxes.numel() == 0:
                hidden.append(True)
                continue
            hidden.append(bool((box_iou(boxes, gt) < self.iou_threshold).all()))
        return torch.tensor(hidden, dtype=torch.bool)


TASKS = {"classification": Classification(), "dense": Dense(), "detection": Detection()}


def task(name) -> Classification | Dense | Detection:
    """The task registered as ``name`` (or a task object passed through, e.g. ``Dense(min_fraction=0.5)``)."""
    if isinstance(name, (Classification, Dense, Detection)):
        return name
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]
