"""From result folders to one self-contained HTML file: the view of each run (tables of cells that remember where
their number came from, figures as data URIs, alarms with their explanation, commands), rendered with Jinja2.

Every number in a table is a :class:`Cell`. A cell read from a result file carries that file (``src``, relative to
the run's folder) and the path of the value in the file's JSON (``path``, dot-separated: ``robust.pgd.3``,
``summary.robust_accuracy``); the HTML keeps both (``data-src``, ``data-path``) with the exact value
(``data-value``), so a test (or a reader) can check each printed number against the files. A number the report
computes from a result's tensors (robust accuracy of a single attack at its budget) is marked derived
(``data-derived``) and names its file.
"""

from __future__ import annotations

import html
import inspect
import logging
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, OptionError
from . import figures
from .collect import Part, Results, collect, model_key

log = logging.getLogger(__name__)

#: format of each kind of number in the tables
FORMATS = {"acc": "{:.3f}", "sec": "{:.2f}", "size": "{:.4g}", "int": "{:d}", "val": "{:.4g}"}
#: examples shown per result
N_EXAMPLES = 6


@dataclass
class Cell:
    """One table cell: ``text`` shown, the exact ``value``, and where it came from (see the module docstring)."""

    text: str
    value: Any = None
    src: str | None = None
    path: str | None = None
    derived: bool = False
    cls: str = ""
    folder: str | None = None  # the run's folder, for a cell shown outside its run (the comparison)

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, (int, float)) and not isinstance(self.value, bool)


def num(value: Any, kind: str = "acc", *, src: str | None = None, path: str | None = None,
        derived: bool = False) -> Cell:
    """A number cell formatted by ``kind`` (:data:`FORMATS`); ``None``/NaN/a string print as ``—``/the string."""
    if isinstance(value, bool) or value is None:
        return Cell("—" if value is None else str(value))
    if isinstance(value, str):
        return Cell(value)
    if isinstance(value, float) and not math.isfinite(value):
        return Cell("—" if math.isnan(value) else str(value))
    if kind == "int":
        value = int(value)
    return Cell(FORMATS[kind].format(value), value, src, path, derived, "num")


def text(s: Any) -> Cell:
    return Cell(str(s))


def _norm_label(norm: str) -> str:
    return "L∞" if str(norm) == "inf" else f"L{norm}"


def _command(part: Part | None) -> str | None:
    return (part.command or {}).get("command") if part is not None else None


def _classes(options: dict[str, Any]) -> list[str] | None:
    name = options.get("data")
    if not name:
        return None
    try:
        from ..data import info

        return info(name).classes or None
    except Exception:  # a folder data set, an unknown name: numbers instead of names
        return None


def _label(c: int, classes: list[str] | None) -> str:
    return classes[c] if classes and 0 <= c < len(classes) else str(c)


def _alarm_explanations() -> dict[str, str]:
    """The first paragraph of each alarm's check in :mod:`georobust.evaluation.alarms`: what it looks for."""
    from ..evaluation import alarms

    out = {}
    for name in alarms.ALARMS:
        fn = getattr(alarms, name, None)
        doc = inspect.getdoc(fn) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        first = re.sub(r":\w+:`~?([^`]+)`", r"\1", first)  # Sphinx roles: their text only
        out[name] = first.replace("``", "").replace("`", "")
    return out


# ------------------------------------------------------------------------------------------------ parts
def _example_picks(fooled: torch.Tensor, n: int = N_EXAMPLES) -> list[int]:
    """The first ``n`` samples that were fooled (the others if fewer were)."""
    idx = fooled.nonzero().flatten().tolist()
    if len(idx) < n:
        idx += [i for i in range(fooled.numel()) if i not in set(idx)][: n - len(idx)]
    return idx[:n]


def _attack_examples(r, classes, bounds) -> str | None:
    if r.x.ndim < 2 or r.x.shape[0] == 0:
        return None
    if r.label_clean.ndim > 1:   # segmentation: scene / clean map / adversarial scene / its map (/ target)
        import tempfile

        from .. import plots

        with tempfile.TemporaryDirectory() as d:
            return figures.file_uri(plots.segmentation_examples(r, Path(d) / "seg.png", classes=classes))
    fooled = r.success & (r.label_clean == r.y)
    idx = _example_picks(fooled.cpu())
    top = [_label(int(r.label_clean[i]), classes) for i in idx]
    bottom = [_label(int(r.label_adv[i]), classes) + ("" if bool(fooled[i]) else " (not fooled)") for i in idx]
    return figures.examples(r.x[idx], r.x_adv[idx], top, bottom, bounds=bounds,
                            title=f"{r.attack}: {int(fooled.sum())} of {int(fooled.numel())} fooled")


