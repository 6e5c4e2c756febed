"""A whole robustness evaluation: clean accuracy plus robust accuracy versus ε under several attacks.

The suite dispatches on each attack's threat model (:mod:`georobust.core.threat`), never on its name: an
attack whose threat model reads a whole curve from one run (minimal-Lp: DeepFool, L-BFGS; decision-based:
QFool, HopSkipJump — the smallest perturbation found within the query budget) runs once; a bounded one (FGSM,
PGD) runs once per ε, passed as its budget option. A universal perturbation is not a per-sample attack and is
refused here (``georobust universal``). The robust accuracy reported for each ε is the
*minimum over attacks* per sample (a sample counts as robust only if no attack fooled it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import registry
from ..checks import check_norm, model_task, prepare
from ..errors import OptionError
from ..results import AttackResult

log = logging.getLogger(__name__)

DEFAULT_EPS = {"inf": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2), "2": (0.0, 0.25, 0.5, 1.0, 2.0, 3.0)}
#: attacks tried by default, in this order, when registered and supporting the norm
DEFAULT_ATTACKS = ("fgsm", "pgd", "deepfool")


@dataclass
class Evaluation:
    model: str
    data: str
    n: int
    norm: str
    eps: list[float]
    clean_accuracy: float
    robust: dict[str, list[float]] = field(default_factory=dict)  # attack -> robust accuracy per eps
    worst_case: list[float] = field(default_factory=list)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack -> summary
    seconds: float = 0.0
    #: problems found with the model (e.g. it returns probabilities, not logits): the numbers are suspect
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> list[list[str]]:
        lp = self.norm in ("0", "1", "2", "inf")  # else the unit of a sized threat model (evaluate_sized)
        head = (["attack"] + [f"ε={e:g}" if lp else f"≤{e:g}" for e in self.eps]
                + ["median ‖r‖" if lp else f"median {self.norm}", "seconds"])
        rows = [head]
        for a, accs in self.robust.items():
            d = self.details.get(a, {})
            med = d.get("median_l2" if self.norm == "2" else "median_linf") if lp else d.get("median_size")
            rows.append([a] + [f"{v:.3f}" for v in accs]
                        + [f"{med:.4g}" if med is not None else "—", f"{d.get('seconds', 0):.2f}"])
        rows.append(["worst case"] + [f"{v:.3f}" for v in self.worst_case] + ["", f"{self.seconds:.2f}"])
        return rows


def default_attacks(norm: str) -> list[str]:
    out = []
    for name in DEFAULT_ATTACKS:
        if name in registry.attacks and norm in registry.attacks.get(name).norms:
            out.append(name)
    return out


def check_attacks(names: Sequence[str], norm: str) -> None:
    """Every attack of an evaluation or a cascade: registered, per-sample (a universal perturbation is not) and
    supporting ``norm`` — checked before any work."""
    for a in names:
        e = registry.attacks.get(a)
        if not e.threat_model.per_sample:
            raise OptionError(f"attack {a!r} ({e.threat}) is not a per-sample attack the suite or a cascade can run; "
                              "use its own command (e.g. georobust universal)")
        if e.threat_model.lp and norm not in e.norms:
            raise OptionError(f"attack {a!r} does not support norm {norm} (it supports {', '.join(e.norms)})")


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, attacks: Sequence[str] | None = None,
             eps: Sequence[float] | None = None, norm: Any = "inf", model_name: str = "model",
             data_name: str = "data", options: dict[str, dict[str, Any]] | None = None,
             on_attack: Callable[[str, int, int], None] | None = None,
             keep_results: bool = True, threat: str | None = None) -> tuple[Evaluation, dict[str, AttackResult]]:
    """Evaluate ``model`` on ``(x, y)``; return the :class:`Evaluation` and the last result per attack.

    ``attacks`` are registered names (default: those of FGSM, PGD, DeepFool that are available for
    ``norm``); ``options`` maps an attack name to extra keyword options. Attacks of a threat model whose size
    is not an Lp norm (``threat="spatial"``, or every attack given is one) are evaluated by
    :func:`evaluate_sized`: ``eps`` are then budgets of their size (e.g. the grid radius).
    """
    norm = check_norm(norm)
    if isinstance(x, torch.Tensor) and model_task(model, x) == "dense":  # a segmenter: mIoU vs ε
        from .dense import evaluate_dense

        return evaluate_dense(model, x, y, attacks=attacks, eps=eps, norm=norm, model_name=model_name,
                              data_name=data_name, options=options, on_attack=on_attack, keep_results=keep_results)
    if threat is not None or (attacks and all(not registry.attacks.get(a).threat_model.lp for a in attacks)):
        return evaluate_sized(model, x, y, attacks=attacks, eps=eps, threat=threat or "spatial",
                              model_name=model_name, data_name=data_name, options=options, on_attack=on_attack,
                              keep_results=keep_results)
    sized = [a for a in attacks or () if not registry.attacks.get(a).threat_model.lp]
    if sized:
        raise OptionError(f"{', '.join(sized)} measure sizes in their own threat model, not an Lp norm: evaluate them "
                          "apart from the Lp attacks (threat='spatial'; CLI: --attacks with only them)")
    attacks = list(attacks) if attacks is not None else default_attacks(norm)
    if not attacks:
        raise OptionError(f"no attack to run for norm {norm}")
    entries = [registry.attacks.get(a) for a in attacks]
    options = options or {}
    for a in options:  # an option for an attack that is not run would be silently ignored
        if a not in attacks:
            raise OptionError(f"options given for attack {a!r}, which this evaluation does not run "
                              f"(attacks: {', '.join(attacks)}); add it to attacks= or drop its options")
    check_attacks(attacks, norm)
    for e in entries:
        e.check_options(options.get(e.name, {}))
    eps = sorted(float(e) for e in (eps if eps is not None else DEFAULT_EPS[norm]))
    if any(e < 0 for e in eps):
        raise OptionError(f"eps values must be >= 0, got {eps}")
    p = prepare(model, x, y, labels_required=True)
    t0 = time.perf_counter()
    correct = p.pred == p.y
    masks, results, details = attack_masks(p.clf, p.x, p.y, correct, entries, eps, norm, options, on_attack)
    warnings = list(getattr(p.clf, "output_warnings", None) or [])
    ev = evaluation_from_masks(model_name, data_name, norm, eps, correct, masks, details, warnings, results)
    ev.seconds = time.perf_counter() - t0
    return ev, results if keep_results else {}


def attack_masks(clf, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, entries, eps: list[float], norm: str,
                 options: dict[str, dict[str, Any]],
                 on_attack: Callable[[str, int, int], None] | None = None,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, AttackResult], dict[str, dict[str, Any]]]:
    """The attacks of :func:`evaluate` on checked inputs: per attack, the per-sample robust mask ``(N, len(eps))``
    (correct and not fooled at each budget), the last result, and its summary (with ``seconds``). Each sample's
    row depends only on the run it was part of, so the rows of runs on consecutive shards of the samples are
    the rows of those shards (what :mod:`georobust.evaluation.distributed` gathers)."""
    masks: dict[str, torch.Tensor] = {}
    results: dict[str, AttackResult] = {}
    details: dict[str, dict[str, Any]] = {}
    for e in entries:
        ta = time.perf_counter()
        robust = correct[:, None].repeat(1, len(eps))
        opts = dict(options.get(e.name, {}))
        tm = e.threat_model
        if tm.curve:  # one run: its result's threat model reads every budget
            if on_attack is not None:
                on_attack(e.name, 0, 1)
            r = e.fn(clf, x, y, norm=norm, **opts)
            robust &= r.threat_model.robust(r, eps, norm)
            results[e.name] = r
            detail = r.summary()
        else:  # one run per budget, passed as the threat model's budget option
            detail = {}
            for j, ep in enumerate(eps):
                if on_attack is not None:
                    on_attack(e.name, j, len(eps))
                if ep == 0:
                    continue  # the clean accuracy
                r = e.fn(clf, x, y, norm=norm, **{tm.budget_option: ep}, **opts)
                robust[:, j] &= r.threat_model.robust(r, [ep], norm)[:, 0]
                results[e.name] = r
                detail = {"success_rate_at_max_eps": r.success_rate}
        detail["seconds"] = time.perf_counter() - ta
        masks[e.name] = robust
        details[e.name] = detail
    return masks, results, details


def evaluation_from_masks(model_name: str, data_name: str, norm: str, eps: list[float], correct: torch.Tensor,
                          masks: dict[str, torch.Tensor], details: dict[str, dict[str, Any]],
                          warnings: list[str], results: dict[str, AttackResult]) -> Evaluation:
    """The :class:`Evaluation` of per-sample robust masks (:func:`attack_masks`): robust accuracy per attack and
    the per-sample worst case over attacks; ``seconds`` is left to the caller."""
    ev = Evaluation(model_name, data_name, int(correct.shape[0]), norm, list(eps), float(correct.double().mean()))
    ev.warnings = list(warnings)
    robust_all = correct[:, None].repeat(1, len(eps))  # per sample, per eps: still robust?
    for name, robust in masks.items():
        ev.robust[name] = robust.double().mean(0).tolist()
        ev.details[name] = details[name]
        robust_all &= robust
        log.info("%s: robust accuracy %s", name, ev.robust[name])
    for w in (w for r in results.values() for w in r.warnings):
        if w not in ev.warnings:
            ev.warnings.append(w)
    ev.worst_case = robust_all.double().mean(0).tolist()
    return ev


def save_evaluation(ev: Evaluation, results: dict[str, AttackResult], out: str | Path,
                    classes: Sequence[str] | None = None) -> list[Path]:
    """Write ``evaluation.json``, each attack's result, and the figures into ``out``."""
    import json

    from .. import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "evaluation.json"]
    from ..storage import atomic_write_text

    atomic_write_text(out / "evaluation.json", json.dumps(ev.to_dict(), indent=2))  # temp file + rename
    for name, r in results.items():
        written.append(r.save(out / f"result_{name}"))
    written.append(plots.robust_accuracy_curve(ev, out / "robust_accuracy.png"))
    for name, r in results.items():
        written.append(plots.adversarial_examples(r, out / f"examples_{name}.png", classes=classes))
    return written


