"""Reading a results folder: every result file a ``georobust`` command wrote, classified into the parts of a report.

A folder is read at its top level (the cascade's ``cascade-state/`` sub-folder is its checkpoint, not a result):

* ``evaluation.json`` — ``georobust evaluate`` (robust accuracy versus ε); its ``result_<attack>`` files are that
  evaluation's last run of each attack (examples);
* a saved :class:`~georobust.results.Saveable` (``<name>.json`` + ``<name>.safetensors``, checksummed) — by its
  ``type``: an :class:`~georobust.results.AttackResult` (``georobust attack``), a
  :class:`~georobust.evaluation.cascade.CascadeResult` (``evaluate --preset``), a
  :class:`~georobust.results.UniversalResult` (``georobust universal``), any other type is an analysis
  (``georobust analyse``: its ``summary``);
* a training record (``georobust train``'s ``<weights>.json``: ``arch`` and ``history``);
* every ``.png`` figure a command wrote that the report does not draw again from the numbers;
* ``commands.json`` (:mod:`georobust.report.commands`): which command wrote which file, with its options.

Each part knows its model: the one the result records (``evaluation.json``, a cascade), else the ``--model`` of
the command that wrote it, else none (not recorded).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, ResultFileError
from . import commands as cmds

log = logging.getLogger(__name__)

#: figures the report draws again from the numbers (so they follow the result files and overlay in a comparison)
REDRAWN = ("robust_accuracy.png",)
REDRAWN_PREFIX = ("examples_",)


@dataclass
class Part:
    """One result of a folder: ``kind`` (evaluation, cascade, attack, universal, analysis, training, figure),
    its ``file`` (relative to the folder), the loaded ``data``, the ``model`` it belongs to (``None``: not
    recorded) and the ``command`` entry that wrote it (``None``: not recorded)."""

    kind: str
    file: str
    data: Any
    model: str | None = None
    command: dict[str, Any] | None = None
    title: str = ""
    members: list[Part] = field(default_factory=list)  # an evaluation's per-attack results


@dataclass
class Results:
    """What a folder holds (:func:`collect`)."""

    folder: Path
    parts: list[Part]
    commands: list[dict[str, Any]]

    def of(self, kind: str) -> list[Part]:
        return [p for p in self.parts if p.kind == kind]

    @property
    def models(self) -> list[str]:
        """The models of the parts, in order of appearance (those that record one)."""
        return list(dict.fromkeys(p.model for p in self.parts if p.model))

    def options(self) -> dict[str, Any]:
        """The shared options (data, split, limit, seed, device) of the latest recorded command."""
        for r in reversed(self.commands):
            if r.get("options"):
                return dict(r["options"])
        return {}


def model_key(model: str | None) -> str | None:
    """The identity of a model for the check that a report does not mix models: ``zoo:NAME`` is ``NAME``, a
    weights file ``path/NAME.safetensors`` (or ``.pt``) is ``NAME`` (the zoo's weights are such files), anything
    else (``package.module:factory``) itself."""
    if not model:
        return None
    if model.startswith("zoo:"):
        return model[4:]
    p = Path(model)
    if p.suffix in (".safetensors", ".pt", ".pth"):
        return p.stem
    return model


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{path} is not a readable JSON file ({type(e).__name__}: {e}); remove it from the "
                              "results folder or write it again") from None


def _saveable(type_name: str):
    """The class of a saved result by its ``type`` (``None``: an analysis result, read from its JSON)."""
    from ..results import AttackResult, UniversalResult

    if type_name == "AttackResult":
        return AttackResult
    if type_name == "UniversalResult":
        return UniversalResult
    if type_name == "CascadeResult":
        from ..evaluation.cascade import CascadeResult

        return CascadeResult
    return None


def collect(folder: str | Path) -> Results:
    """Read every result in ``folder`` (module docstring). Raises :class:`~georobust.errors.InputError` when the
    folder does not exist or holds no result, :class:`~georobust.errors.ResultFileError` when a result file is
    damaged (its checksums)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"results folder {folder} does not exist; give the --out folder of a georobust command "
                         "(evaluate, attack, analyse, universal, train)")
    if not folder.is_dir():
        raise InputError(f"{folder} is a file, not a results folder; give the --out folder of a georobust command")
    runs = cmds.read(folder)
    parts: list[Part] = []

    def command_of(name: str):
        return cmds.writer_of(runs, name)

    def model_of(name: str, recorded: str | None = None) -> str | None:
        if recorded:
            return recorded
        c = command_of(name)
        return (c or {}).get("options", {}).get("model")

    evaluation = None
    attack_results: dict[str, Part] = {}
    for path in sorted(folder.glob("*.json")):
        name = path.name
        if name == cmds.COMMANDS_FILE:
            continue
        meta = _read_json(path)
        if not isinstance(meta, dict):
            log.info("%s is not a georobust result (a JSON %s); skipped", path, type(meta).__name__)
            continue
        if name == "evaluation.json" and {"robust", "eps", "worst_case"} <= set(meta):
            evaluation = Part("evaluation", name, meta, model_of(name, meta.get("model")), command_of(name),
                              title=f"evaluation ({meta.get('data', '?')}, n={meta.get('n', '?')})")
            parts.append(evaluation)
        elif "type" in meta and isinstance(meta.get("fields"), dict):
            cls = _saveable(str(meta["type"]))
            if cls is None:  # an analysis: its summary is in the JSON, its figure beside it
                parts.append(Part("analysis", name, meta, model_of(name), command_of(name), title=path.stem))
                continue
            obj = cls.load(path)
            if meta["type"] == "AttackResult":
                p = Part("attack", name, obj, model_of(name), command_of(name), title=obj.attack)
                attack_results[path.stem] = p
                parts.append(p)
            elif meta["type"] == "CascadeResult":
                parts.append(Part("cascade", name, obj, model_of(name, obj.model), command_of(name),
                                  title=f"cascade at ε={obj.eps:g}"))
            else:
                parts.append(Part("universal", name, obj, model_of(name), command_of(name),
                                  title=f"universal perturbation ({'L∞' if obj.norm == 'inf' else 'L' + obj.norm}, ξ={obj.xi:g})"))
        elif {"arch", "history"} <= set(meta):
            weights = path.with_suffix(".safetensors")
            parts.append(Part("training", name, meta, str(weights.name) if weights.exists() else None,
                              {"command": meta["command"]} if isinstance(meta.get("command"), str) else None,
                              title=f"training of {path.stem}"))
        else:
            log.info("%s is not a result georobust reports; skipped", path)
    if evaluation is not None:  # the evaluation's own runs of its attacks: its examples, not separate results
        for a in evaluation.data.get("robust", {}):
            p = attack_results.get(f"result_{a}")
            same_run = p is not None and (p.command is None or evaluation.command is None
                                          or p.command.get("command") == evaluation.command.get("command"))
            if p is not None and same_run:  # not replaced since by another command (georobust attack)
                parts.remove(p)
                if p.model is None:
                    p.model = evaluation.model
                evaluation.members.append(p)
    for path in sorted(folder.glob("*.png")):
        if path.name in REDRAWN or path.name.startswith(REDRAWN_PREFIX):
            continue
        parts.append(Part("figure", path.name, path, model_of(path.name), command_of(path.name),
                          title=path.stem.replace("_", " ")))
    if not parts:
        raise InputError(f"{folder} holds no georobust results (no evaluation.json, result .json/.safetensors "
                         "pairs, training record or figures); give the --out folder of a georobust command")
    return Results(folder, parts, runs)