def _bounds(r) -> tuple[float, float]:
    """The box of the inputs for display: ``[0, 1]`` when the data lie in it, else their range."""
    lo = min(float(r.x.min()), float(r.x_adv.min()))
    hi = max(float(r.x.max()), float(r.x_adv.max()))
    return (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)


def _evaluation(part: Part, classes) -> dict[str, Any]:
    ev, f = part.data, part.file
    norm = str(ev.get("norm", "inf"))
    eps = list(ev.get("eps", []))
    members = {p.data.attack: p.data for p in part.members}
    from .. import registry

    def threat(a: str) -> str:
        if a in members and members[a].threat:
            return members[a].threat
        try:
            return registry.attacks.get(a).threat
        except Exception:
            return "—"

    med_key = "median_l2" if norm == "2" else "median_linf"
    head = ["attack", "threat model"] + [f"ε={e:g}" for e in eps] + [f"median ‖r‖ ({_norm_label(norm)})", "seconds"]
    rows = []
    for a, accs in ev.get("robust", {}).items():
        d = ev.get("details", {}).get(a, {})
        rows.append([text(a), text(threat(a))]
                    + [num(v, src=f, path=f"robust.{a}.{j}") for j, v in enumerate(accs)]
                    + [num(d.get(med_key), "size", src=f, path=f"details.{a}.{med_key}"),
                       num(d.get("seconds"), "sec", src=f, path=f"details.{a}.seconds")])
    rows.append([text("worst case"), text("per-sample minimum")]
                + [num(v, src=f, path=f"worst_case.{j}") for j, v in enumerate(ev.get("worst_case", []))]
                + [text(""), num(ev.get("seconds"), "sec", src=f, path="seconds")])
    series = []
    colors = matplotlib_colors()
    for i, (a, accs) in enumerate(ev.get("robust", {}).items()):
        c = colors[i % len(colors)]
        series.append({"label": f"{a} ({threat(a)})", "x": eps, "y": accs, "color": c})
        r = members.get(a)
        if r is not None and r.threat_model.curve and r.threat_model.lp and eps:
            grid = torch.linspace(0, max(eps), 201).tolist()
            series.append({"label": f"{a}: exact curve from its per-sample sizes", "x": grid,
                           "y": r.robust_accuracy(grid, norm), "step": True, "style": ":", "color": c})
    series.append({"label": "worst case", "x": eps, "y": ev.get("worst_case", []), "style": "--", "color": "black"})
    curve = figures.curve(series, xlabel=f"ε ({_norm_label(norm)})",
                          title=f"{ev.get('model')} on {ev.get('data')} (n={ev.get('n')})") if eps else None
    examples = []
    for p in part.members:
        uri = _attack_examples(p.data, classes, _bounds(p.data))
        if uri:
            examples.append({"title": f"{p.data.attack} at ε={p.data.params.get('eps', '—')}"
                             if not p.data.threat_model.curve else f"{p.data.attack} (minimal perturbations)",
                             "uri": uri, "file": p.file})
    timings = [[text(f"evaluation: {a}"), num(ev.get("n"), "int", src=f, path="n"),
                num(ev.get("details", {}).get(a, {}).get("seconds"), "sec", src=f, path=f"details.{a}.seconds")]
               for a in ev.get("robust", {})]
    timings.append([text("evaluation: total"), num(ev.get("n"), "int", src=f, path="n"),
                    num(ev.get("seconds"), "sec", src=f, path="seconds")])
    return {"title": f"{_norm_label(norm)} robust accuracy versus ε", "file": f, "command": _command(part),
            "clean": num(ev.get("clean_accuracy"), src=f, path="clean_accuracy"),
            "n": num(ev.get("n"), "int", src=f, path="n"), "norm": _norm_label(norm),
            "table": {"head": head, "rows": rows}, "curve": curve, "examples": examples,
            "warnings": list(ev.get("warnings") or []), "timings": timings}


