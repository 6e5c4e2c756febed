"""The attack protocol: what every per-sample attack does around its algorithm, written once.

An attack is a function ``(model, x, y=None, *, options) -> AttackResult``. Its body validates its options,
calls :func:`~georobust.checks.prepare` once, runs the algorithm and returns a :class:`Run`: the prepared
inputs, the adversarial points and what it counted. The :func:`attack` decorator does the rest — it registers
the function in ``georobust.registry.attacks`` with its threat model, task, norms and chunking; times the
call; captures the call's options as the result's ``params`` (the body adds or overrides the values it
resolved, e.g. a default step size); builds the verified :class:`~georobust.results.AttackResult`
(:func:`~georobust.results.make_result` re-runs the model on ``x_adv``); and logs a one-line summary::

    @attack("fgsm", threat="bounded-lp", norms=("inf", "2"), chunking="position")
    def fgsm(model, x, y=None, *, eps, norm="inf", batch_size=1024):
        norm = check_norm(norm)
        p = prepare(model, x, y)
        g, _, _ = loss_grad(p.clf, p.x, p.y)
        return Run(p, p.x + eps * steepest_direction(g, norm), params={"norm": norm})
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import registry
from ..checks import Prepared
from ..results import AttackResult, make_result

log = logging.getLogger("georobust.attacks")

#: options never recorded in ``params``: they do not change the answer (batching) or are not data (generators,
#: tensors, callables); ``target`` is recorded as ``targeted``
NOT_RECORDED = ("batch_size", "generator", "target", "x_init", "on_pass")


@dataclass
class Run:
    """What an attack body returns to the protocol.

    Attributes:
        prepared: the :class:`~georobust.checks.Prepared` inputs (the model the result is verified against).
        x_adv: the adversarial points, ``(N, ...)`` (clamped to the bounds and verified by the protocol).
        iterations, queries: per-sample counts (gradient steps; oracle queries), or ``None``.
        history: per-sample best norm per query checkpoint (decision-based attacks), or ``None``.
        size: per-sample size for threat models whose size is not an Lp norm (spatial, patch), or ``None``.
        params: values the body resolved (a normalised norm, a default step size, per-sample lists); they
            override the captured options of the same name.
        drop: captured options that do not apply to this run (e.g. an option of another variant).
        threat: the threat model of this run when it differs from the registered one (FGSM without ``eps``
            is a minimal-perturbation search; a decision attack with ``eps`` is bounded).
    """

    prepared: Prepared
    x_adv: torch.Tensor
    iterations: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    history: torch.Tensor | None = None
    size: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    threat: str | None = None


def _recordable(v: Any) -> bool:
    if isinstance(v, (torch.Tensor, torch.Generator)) or callable(v):
        return False
    if isinstance(v, (list, tuple)):
        return all(_recordable(a) for a in v)
    return True


def captured_params(sig: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The keyword-only options of a call (defaults filled in) that describe the run: see :data:`NOT_RECORDED`."""
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or name in NOT_RECORDED:
            continue
        v = bound.arguments.get(name)
        if _recordable(v):
            out[name] = list(v) if isinstance(v, tuple) else v
    if "target" in sig.parameters:
        out["targeted"] = bound.arguments.get("target") is not None
    return out


def attack(name: str, *, threat: str, norms: tuple[str, ...] = (), task: str = "classification",
           chunking: str | None = None, summary: str = "", access: str = "gradient", **extra) -> Callable[[Callable[..., Run]], Callable[..., AttackResult]]:
    """Register an attack and wrap its body in the protocol (see the module docstring)."""

    def deco(body: Callable[..., Run]) -> Callable[..., AttackResult]:
        sig = inspect.signature(body)

        @functools.wraps(body)
        def wrapper(*args, **kwargs) -> AttackResult:
            t0 = time.perf_counter()
            run = body(*args, **kwargs)
            if isinstance(run, AttackResult):  # an attack that delegates to another public attack
                return run
            params = captured_params(sig, args, kwargs)
            for k in run.drop:
                params.pop(k, None)
            params.update(run.params)
            p = run.prepared
            res = make_result(name, p.clf, p.x, run.x_adv, p.y, p.pred, target=p.target, iterations=run.iterations,
                              queries=run.queries, elapsed=time.perf_counter() - t0, params=params,
                              threat=run.threat or threat, task=task, size=run.size)
            res.history = run.history
            log.info("%s: %s", name, res)
            return res

        wrapper.__signature__ = sig.replace(return_annotation=AttackResult)  # type: ignore[attr-defined]
        registry.attacks.register(name, threat=threat, norms=norms, task=task, chunking=chunking,
                                  summary=summary, access=access, **extra)(wrapper)
        return wrapper

    return deco
