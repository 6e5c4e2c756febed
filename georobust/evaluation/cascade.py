"""The standard cascade: strong attacks run one after another, each only on the samples still robust, and the
per-sample worst case (the RobustBench / AutoAttack protocol: Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020).

``cascade(model, x, y, eps=..., preset="standard")`` runs APGD-CE → APGD-T → FAB-T → Square (the ``standard``
preset; any registered per-sample attacks can be given instead). A sample is robust when it is classified
correctly and *no* attack broke it within ``eps``: the robust accuracy is the mean over samples of that
per-sample worst case — never the minimum over attacks of their separate means, which would credit a model for
samples that different attacks break. Each attack's robustness at ``eps`` is read by its threat model
(:mod:`georobust.core.threat`): a bounded attack is run at ``eps``; a minimal-norm one (FAB-T) counts a sample as
broken when its verified perturbation is within ``eps``. The result says which attack broke each sample and keeps
that sample's adversarial example.

**Deterministic and resumable.** Each attack that takes a ``seed`` gets the cascade's ``seed``. With
``state_dir``, the cascade's configuration and, after each attack, that attack's verified result (on the
samples it ran on) are saved atomically; ``resume=True`` reloads the finished attacks and runs only the rest,
which gives the same answer as an uninterrupted run. A state folder of another configuration is refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import registry
from ..checks import check_norm, check_positive, prepare
from ..errors import CheckpointError, OptionError, unknown_name
from ..results import AttackResult, Saveable
from ..storage import atomic_write_text, ensure_writable
from .alarms import ALARMS, MARGIN, Alarm, run_alarms
from .suite import check_attacks

log = logging.getLogger(__name__)

#: named cascades: the attacks, in order (AutoAttack's "standard" version)
PRESETS: dict[str, tuple[str, ...]] = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square")}

STATE_NAME = "cascade.json"


@dataclass
class CascadeResult(Saveable):
    """The outcome of a cascade on ``n`` samples.

    ``robust[i]``: sample ``i`` is classified correctly and no attack broke it within ``eps``; ``broken_by[i]``:
    the name of the attack that broke it (``"clean"`` for a sample misclassified without attack, ``""`` while
    robust); ``x_adv``: the adversarial example of each broken sample (``x`` for the others); ``per_attack``:
    for each attack in order, the samples it ran on, broke, and its seconds.
    """

    model: str
    eps: float
    norm: str
    attacks: list
    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor
    robust: torch.Tensor
    broken_by: list
    clean_accuracy: float
    per_attack: list = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0
    alarms: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.double().mean())

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "eps": self.eps, "norm": self.norm, "n": int(self.robust.numel()),
                "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
                "attacks": list(self.attacks), "seconds": self.seconds,
                "alarms_fired": [a["name"] for a in self.alarms if a.get("fired")]}

    def table(self) -> list[list[str]]:
        """One row per attack: samples it ran on, broke, robust accuracy after it, seconds."""
        n = int(self.robust.numel())
        rows = [["attack", "ran on", "broke", "robust accuracy after", "seconds"],
                ["clean", str(n), str(int(sum(b == "clean" for b in self.broken_by))), f"{self.clean_accuracy:.4f}", ""]]
        for a in self.per_attack:
            rows.append([a["attack"], str(a["ran_on"]), str(a["broke"]), f"{a['robust_after']:.4f}",
                         f"{a['seconds']:.2f}"])
        return rows


def resolve_attacks(preset: str | None, attacks: Sequence[str] | None, norm: str) -> list[str]:
    """The attack names of a cascade: a preset's or the given ones; each registered, per-sample, and supporting
    ``norm`` (checked before any work)."""
    if preset is not None and attacks is not None:
        raise OptionError("give a preset or a list of attacks, not both")
    if attacks is None:
        preset = preset or "standard"
        if preset not in PRESETS:
            raise unknown_name("preset", preset, PRESETS)
        attacks = PRESETS[preset]
    names = list(attacks)
    if not names:
        raise OptionError("a cascade needs at least one attack")
    check_attacks(names, norm)
    if len(set(names)) != len(names):
        raise OptionError(f"an attack appears twice in the cascade: {names}")
    return names


def _call_options(entry, eps: float, norm: str, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    known = entry.options()
    kw = dict(opts)
    kw["norm"] = norm
    if "eps" in known:
        kw["eps"] = eps
    if "seed" in known and "seed" not in kw:
        kw["seed"] = seed
    return kw


def _broken(r: AttackResult, eps: float, norm: str) -> torch.Tensor:
    """Which samples of ``r`` are broken within ``eps`` (correct clean, fooled within the budget)."""
    correct = r.label_clean == r.y
    return correct & ~r.threat_model.robust(r, [eps], norm)[:, 0]


def _config(model_name, eps, norm, names, options, seed, n, x, y) -> dict[str, Any]:
    return {"model": model_name, "eps": eps, "norm": norm, "attacks": names, "options": options, "seed": seed,
            "n": n, "x_sum": float(x.double().sum()), "y_sum": int(y.sum())}


def cascade(model, x, y, *, eps: float, norm: Any = "inf", preset: str | None = None,
            attacks: Sequence[str] | None = None, options: dict[str, dict[str, Any]] | None = None, seed: int = 0,
            state_dir: str | Path | None = None, resume: bool = False, model_name: str = "model",
            on_attack: Callable[[str, int, int, int], None] | None = None, alarms: bool = True) -> CascadeResult:
    """Run the cascade (module docstring) at budget ``eps``; labels ``y`` are required.

    ``options`` maps an attack name to its keyword options (checked and coerced by the registry before any
    work); ``on_attack(name, i, total, n_active)`` is called before each attack (progress). With ``alarms``
    the result carries the gradient-masking alarms (:func:`cascade_alarms`).
    """
    norm = check_norm(norm)
    check_positive(eps, "eps")
    names = resolve_attacks(preset, attacks, norm)
    options = {k: dict(v) for k, v in (options or {}).items()}
    for a, o in options.items():
        if a not in names:
            raise OptionError(f"options given for attack {a!r}, which this cascade does not run ({', '.join(names)})")
        options[a] = registry.attacks.get(a).check_options(o)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    p = prepare(model, x, y, labels_required=True)
    clf, x, y = p.clf, p.x, p.y
    n = p.n
    config = _config(model_name, float(eps), norm, names, options, seed, n, x, y)
    state_path = None
    if state_dir is not None:
        state_dir = ensure_writable(state_dir, directory=True, what="cascade state folder")
        state_path = Path(state_dir) / STATE_NAME
        if state_path.exists():
            old = json.loads(state_path.read_text(encoding="utf-8"))
            if not resume:
                raise CheckpointError(f"{state_dir} holds an earlier cascade's state; resume it (resume=True, CLI "
                                      "--resume) or choose another folder")
            if old.get("config") != json.loads(json.dumps(config)):
                raise CheckpointError(f"{state_dir} holds a cascade of another configuration (model, eps, norm, "
                                      "attacks, options, seed or data differ); it cannot be resumed with this one")
        elif resume:
            raise CheckpointError(f"nothing to resume in {state_dir}: no {STATE_NAME}")
        else:
            atomic_write_text(state_path, json.dumps({"config": config, "done": []}, indent=2))
    t0 = time.perf_counter()
    correct = p.pred == y
    robust = correct.clone()
    broken_by = ["" if c else "clean" for c in correct.tolist()]
    x_adv = x.clone()
    per_attack: list[dict[str, Any]] = []
    warnings = list(getattr(clf, "output_warnings", None) or [])
    done = json.loads(state_path.read_text(encoding="utf-8"))["done"] if state_path is not None else []
    for i, name in enumerate(names):
        entry = registry.attacks.get(name)
        idx = robust.nonzero().squeeze(1)
        if on_attack is not None:
            on_attack(name, i, len(names), int(idx.numel()))
        ta = time.perf_counter()
        saved = state_path.parent / f"attack{i}-{name}" if state_path is not None else None
        if idx.numel() == 0:
            per_attack.append({"attack": name, "ran_on": 0, "broke": 0, "robust_after": float(robust.double().mean()),
                               "seconds": 0.0})
            continue
        if name in done and saved is not None:
            r = AttackResult.load(saved)
            if r.x.shape[0] != idx.numel():
                raise CheckpointError(f"{saved} holds {r.x.shape[0]} samples, the cascade expects {idx.numel()}")
            seconds = r.elapsed
        else:
            r = entry.fn(clf, x[idx], y[idx], **_call_options(entry, float(eps), norm, seed, options.get(name, {})))
            seconds = time.perf_counter() - ta
            if saved is not None:
                r.save(saved)
                done.append(name)
                atomic_write_text(state_path, json.dumps({"config": config, "done": done}, indent=2))
        hit = _broken(r, float(eps), norm)
        gi = idx[hit]
        robust[gi] = False
        x_adv[gi] = r.x_adv[hit].to(x_adv.dtype)
        for j in gi.tolist():
            broken_by[j] = name
        for w in r.warnings:
            if w not in warnings:
                warnings.append(w)
        per_attack.append({"attack": name, "ran_on": int(idx.numel()), "broke": int(hit.sum()),
                           "robust_after": float(robust.double().mean()), "seconds": float(seconds)})
        log.info("cascade %s: broke %d of %d; robust accuracy %.4f", name, int(hit.sum()), idx.numel(),
                 float(robust.double().mean()))
    res = CascadeResult(model=model_name, eps=float(eps), norm=norm, attacks=names, x=x, y=y, x_adv=x_adv,
                        robust=robust, broken_by=broken_by, clean_accuracy=float(correct.double().mean()),
                        per_attack=per_attack, seed=seed, seconds=time.perf_counter() - t0, warnings=warnings)
    if alarms:
        res.alarms = [a.to_dict() for a in cascade_alarms(clf, res)]
    return res


def cascade_alarms(model, res: CascadeResult, *, margin: float = MARGIN) -> list[Alarm]:
    """The gradient-masking alarms of a cascade (:mod:`georobust.evaluation.alarms`): the checks of the model
    itself (randomised outputs, probabilities, vanished gradients) on the cascade's inputs, and
    ``blackbox_beats_whitebox`` read from the cascade: the fraction of samples broken by a score- or label-based
    attack (registry ``access``) after every gradient attack before it failed on them — AutoAttack's own warning
    when Square breaks points APGD left. Fires above ``margin`` (one point)."""
    found = run_alarms(model, res.x, res.y, eps=res.eps, norm=res.norm, seed=res.seed)
    kinds = {a: registry.attacks.get(a).access for a in res.attacks}
    first_black = next((i for i, a in enumerate(res.attacks) if kinds[a] != "gradient"), None)
    if first_black is not None and any(kinds[a] == "gradient" for a in res.attacks[:first_black]):
        black = [a for a in res.attacks[first_black:] if kinds[a] != "gradient"]
        n = len(res.broken_by)
        count = sum(b in black for b in res.broken_by)
        value = count / n
        fired = count > margin * n
        msg = (f"{count} of {n} samples ({value:.1%}) were broken by {', '.join(black)} (no gradients) after the "
               "gradient attacks failed on them: the gradients are masked, or the gradient attacks too weak (too few "
               "iterations or restarts); trust the worst case, not the gradient attacks alone" if fired else
               f"the gradient-free attacks broke {count} of {n} samples the gradient attacks left")
        alarm = Alarm("blackbox_beats_whitebox", fired, msg, value, margin)
        found = [a for a in found if a.name != alarm.name] + [alarm]
        if fired:
            log.warning("alarm %s: %s", alarm.name, msg)
    order = {name: i for i, name in enumerate(ALARMS)}
    return sorted(found, key=lambda a: order.get(a.name, len(order)))
