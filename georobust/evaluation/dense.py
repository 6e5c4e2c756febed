"""The robustness evaluation of a segmenter (task ``dense``): mIoU and pixel accuracy versus ε under the dense
attacks (Houdini, per-pixel cross-entropy PGD) — the segmentation counterpart of the robust-accuracy curve.

:func:`georobust.evaluation.evaluate` calls :func:`evaluate_dense` when the model returns per-pixel logits
``(N, K, H, W)`` (the task is read from the model's output). mIoU is a set-level number (per class, over all
pixels of all scenes), so there is no per-sample worst case over attacks as for classifiers: each attack has
its own curve, and the lowest mIoU at each ε is reported as ``worst_case`` (an upper bound on the mIoU an
adversary can force, as every curve here is).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import registry
from ..checks import check_norm, prepare
from ..errors import OptionError
from ..results import AttackResult
from .metrics import segmentation_metrics

log = logging.getLogger(__name__)

#: budgets evaluated by default on a segmenter (inputs in [0, 1])
DENSE_EPS = {"inf": (0.0, 0.005, 0.01, 0.02, 0.03, 0.05), "2": (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)}
#: attacks run by default on a segmenter
DENSE_ATTACKS = ("houdini", "dense-pgd")


@dataclass
class DenseEvaluation:
    """mIoU and pixel accuracy of a segmenter versus ε, per attack (``miou[attack][j]`` at ``eps[j]``)."""

    model: str
    data: str
    n: int
    norm: str
    eps: list[float]
    clean_accuracy: float  # pixel accuracy of the clean segmentation
    clean_miou: float
    miou: dict[str, list[float]] = field(default_factory=dict)
    pixel_accuracy: dict[str, list[float]] = field(default_factory=dict)
    worst_case: list[float] = field(default_factory=list)  # lowest mIoU over the attacks at each ε
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    task: str = "dense"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> list[list[str]]:
        rows = [["attack"] + [f"ε={e:g}" for e in self.eps] + ["seconds"]]
        for a in self.miou:
            rows.append([f"{a} mIoU"] + [f"{v:.3f}" for v in self.miou[a]]
                        + [f"{self.details.get(a, {}).get('seconds', 0):.2f}"])
            rows.append([f"{a} pixel acc."] + [f"{v:.3f}" for v in self.pixel_accuracy[a]] + [""])
        rows.append(["lowest mIoU"] + [f"{v:.3f}" for v in self.worst_case] + [f"{self.seconds:.2f}"])
        return rows


def check_dense_attacks(names: Sequence[str], norm: str) -> None:
    """Every attack of a segmentation evaluation attacks segmenters (task ``dense``) and supports ``norm``."""
    for a in names:
        e = registry.attacks.get(a)
        if e.task != "dense":
            dense = [n for n in registry.attacks.names() if registry.attacks.get(n).task == "dense"]
            raise OptionError(f"attack {a!r} attacks {e.task} models, but the model is a segmenter (it returns "
                              f"per-pixel logits); use {', '.join(dense)}")
        if norm not in e.norms:
            raise OptionError(f"attack {a!r} does not support norm {norm} (it supports {', '.join(e.norms)})")


def evaluate_dense(model, x: torch.Tensor, y: torch.Tensor, *, attacks: Sequence[str] | None = None,
                   eps: Sequence[float] | None = None, norm: Any = "inf", model_name: str = "model",
                   data_name: str = "data", options: dict[str, dict[str, Any]] | None = None,
                   on_attack: Callable[[str, int, int], None] | None = None,
                   keep_results: bool = True) -> tuple[DenseEvaluation, dict[str, AttackResult]]:
    """mIoU and pixel accuracy of segmenter ``model`` on ``(x, y)`` (label maps) under each attack at each ε;
    return the :class:`DenseEvaluation` and the last result per attack (at the largest ε)."""
    norm = check_norm(norm)
    attacks = list(attacks) if attacks is not None else [a for a in DENSE_ATTACKS if a in registry.attacks]
    if not attacks:
        raise OptionError("no attack to run")
    check_dense_attacks(attacks, norm)
    options = options or {}
    for a in options:
        if a not in attacks:
            raise OptionError(f"options given for attack {a!r}, which this evaluation does not run "
                              f"(attacks: {', '.join(attacks)}); add it to attacks= or drop its options")
    entries = [registry.attacks.get(a) for a in attacks]
    for e in entries:
        e.check_options(options.get(e.name, {}))
    eps = sorted(float(e) for e in (eps if eps is not None else DENSE_EPS[norm]))
    if any(e < 0 for e in eps):
        raise OptionError(f"eps values must be >= 0, got {eps}")
    p = prepare(model, x, y, labels_required=True, task="dense")
    t0 = time.perf_counter()
    clean = segmentation_metrics(p.pred, p.y, p.num_classes)
    ev = DenseEvaluation(model_name, data_name, p.n, norm, eps, clean["pixel_accuracy"], clean["miou"])
    ev.warnings = list(getattr(p.clf, "output_warnings", None) or [])
    results: dict[str, AttackResult] = {}
    for e in entries:
        ta = time.perf_counter()
        mious, accs = [], []
        for j, ep in enumerate(eps):
            if on_attack is not None:
                on_attack(e.name, j, len(eps))
            if ep == 0:
                mious.append(clean["miou"])
                accs.append(clean["pixel_accuracy"])
                continue
            r = e.fn(p.clf, p.x, p.y, norm=norm, eps=ep, **options.get(e.name, {}))
            m = segmentation_metrics(r.label_adv, p.y, p.num_classes)
            mious.append(m["miou"])
            accs.append(m["pixel_accuracy"])
            results[e.name] = r
        ev.miou[e.name], ev.pixel_accuracy[e.name] = mious, accs
        ev.details[e.name] = {"seconds": time.perf_counter() - ta}
        log.info("%s: mIoU %s", e.name, mious)
    ev.worst_case = [min(ev.miou[a][j] for a in ev.miou) for j in range(len(eps))]
    ev.seconds = time.perf_counter() - t0
    return ev, results if keep_results else {}

