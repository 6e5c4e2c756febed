"""The record of the commands that wrote a results folder: ``commands.json`` beside the results.

Each ``georobust`` command that writes into a folder (``--out``) appends one entry after it finished: the command
line as the user gave it (re-quotable, so it can be pasted back into a shell), the shared options it ran with
(model, data, split, limit, seed, device — defaults included, which the command line leaves out), the files it
wrote, the versions, and the time. The report reads it to say which command produced each part and which model
each result belongs to. Results written before this record existed still load; the report then says that their
command was not recorded.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..storage import atomic_write_text

log = logging.getLogger(__name__)

COMMANDS_FILE = "commands.json"
#: version of the ``commands.json`` format
FORMAT = 1


def current_context():
    """The context of the command running now (``None`` outside one): typer's own click (typer >= 0.16 vendors
    it) or click's."""
    try:
        from typer.main import get_current_context
    except ImportError:  # an older typer on click
        try:
            from click import get_current_context
        except ImportError:
            return None
    return get_current_context(silent=True)


def command_line(ctx) -> str:
    """The command line of the click/typer context ``ctx`` as the user gave it: ``georobust`` and the
    sub-command path, then every parameter set on the command line (not the defaults), each shell-quoted.

    Rebuilt from the parsed parameters (``ctx.get_parameter_source``) rather than ``sys.argv``, so it is
    the same whether the command ran from a shell, ``python -m georobust`` or a test's ``CliRunner``."""
    names: list[str] = []
    c = ctx
    while c is not None:
        names.append(c.info_name or "")
        c = c.parent
    words = ["georobust"] + [n for n in reversed(names[:-1]) if n]
    given = ctx.params
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name) if p.name else None
        if getattr(src, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        v = given.get(p.name)
        if getattr(p, "param_type_name", "") == "argument":
            words += [str(a) for a in (v if isinstance(v, (list, tuple)) else [v]) if a is not None]
            continue
        if getattr(p, "is_flag", False):
            if getattr(p, "secondary_opts", None) and not v:
                words.append(p.secondary_opts[0])
            elif v:
                words.append(p.opts[0])
            continue
        flag = max(p.opts, key=len)  # the long form (--option rather than -o)
        for a in (v if getattr(p, "multiple", False) and isinstance(v, (list, tuple)) else [v]):
            if a is not None:
                words += [flag, str(a)]
    return " ".join(shlex.quote(w) for w in words)


def record(out: str | Path, *, command: str, files: list[str], options: dict[str, Any] | None = None) -> Path:
    """Append one entry to ``out/commands.json`` (created if missing); return its path.

    Only rank 0 of a ``torchrun`` job records (``$RANK``), so a sharded run is recorded once. An unreadable
    record is replaced by a new one (with a logged warning): it documents the results, it is not one of them.
    Raises :class:`~georobust.errors.OutputError` when the file cannot be written."""
    from .. import __version__

    path = Path(out) / COMMANDS_FILE
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return path
    runs = []
    if path.exists():
        try:
            runs = list(json.loads(path.read_text(encoding="utf-8")).get("runs", []))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            log.warning("%s is unreadable (%s); starting a new record of commands", path, type(e).__name__)
    import torch

    runs.append({"command": command, "files": sorted(set(files)), "options": dict(options or {}),
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "georobust": __version__,
                 "torch": torch.__version__})
    try:
        atomic_write_text(path, json.dumps({"format": FORMAT, "runs": runs}, indent=2))
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}; choose another --out") from None
    return path


def read(folder: str | Path) -> list[dict[str, Any]]:
    """The entries of ``folder/commands.json``, oldest first (empty when there is none or it is unreadable)."""
    path = Path(folder) / COMMANDS_FILE
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text(encoding="utf-8")).get("runs", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        log.warning("%s is unreadable (%s): the commands of these results are not known", path, type(e).__name__)
        return []
    return [r for r in runs if isinstance(r, dict) and isinstance(r.get("command"), str)]


def writer_of(runs: list[dict[str, Any]], filename: str) -> dict[str, Any] | None:
    """The latest entry of ``runs`` that wrote ``filename`` (``None``: not recorded)."""
    for r in reversed(runs):
        if filename in (r.get("files") or []):
            return r
    return None
