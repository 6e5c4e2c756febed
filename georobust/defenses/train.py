"""One training loop for every objective: ``fit``.

Deterministic for a seed (the shuffling generator and torch's global RNG are seeded and checkpointed);
a checkpoint after each epoch holds the model, optimizer, schedule and RNG states, so ``resume=True``
continues an interrupted run exactly where the last completed epoch left it.

Checkpoint folder layout (nothing is ever half-written; every file goes through :mod:`georobust.storage`):

* ``checkpoint-epochNNNN.pt`` — the state after epoch NNNN (``torch.save``; read back with
  ``weights_only=True``), written atomically;
* ``checkpoint.json`` — the manifest, written atomically *after* the state file: which file is current, its
  sha256 and size, the epoch, and the cumulative training time. It is the commit point: a kill at any moment
  leaves the previous manifest naming the previous, complete state file (older state files are deleted only
  after the new manifest is in place). On resume the state file's sha256 is verified first, so a truncated or
  damaged checkpoint is a :class:`~georobust.errors.CheckpointError` naming the file, never a zip/pickle
  traceback and never a silent resume into different weights (PyTorch's zip reader does not check CRCs);
* ``log.jsonl`` — one JSON line per completed epoch, rewritten atomically from the checkpointed history after
  every epoch (and on resume), so it never mixes two runs or repeats an epoch.

A folder that already holds a checkpoint is never overwritten silently: ``fit`` refuses to start unless
``resume=True`` (continue it) or ``overwrite=True`` (discard it and start over).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checks import check_input_shape, check_label_maps, check_labels, check_positive, check_x, match_dtype
from ..errors import CheckpointError, OptionError, OutputError, unknown_name
from ..evaluation.metrics import accuracy
from ..models.classifier import Classifier, as_classifier
from ..storage import atomic_write_bytes, atomic_write_text, ensure_writable, sha256_file
from .objectives import Objective, eval_mode, inner_max, make_objective

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class History:
    """Per-epoch metrics of a ``fit`` run (also written as JSON lines to ``checkpoint_dir/log.jsonl``).

    ``train_seconds``: wall-clock seconds of every completed epoch (training and the per-epoch evaluation;
    not the checkpoint writes) summed over the whole run, including the runs before a resume (it is kept in
    the checkpoint); the unfinished epoch of a killed run is not counted, since it is done again.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def last(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}


MANIFEST_NAME = "checkpoint.json"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = 1
_STATE_RE = re.compile(r"checkpoint-epoch\d{4,}\.pt")
_STATE_KEYS = ("model", "optimizer", "schedule", "gen_state", "torch_rng", "epoch", "history", "settings")