#: default attacks of a sized threat model's evaluation, in this order, when registered
DEFAULT_SIZED_ATTACKS = {"spatial": ("spatial-worst-of-k", "spatial-grid")}
#: default budgets per size unit (``size_unit`` of the attacks' registry entries)
DEFAULT_SIZES = {"grid radius": (0.0, 0.25, 0.5, 0.75, 1.0)}


def size_unit(entry) -> str:
    """The unit of an attack's ``AttackResult.size`` (its registry entry's ``size_unit``; else its own name, so
    attacks that do not declare one are never compared with others)."""
    return str(entry.extra.get("size_unit") or entry.name)


def evaluate_sized(model, x: torch.Tensor, y: torch.Tensor, *, attacks: Sequence[str] | None = None,
                   eps: Sequence[float] | None = None, threat: str = "spatial", model_name: str = "model",
                   data_name: str = "data", options: dict[str, dict[str, Any]] | None = None,
                   on_attack: Callable[[str, int, int], None] | None = None,
                   keep_results: bool = True) -> tuple[Evaluation, dict[str, AttackResult]]:
    """Clean accuracy and robust accuracy versus the size of a perturbation in a threat model whose size is not
    an Lp norm (``spatial``: rotations and translations, flows, geodesic distances; see
    :mod:`georobust.core.threat`). Each attack runs once; robust accuracy at budget ``b`` is read from its
    result's ``size`` (correct and not fooled with size ``<= b``), and the worst case is the per-sample minimum
    over the attacks. The attacks must measure sizes in one unit (their registry entries' ``size_unit``, e.g.
    the grid radius of ``spatial-grid`` and ``spatial-worst-of-k``) and agree on the options that define it
    (``size_options``, e.g. the box of the grid): a flow loss and a grid radius are not one axis.
    ``Evaluation.norm`` holds the unit."""
    from ..core.threat import threat_model

    tm = threat_model(threat)
    if tm.lp or not tm.per_sample:
        raise OptionError(f"threat model {tm.name!r} measures sizes as an Lp norm or is not per-sample: "
                          "evaluate it with norm= instead")
    if attacks is None:
        attacks = [a for a in DEFAULT_SIZED_ATTACKS.get(tm.name, ()) if a in registry.attacks]
    attacks = list(attacks)
    if not attacks:
        raise OptionError(f"no attack to run for the {tm.name} threat model; name them with attacks=")
    entries = [registry.attacks.get(a) for a in attacks]
    for e in entries:
        if e.threat != tm.name:
            raise OptionError(f"attack {e.name!r} is a {e.threat} attack, not a {tm.name} one: evaluate the two "
                              "threat models separately")
    units = sorted({size_unit(e) for e in entries})
    if len(units) > 1:
        raise OptionError(f"the attacks measure sizes in different units ({', '.join(units)}): a robust accuracy "
                          "at one budget means nothing across them; evaluate each unit separately")
    unit = units[0]
    options = options or {}
    for a in options:
        if a not in attacks:
            raise OptionError(f"options given for attack {a!r}, which this evaluation does not run "
                              f"(attacks: {', '.join(attacks)}); add it to attacks= or drop its options")
    resolved = {}
    for e in entries:
        opts = e.check_options(options.get(e.name, {}))
        defaults = {k: p.default for k, p in e.options().items()}
        resolved[e.name] = {k: opts.get(k, defaults.get(k)) for k in e.extra.get("size_options", ())}
    if len({tuple(sorted(v.items())) for v in resolved.values()}) > 1:
        raise OptionError(f"the attacks define the {unit} differently ({resolved}); give them the same options")
    if eps is None:
        if unit not in DEFAULT_SIZES:
            raise OptionError(f"give the budgets (eps=) of the {unit}: there is no default for it")
        eps = DEFAULT_SIZES[unit]
    eps = sorted(float(e) for e in eps)
    if any(e < 0 for e in eps):
        raise OptionError(f"budgets must be >= 0, got {eps}")
    p = prepare(model, x, y, labels_required=True)
    t0 = time.perf_counter()
    correct = p.pred == p.y
    masks, results, details = {}, {}, {}
    for e in entries:
        ta = time.perf_counter()
        if on_attack is not None:
            on_attack(e.name, 0, 1)
        r = e.fn(p.clf, p.x, p.y, **e.check_options(options.get(e.name, {})))
        masks[e.name] = correct[:, None] & r.threat_model.robust(r, eps)
        results[e.name] = r
        d = r.summary()
        ok = r.success & correct
        d["median_size"] = float(r.size[ok].double().median()) if bool(ok.any()) else None
        d["size_unit"] = unit
        d["seconds"] = time.perf_counter() - ta
        details[e.name] = d
    ev = Evaluation(model_name, data_name, p.n, unit, eps, float(correct.double().mean()))
    ev.warnings = list(getattr(p.clf, "output_warnings", None) or [])
    worst = correct[:, None].repeat(1, len(eps))
    for name, robust in masks.items():
        ev.robust[name] = robust.double().mean(0).tolist()
        ev.details[name] = details[name]
        worst &= robust
    for w in (w for r in results.values() for w in r.warnings):
        if w not in ev.warnings:
            ev.warnings.append(w)
    ev.worst_case = worst.double().mean(0).tolist()
    ev.seconds = time.perf_counter() - t0
    return ev, results if keep_results else {}
