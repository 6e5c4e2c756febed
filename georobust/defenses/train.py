"""One training loop for every objective: ``fit``.

Deterministic for a seed (the shuffling generator and torch's global RNG are seeded and checkpointed);
a checkpoint after each epoch holds the model, optimizer, schedule and RNG states, so ``resume=True``
continues an interrupted run exactly where the last completed epoch left it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checks import check_labels, check_positive, check_x
from ..errors import CheckpointError, OptionError, unknown_name
from ..models.classifier import Classifier, as_classifier
from .objectives import Objective, eval_mode, inner_max, make_objective

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class History:
    """Per-epoch metrics of a ``fit`` run (also written as JSON lines to ``checkpoint_dir/log.jsonl``)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}


def _make_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise unknown_name("optimizer", name, OPTIMIZERS)


def _make_schedule(name: str, opt, total_steps: int):
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    if name == "step":  # ÷10 at 50% and 75% of training
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.1 ** ((s >= 0.5 * total_steps) + (s >= 0.75 * total_steps)))
    raise unknown_name("lr schedule", name, SCHEDULES)


def evaluate_accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    was = model.training
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                      for i in range(0, x.shape[0], batch_size))
    model.train(was)
    return correct / x.shape[0]


def robust_accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "inf",
                    steps: int = 10, batch_size: int = 512) -> float:
    """Accuracy under a ``steps``-step PGD of radius ``eps`` (no random start: deterministic, consumes no
    randomness), in eval mode — the cheap per-epoch robustness signal of :func:`fit`. An upper bound on
    the true robust accuracy; use :func:`georobust.attacks.pgd.pgd` with restarts for a real evaluation."""
    correct = 0
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            xa = inner_max(model, xb, yb, eps=eps, norm=norm, steps=steps, random_start=False)
            with torch.inference_mode():
                correct += int((model(xa).argmax(1) == yb).sum())
    return correct / x.shape[0]


def fit(model, train_data: tuple[torch.Tensor, torch.Tensor], objective: str | Objective = "standard", *,
        epochs: int = 10, optimizer: str = "adam", lr: float = 1e-3, schedule: str = "cosine",
        weight_decay: float = 0.0, momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
        checkpoint_dir: str | Path | None = None, resume: bool = False,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None, robust_eps: float | None = None,
        robust_limit: int = 500, objective_options: dict | None = None,
        on_step: Callable[[int, int, int, dict], None] | None = None,
        stop_after_epoch: int | None = None, robust_steps: int = 10) -> History:
    """Train ``model`` in place on ``train_data`` with ``objective``; return the per-epoch history.

    Args:
        objective: a registered name (``standard``, ...) or an :class:`Objective`.
        optimizer, lr, schedule, weight_decay, momentum: optimisation (schedule stepped per batch).
        checkpoint_dir: where ``checkpoint.pt`` (after each epoch) and ``log.jsonl`` go.
        resume: continue from ``checkpoint_dir/checkpoint.pt`` (an error if the settings differ).
        eval_data: ``(x, y)`` for per-epoch clean accuracy; with ``robust_eps`` also the L∞ robust
            accuracy under a ``robust_steps``-step PGD (no random start, so deterministic; the lean
            :func:`~georobust.defenses.objectives.inner_max`) on its first ``robust_limit`` samples — a
            cheap robustness signal, logged as ``pgd{robust_steps}_robust_accuracy@{eps}``.
        on_step: ``on_step(epoch, step, steps_per_epoch, terms)`` after each batch (progress bars).
        stop_after_epoch: stop (as if killed) after this epoch — for tests of resume.
    """
    model = as_classifier(model)
    x, y = train_data
    x = check_x(x, model.bounds)
    y = check_labels(y, x.shape[0])
    check_positive(epochs, "epochs", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    check_positive(lr, "lr")
    check_positive(robust_steps, "robust_steps", integer=True)
    if robust_eps is not None:
        check_positive(robust_eps, "robust_eps")
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    if schedule not in SCHEDULES:
        raise unknown_name("lr schedule", schedule, SCHEDULES)
    obj = make_objective(objective, **(objective_options or {}))
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    settings = {"objective": obj.config(), "epochs": epochs, "optimizer": optimizer, "lr": lr,
                "schedule": schedule, "weight_decay": weight_decay, "momentum": momentum,
                "batch_size": batch_size, "seed": seed, "n_train": int(x.shape[0])}

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay, momentum)
    sched = _make_schedule(schedule, opt, epochs * steps_per_epoch)
    history = History()
    start_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / "checkpoint.pt" if ckpt_dir is not None else None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise CheckpointError(f"resume=True but there is no checkpoint in {ckpt_dir}")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        saved = json.loads(state["settings"])
        if saved != json.loads(json.dumps(settings)):
            diff = {k: (saved.get(k), settings.get(k)) for k in settings if saved.get(k) != settings.get(k)}
            raise CheckpointError(f"checkpoint in {ckpt_dir} was made with other settings: {diff}")
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        gen.set_state(state["gen_state"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history.epochs = json.loads(state["history"])
        start_epoch = int(state["epoch"])
        log.info("resuming from epoch %d of %d", start_epoch, epochs)

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(x.shape[0], generator=gen)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            obj.set_progress(epoch + (step + 1) / steps_per_epoch, epochs)
            loss, terms = obj(model, xb, yb)
            if not torch.isfinite(loss):
                raise OptionError(f"loss became {float(loss)} at epoch {epoch + 1}, step {step}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=params)  # not into inputs that an objective differentiated (CURE, LLR, ...)
            opt.step()
            sched.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            if on_step is not None:
                on_step(epoch, step, steps_per_epoch, terms)
        model.eval()
        rec: dict[str, Any] = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
                               "lr": sched.get_last_lr()[0]}
        rec.update({k: v / x.shape[0] for k, v in sums.items()})
        if eval_data is not None:
            ex, ey = eval_data[0].to(device), eval_data[1].to(device)
            rec["test_accuracy"] = evaluate_accuracy(model, ex, ey)
            if robust_eps is not None:
                rec[f"pgd{robust_steps}_robust_accuracy@{robust_eps:g}"] = robust_accuracy(
                    model, ex[:robust_limit], ey[:robust_limit], eps=robust_eps, steps=robust_steps)
        history.epochs.append(rec)
        log.info("epoch %d/%d: %s", epoch + 1, epochs, rec)
        if ckpt_dir is not None:
            with open(ckpt_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            state = {"model": model.module.state_dict(), "optimizer": opt.state_dict(),
                     "schedule": sched.state_dict(), "gen_state": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "epoch": epoch + 1,
                     "history": json.dumps(history.epochs), "settings": json.dumps(settings)}
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            tmp = ckpt.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(ckpt)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    model.eval()
    return history