def checkpoint_files(checkpoint_dir: str | Path) -> list[Path]:
    """The files of a ``fit`` checkpoint in ``checkpoint_dir`` (manifest, state files, ``log.jsonl``; also an
    unverifiable ``checkpoint.pt`` of georobust before checksums) — empty when it holds no checkpoint."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return []
    names = [MANIFEST_NAME, LOG_NAME, "checkpoint.pt"]
    found = [d / n for n in names if (d / n).exists()]
    found += sorted(q for q in d.glob("checkpoint-epoch*.pt") if _STATE_RE.fullmatch(q.name))
    return found


def _write_log(d: Path, epochs: list[dict[str, Any]]) -> None:
    atomic_write_text(d / LOG_NAME, "".join(json.dumps(r) + "\n" for r in epochs))


def _save_checkpoint(d: Path, state: dict[str, Any], epoch: int, train_seconds: float) -> None:
    """State file, then the manifest (the commit point), then older state files are removed."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    name = f"checkpoint-epoch{epoch:04d}.pt"
    atomic_write_bytes(d / name, data)
    manifest = {"format": CHECKPOINT_FORMAT, "file": name, "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data), "epoch": epoch, "train_seconds": train_seconds}
    atomic_write_text(d / MANIFEST_NAME, json.dumps(manifest, indent=2))
    for old in checkpoint_files(d):
        if old.suffix == ".pt" and old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The verified state of the ``fit`` checkpoint in ``checkpoint_dir`` (what ``resume=True`` continues).

    Raises :class:`~georobust.errors.CheckpointError`, naming the file, when there is no checkpoint, when it is
    incomplete (a state file without its manifest, a manifest whose state file is missing), or when the state
    file's sha256 differs from the manifest's (truncated, damaged, or replaced)."""
    d = Path(checkpoint_dir)
    man = d / MANIFEST_NAME
    start_over = "pass overwrite=True (CLI: --overwrite) to discard it and start over"
    if not man.exists():
        orphans = [q for q in checkpoint_files(d) if q.suffix == ".pt"]
        if orphans:
            raise CheckpointError(
                f"{orphans[-1]} has no manifest {man} (written after it, with its sha256): the checkpoint is "
                "incomplete (killed while the first epoch was being saved?) or was written by a georobust without "
                f"checksums, so it cannot be verified and is not resumed; {start_over}")
        raise CheckpointError(f"resume=True but there is no checkpoint in {d} (no {MANIFEST_NAME}); "
                              "run without resume to start")
    try:
        m = json.loads(man.read_text(encoding="utf-8"))
        name, want, epoch = str(m["file"]), str(m["sha256"]), int(m["epoch"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint manifest {man} is unreadable (truncated or damaged: "
                              f"{type(e).__name__}); {start_over}") from None
    if not _STATE_RE.fullmatch(name):
        raise CheckpointError(f"checkpoint manifest {man} names {name!r}, not a georobust state file; {start_over}")
    state_path = d / name
    if not state_path.is_file():
        raise CheckpointError(f"checkpoint state file {state_path} (named by {man}) is missing; the checkpoint is "
                              f"incomplete and is not resumed; restore the file, or {start_over}")
    got = sha256_file(state_path)
    if got != want:
        raise CheckpointError(
            f"checkpoint state file {state_path} is corrupt: its sha256 {got[:12]}… differs from the {want[:12]}… "
            f"recorded in {man} (truncated, damaged on disk, or replaced); it is not resumed; {start_over}")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # never pass torch's own advice (weights_only=False) on to the user
        raise CheckpointError(f"checkpoint state file {state_path} matches its checksum but cannot be read as a "
                              f"georobust training checkpoint ({type(e).__name__}); {start_over}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or int(state["epoch"]) != epoch:
        raise CheckpointError(f"checkpoint state file {state_path} is not a complete georobust training checkpoint "
                              f"of epoch {epoch} (missing {missing or 'nothing'}); {start_over}")
    state.setdefault("train_seconds", float(m.get("train_seconds", 0.0)))
    return state


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


def _legacy_settings(saved: dict[str, Any], ckpt_dir: Path) -> dict[str, Any]:
    """Settings of a checkpoint written before ``Adversarial`` lost its ``fast`` option: ``fast=False`` was the
    plain objective (the key is dropped, so the checkpoint still resumes); ``fast=True`` is now spelled
    ``fast-adversarial``, which the resumed run must name."""
    obj = saved.get("objective")
    if isinstance(obj, dict) and obj.get("name") == "adversarial" and "fast" in obj:
        if obj["fast"]:
            raise CheckpointError(f"checkpoint in {ckpt_dir} was made with the objective adversarial(fast=True), "
                                  "which is now spelled 'fast-adversarial' (options eps, norm, step_size); it "
                                  "cannot be resumed as 'adversarial': start over with 'fast-adversarial'")
        saved = {**saved, "objective": {k: v for k, v in obj.items() if k != "fast"}}
    return saved


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


def _check_targets(y, n: int, *, name: str = "y") -> torch.Tensor:
    """Labels ``(N,)`` of a classifier, or label maps ``(N, H, W)`` of a segmenter (dense task; the objective's
    cross-entropy is then per pixel, ``ignore_index`` pixels left out)."""
    if isinstance(y, torch.Tensor) and y.ndim == 3:
        return check_label_maps(y, n, tuple(y.shape[1:]), name=name)
    return check_labels(y, n, name=name)


def fit(model, train_data: tuple[torch.Tensor, torch.Tensor], objective: str | Objective = "standard", *,
        epochs: int = 10, optimizer: str = "adam", lr: float = 1e-3, schedule: str = "cosine",
        weight_decay: float = 0.0, momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
        checkpoint_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None, robust_eps: float | None = None,
        robust_limit: int = 500, objective_options: dict | None = None,
        on_step: Callable[[int, int, int, dict], None] | None = None,
        stop_after_epoch: int | None = None, robust_steps: int = 10) -> History:
    """Train ``model`` in place on ``train_data`` with ``objective``; return the per-epoch history.

    Args:
        objective: a registered name (``standard``, ...) or an :class:`Objective`.
        optimizer, lr, schedule, weight_decay, momentum: optimisation (schedule stepped per batch).
        checkpoint_dir: where the checkpoint (after each epoch; see the module docstring) and ``log.jsonl``
            go; checked to be writable before any work.
        resume: continue from the checkpoint in ``checkpoint_dir``, verified against its sha256 first (an
            error if it is missing, incomplete, corrupt, or was made with other settings).
        overwrite: discard a checkpoint (and ``log.jsonl``) already in ``checkpoint_dir`` and start over.
            Without ``resume`` or ``overwrite`` an existing checkpoint is an
            :class:`~georobust.errors.OutputError`, so an earlier run is never destroyed by surprise.
        eval_data: ``(x, y)`` for per-epoch clean accuracy; with ``robust_eps`` also the L∞ robust
            accuracy under a ``robust_steps``-step PGD (no random start, so deterministic; the lean
            :func:`~georobust.defenses.objectives.inner_max`) on its first ``robust_limit`` samples — a
            cheap robustness signal, logged as ``pgd{robust_steps}_robust_accuracy@{eps}``.
        on_step: ``on_step(epoch, step, steps_per_epoch, terms)`` after each batch (progress bars).
        stop_after_epoch: stop (as if killed) after this epoch — for tests of resume.

    Returns:
        a :class:`History`; ``History.train_seconds`` counts the whole run across resumes.
    """
    model = as_classifier(model)
    x, y = train_data
    x = check_x(x, model.bounds)
    check_input_shape(model, x)
    x = match_dtype(x, model)
    y = _check_targets(y, x.shape[0])
    if eval_data is not None:
        ex0 = check_x(eval_data[0], model.bounds, name="eval_data x")
        check_input_shape(model, ex0, name="eval_data x")
        eval_data = (match_dtype(ex0, model, name="eval_data x"),
                     _check_targets(eval_data[1], ex0.shape[0], name="eval_data y"))
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
    if resume and overwrite:
        raise OptionError("resume=True and overwrite=True contradict each other: resume continues the checkpoint, "
                          "overwrite discards it; pass one of them")
    if resume and checkpoint_dir is None:
        raise OptionError("resume=True needs checkpoint_dir= (CLI: --checkpoint-dir), the folder of the checkpoint "
                          "to continue")
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stale: list[Path] = []
    if ckpt_dir is not None:
        ensure_writable(ckpt_dir, directory=True, what="checkpoint folder")
        stale = [] if resume else checkpoint_files(ckpt_dir)
        if stale and not overwrite:
            raise OutputError(f"{ckpt_dir} already holds a training checkpoint ({', '.join(q.name for q in stale)}): "
                              "pass resume=True (CLI: --resume) to continue it or overwrite=True (CLI: --overwrite) "
                              "to start over")
    if resume:
        state = load_checkpoint(ckpt_dir)
        saved = _legacy_settings(json.loads(state["settings"]), ckpt_dir)
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
        history.train_seconds = float(state["train_seconds"])
        start_epoch = int(state["epoch"])
        _write_log(ckpt_dir, history.epochs)  # drop any line logged after the checkpoint (a kill in between)
        log.info("resuming from epoch %d of %d", start_epoch, epochs)
    for q in stale:  # overwrite=True, everything validated: start over
        log.warning("overwrite=True: removing %s of an earlier run", q)
        q.unlink(missing_ok=True)

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
            rec["test_accuracy"] = accuracy(model, ex, ey)
            if robust_eps is not None:
                rec[f"pgd{robust_steps}_robust_accuracy@{robust_eps:g}"] = robust_accuracy(
                    model, ex[:robust_limit], ey[:robust_limit], eps=robust_eps, steps=robust_steps)
        history.epochs.append(rec)
        log.info("epoch %d/%d: %s", epoch + 1, epochs, rec)
        history.train_seconds += time.perf_counter() - t0
        if ckpt_dir is not None:
            state = {"model": model.module.state_dict(), "optimizer": opt.state_dict(),
                     "schedule": sched.state_dict(), "gen_state": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "epoch": epoch + 1,
                     "history": json.dumps(history.epochs), "settings": json.dumps(settings),
                     "train_seconds": history.train_seconds}
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            _save_checkpoint(ckpt_dir, state, epoch + 1, history.train_seconds)
            _write_log(ckpt_dir, history.epochs)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    model.eval()
    return history