def matplotlib_colors() -> list[str]:
    import matplotlib

    return list(matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"]))


def _cascade(part: Part, classes, explanations) -> dict[str, Any]:
    r, f = part.data, part.file
    n = int(r.robust.numel())
    head = ["attack", "ran on", "broke", "robust accuracy after", "seconds"]
    rows = [[text("clean"), num(n, "int", src=f, path="summary.n"),
             num(sum(b == "clean" for b in r.broken_by), "int", derived=True, src=f),
             num(r.clean_accuracy, src=f, path="fields.clean_accuracy"), text("")]]
    for i, a in enumerate(r.per_attack):
        p = f"fields.per_attack.{i}"
        rows.append([text(a["attack"]), num(a["ran_on"], "int", src=f, path=f"{p}.ran_on"),
                     num(a["broke"], "int", src=f, path=f"{p}.broke"),
                     num(a["robust_after"], src=f, path=f"{p}.robust_after"),
                     num(a["seconds"], "sec", src=f, path=f"{p}.seconds")])
    alarms = []
    for i, a in enumerate(r.alarms):
        alarms.append({"name": a.get("name"), "fired": bool(a.get("fired")), "message": a.get("message", ""),
                       "value": num(a.get("value"), "val", src=f, path=f"fields.alarms.{i}.value"),
                       "threshold": num(a.get("threshold"), "val", src=f, path=f"fields.alarms.{i}.threshold"),
                       "explanation": explanations.get(a.get("name"), ""), "source": f})
    broken = torch.tensor([b not in ("", "clean") for b in r.broken_by], dtype=torch.bool)
    ex = None
    if r.x.ndim >= 2 and bool(broken.any()):
        idx = _example_picks(broken)
        idx = [i for i in idx if bool(broken[i])]
        ex = figures.examples(r.x[idx], r.x_adv[idx], [_label(int(r.y[i]), classes) for i in idx],
                              [f"broken by {r.broken_by[i]}" for i in idx], bounds=_bounds(r),
                              title=f"cascade at ε={r.eps:g}: {int(broken.sum())} of {n} broken by an attack")
    timings = [[text(f"cascade: {a['attack']}"), num(a["ran_on"], "int", src=f, path=f"fields.per_attack.{i}.ran_on"),
                num(a["seconds"], "sec", src=f, path=f"fields.per_attack.{i}.seconds")]
               for i, a in enumerate(r.per_attack)]
    timings.append([text("cascade: total (alarms included)"), num(n, "int", src=f, path="summary.n"),
                     num(r.seconds, "sec", src=f, path="fields.seconds")])
    return {"title": f"cascade at ε={r.eps:g} ({_norm_label(r.norm)}): {', '.join(r.attacks)}", "file": f,
            "command": _command(part), "robust": num(r.robust_accuracy, src=f, path="summary.robust_accuracy"),
            "clean": num(r.clean_accuracy, src=f, path="summary.clean_accuracy"),
            "n": num(n, "int", src=f, path="summary.n"), "eps": r.eps, "norm": _norm_label(r.norm),
            "table": {"head": head, "rows": rows}, "alarms": alarms, "example": ex,
            "warnings": list(r.warnings or []), "timings": timings}


def _attacks(parts: list[Part], classes) -> list[dict[str, Any]]:
    """Single attacks (``georobust attack``), grouped by threat model: a table each, and the curve of those whose
    threat model reads one from a run."""
    from ..core.threat import threat_model

    groups: dict[str, list[Part]] = {}
    for p in parts:
        groups.setdefault(p.data.threat_model.name, []).append(p)
    out = []
    for name, ps in groups.items():
        tm = threat_model(name)
        head = ["attack", "norm", "n", "clean accuracy", "success rate", "robust accuracy", "median ‖r‖₂",
                "median ‖r‖∞", "seconds"]
        rows, series, examples = [], [], []
        for p in ps:
            r, f = p.data, p.file
            norm = str(r.params.get("norm", "2"))
            if tm.curve:
                ra = text("curve below")
            else:
                b = r.params.get(tm.budget_option or "eps")
                ra = (num(r.robust_accuracy([b], norm)[0], derived=True, src=f) if b is not None else text("—"))
                if b is not None:
                    ra.text += f" at ε={b:g}"
            rows.append([text(r.attack), text(_norm_label(norm) if tm.lp else "—"),
                         num(r.success.numel(), "int", src=f, path="summary.n"),
                         num(r.summary()["clean_accuracy"], src=f, path="summary.clean_accuracy"),
                         num(r.success_rate, src=f, path="summary.success_rate"), ra,
                         num(r.summary()["median_l2"], "size", src=f, path="summary.median_l2"),
                         num(r.summary()["median_linf"], "size", src=f, path="summary.median_linf"),
                         num(r.elapsed, "sec", src=f, path="summary.elapsed")])
            if tm.curve:
                sizes = tm.sizes(r, norm)
                fooled = sizes[r.success & (r.label_clean == r.y)]
                top = float(fooled.max()) if fooled.numel() else 1.0
                grid = torch.linspace(0, top * 1.05 or 1.0, 201).tolist()
                series.append({"label": f"{r.attack} ({_norm_label(norm) if tm.lp else tm.size})", "x": grid,
                               "y": r.robust_accuracy(grid, norm), "step": True})
            uri = _attack_examples(r, classes, _bounds(r))
            if uri:
                examples.append({"title": r.attack, "uri": uri, "file": f})
        xlabel = "budget (" + ("norm of the perturbation" if tm.lp else tm.size) + ")"
        out.append({"threat": name, "size": tm.size, "table": {"head": head, "rows": rows},
                    "curve": figures.curve(series, xlabel=xlabel, title=f"{name}: robust accuracy versus budget")
                    if series else None, "examples": examples,
                    "commands": [c for c in dict.fromkeys(_command(p) for p in ps) if c],
                    "files": [p.file for p in ps],
                    "warnings": [w for p in ps for w in (p.data.warnings or [])]})
    return out


def _universal(part: Part) -> dict[str, Any]:
    r, f = part.data, part.file
    head = ["pass", "fooling rate (X)", "fooling rate (held out)", "DeepFool calls", "updates", "seconds"]
    rows = []
    for i in range(r.passes):
        rows.append([num(i + 1, "int"), num(r.fooling_train[i], src=f, path=f"fields.fooling_train.{i}"),
                     num(r.fooling_eval[i] if i < len(r.fooling_eval) else None, src=f,
                         path=f"fields.fooling_eval.{i}"),
                     num(r.attempts[i], "int", src=f, path=f"fields.attempts.{i}"),
                     num(r.updates[i], "int", src=f, path=f"fields.updates.{i}"),
                     num(r.pass_seconds[i], "sec", src=f, path=f"fields.pass_seconds.{i}")])
    return {"title": part.title, "file": f, "command": _command(part),
            "fooling": num(r.fooling_rate, derived=True, src=f), "table": {"head": head, "rows": rows},
            "timings": [[text("universal perturbation"), text("—"),
                         num(r.elapsed, "sec", src=f, path="fields.elapsed")]]}


def _summary_table(part: Part) -> dict[str, Any]:
    s = part.data.get("summary") or {}
    rows = []
    for k, v in s.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append([text(k), num(v, "int" if isinstance(v, int) else "val", src=part.file, path=f"summary.{k}")])
        elif isinstance(v, (str, bool)) or v is None:
            rows.append([text(k), text("—" if v is None else v)])
    return {"head": ["metric", "value"], "rows": rows}


def _training(part: Part) -> dict[str, Any]:
    m, f = part.data, part.file
    rows = [[text("architecture"), text(m.get("arch"))], [text("data"), text(m.get("data"))],
            [text("objective"), text(m.get("objective"))], [text("epochs"), num(m.get("epochs"), "int", src=f,
                                                                                   path="epochs")],
            [text("test accuracy"), num(m.get("test_accuracy"), src=f, path="test_accuracy")],
            [text("training seconds"), num(m.get("train_seconds"), "sec", src=f, path="train_seconds")]]
    hist = m.get("history") or []
    return {"title": part.title, "file": f, "command": _command(part), "table": {"head": ["", ""], "rows": rows},
            "curve": figures.training(hist) if hist else None,
            "timings": [[text(part.title), text("—"), num(m.get("train_seconds"), "sec", src=f, path="train_seconds")]]}


# ------------------------------------------------------------------------------------------------- runs
def _model_info(model: str | None) -> dict[str, Any] | None:
    """The shipped model's manifest entry (architecture, accuracy, the command that trained it), if a zoo model."""
    key = model_key(model)
    if not key or not str(model).startswith("zoo:"):
        return None
    try:
        from ..models import manifest

        return manifest().get(key)
    except Exception:
        return None


def view(res: Results, label: str, explanations: dict[str, str]) -> dict[str, Any]:
    """The view of one run (one results folder, or the part of one that belongs to one model)."""
    ev_parts = res.of("evaluation")
    main = next((p for k in ("evaluation", "cascade", "attack", "universal", "analysis") for p in res.of(k)
                 if p.command), None)  # the model-and-data table describes the main result
    opts = dict((main.command or {}).get("options") or {}) if main is not None else {}
    opts = opts or res.options()
    model = (res.models or [None])[0]
    if not opts.get("data") and ev_parts:
        opts["data"] = ev_parts[0].data.get("data")
    classes = _classes(opts)
    evaluations = [_evaluation(p, classes) for p in ev_parts]
    cascades = [_cascade(p, classes, explanations) for p in res.of("cascade")]
    attacks = _attacks(res.of("attack"), classes)
    universal = [_universal(p) for p in res.of("universal")]
    analyses = [{"title": p.title, "file": p.file, "command": _command(p), "table": _summary_table(p),
                 "type": p.data.get("type")} for p in res.of("analysis")]
    trainings = [_training(p) for p in res.of("training")]
    figs = [{"title": p.title, "file": p.file, "uri": figures.file_uri(p.data), "command": _command(p)}
            for p in res.of("figure")]
    for part in universal + analyses:  # a command's figures go with the result it wrote
        part["figures"] = [f for f in figs if f["command"] and f["command"] == part["command"]]
        figs = [f for f in figs if f not in part["figures"]]
    timings = [row for part in evaluations + cascades + universal + trainings for row in part["timings"]]
    for g in attacks:
        for row in g["table"]["rows"]:
            timings.append([text(f"attack: {row[0].text}"), row[2], row[-1]])
    alarms = [a for c in cascades for a in c["alarms"]]
    warnings = list(dict.fromkeys(w for part in evaluations + cascades + attacks for w in part["warnings"]))
    commands = []
    seen = set()
    for r in res.commands:
        if r["command"] not in seen:
            seen.add(r["command"])
            commands.append({"command": r["command"], "files": r.get("files", []), "finished": r.get("finished", "")})
    for t in trainings:
        if t["command"] and t["command"] not in seen:
            seen.add(t["command"])
            commands.append({"command": t["command"], "files": [t["file"]], "finished": ""})
    unrecorded = [p.file for p in res.parts if not _command(p)]
    n = None
    if ev_parts:
        n = ev_parts[0].data.get("n")
    elif res.of("cascade"):
        n = int(res.of("cascade")[0].data.robust.numel())
    return {"label": label, "folder": str(res.folder), "model": model, "model_info": _model_info(model),
            "options": opts, "n": n, "evaluations": evaluations, "cascades": cascades, "attacks": attacks,
            "universal": universal, "analyses": analyses, "trainings": trainings, "figures": figs,
            "timings": {"head": ["part", "samples", "seconds"], "rows": timings}, "alarms": alarms,
            "fired": [a for a in alarms if a["fired"]], "warnings": warnings, "commands": commands,
            "unrecorded": unrecorded,
            "has_alarm_source": bool(cascades)}


def _split_by_model(res: Results) -> list[Results]:
    """A folder's results, one :class:`Results` per model (parts without a recorded model go with the first)."""
    keys = list(dict.fromkeys(model_key(m) for m in res.models))
    if len(keys) <= 1:
        return [res]
    out = []
    for i, k in enumerate(keys):
        parts = [p for p in res.parts if model_key(p.model) == k or (i == 0 and p.model is None)]
        out.append(Results(res.folder, parts, [c for c in res.commands
                                               if model_key((c.get("options") or {}).get("model")) == k]))
    return out


def _comparison(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Headline numbers of the runs side by side: clean accuracy, worst-case robust accuracy at each ε of their
    evaluations (when the runs share norm and ε), the cascades' robust accuracy; and the worst-case curves in
    one figure."""
    if len(runs) < 2:
        return None
    head = ["", *[r["label"] for r in runs]]
    rows = []

    def of(c: Cell, r: dict[str, Any]) -> Cell:
        return replace(c, folder=r["folder"]) if c.src else c

    evs = [r["evaluations"][0] if r["evaluations"] else None for r in runs]
    rows.append([text("model")] + [text(r["model"] or "—") for r in runs])
    rows.append([text("samples")] + [num(r["n"], "int") if r["n"] is not None else text("—") for r in runs])
    if all(evs):
        rows.append([text("clean accuracy")] + [of(e["clean"], r) for e, r in zip(evs, runs)])
        heads = {tuple(e["table"]["head"]) for e in evs}
        if len(heads) == 1:
            k = len(evs[0]["table"]["rows"][-1]) - 2  # worst-case row: name, note, ε..., "", seconds
            for j in range(2, k):
                rows.append([text(f"worst case {evs[0]['table']['head'][j]} ({evs[0]['norm']})")]
                            + [of(e["table"]["rows"][-1][j], r) for e, r in zip(evs, runs)])
    cas = [r["cascades"][0] if r["cascades"] else None for r in runs]
    if all(cas):
        rows.append([text("cascade clean accuracy")] + [of(c["clean"], r) for c, r in zip(cas, runs)])
        rows.append([text("cascade robust accuracy")] + [of(c["robust"], r) for c, r in zip(cas, runs)])
    rows.append([text("alarms fired")] + [num(len(r["fired"]), "int") for r in runs])
    return {"table": {"head": head, "rows": rows}}


def _comparison_curve(views: list[dict[str, Any]], results: list[Results]) -> str | None:
    series = []
    for i, (v, res) in enumerate(zip(views, results)):
        evs = res.of("evaluation")
        if not evs:
            continue
        ev = evs[0].data
        series.append({"label": f"{v['label']}: worst case", "x": ev.get("eps", []), "y": ev.get("worst_case", []),
                       "style": figures.RUN_STYLES[i % len(figures.RUN_STYLES)]})
    if len(series) < 2:
        return None
    norms = {str(r.of("evaluation")[0].data.get("norm")) for r in results if r.of("evaluation")}
    xlabel = f"ε ({_norm_label(norms.pop())})" if len(norms) == 1 else "ε"
    return figures.curve(series, xlabel=xlabel, title="worst-case robust accuracy, side by side")


def build(folders: list[str | Path], *, compare: bool = False) -> dict[str, Any]:
    """The view of a report on ``folders`` (one, or several side by side). Results of different models are
    refused unless ``compare`` (each model then gets its own column). Raises
    :class:`~georobust.errors.InputError` (no results, mixed models) or
    :class:`~georobust.errors.ResultFileError` (a damaged result)."""
    if not folders:
        raise OptionError("give at least one results folder")
    results = [collect(f) for f in folders]
    columns: list[Results] = []
    for res in results:
        parts = _split_by_model(res)
        if len(parts) > 1 and not compare:
            models = ", ".join(m for m in res.models)
            raise InputError(f"{res.folder} holds results of different models ({models}); one report describes one "
                             "model: pass --compare to show them side by side, or write each model's results into "
                             "its own folder")
        columns += parts
    keys = list(dict.fromkeys(model_key(r.models[0]) for r in columns if r.models))
    if len(keys) > 1 and not compare:
        raise InputError("these folders hold results of different models ("
                         + ", ".join(f"{r.folder}: {', '.join(r.models) or 'not recorded'}" for r in columns)
                         + "); pass --compare to put them side by side in one report")
    explanations = _alarm_explanations()
    labels = []
    for i, r in enumerate(columns):
        base = r.models[0] if r.models else Path(r.folder).name
        same = sum(1 for c in columns if c.models[:1] == r.models[:1]) > 1  # one model twice: say which folder
        labels.append((f"{chr(65 + i)}: {base}" + (f" ({Path(r.folder).name})" if same else ""))
                      if len(columns) > 1 else base)
    views = [view(r, lab, explanations) for r, lab in zip(columns, labels)]
    from .. import __version__

    title = (" vs ".join(v["model"] or v["label"] for v in views) if len(views) > 1
             else (views[0]["model"] or views[0]["label"]))
    return {"title": ("Comparison: " if len(views) > 1 else "Robustness report: ") + title, "runs": views,
            "comparison": _comparison(views), "comparison_curve": _comparison_curve(views, columns),
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "version": __version__,
            "folders": [str(f) for f in folders]}


def render(data: dict[str, Any]) -> str:
    """The HTML of a report view (:func:`build`), from the template shipped with the package."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("georobust.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["attr_value"] = lambda v: html.escape(repr(v) if isinstance(v, float) else str(v), quote=True)
    return env.get_template("report.html.j2").render(**data)


def write_report(folders: list[str | Path], out: str | Path, *, compare: bool = False) -> Path:
    """Write the report on ``folders`` (:func:`build`) to ``out`` (one self-contained HTML file, written
    atomically); return its path. Raises :class:`~georobust.errors.OutputError` when it cannot be written."""
    from ..errors import OutputError
    from ..storage import atomic_write_text, ensure_writable

    out = ensure_writable(out, what="report")
    page = render(build(folders, compare=compare))
    try:
        atomic_write_text(out, page)
    except OSError as e:
        raise OutputError(f"cannot write the report {out}: {e.strerror or e}; choose another -o") from None
    log.info("wrote the report %s (%d kB)", out, len(page) // 1024)
    return out
