"""The ``georobust`` command: a thin layer over the library (typer + rich).

Every command starts the same way (:func:`_start`): the shared options (model, data, split, limit, root, data
options, device, seed, verbose, logits — defined once in :data:`SHARED`, with the standard defaults of
:data:`STANDARD`, and added to each command by :func:`shared`) are checked, every output location is checked
for writing, and only then are the data and the model loaded and checked against each other — all before any
work. A georobust error is shown as one line and the command exits with status 2 (never a traceback).
Warnings of a result or an evaluation are printed in yellow on stderr. Long work shows a progress bar on a
terminal and one log line every 10% or 10 s otherwise.

Names come from the registries (:mod:`georobust.registry`), and the commands dispatch on what an entry
declares, never on its name: ``georobust attack NAME`` exists for every per-sample attack (its threat model
decides whether it runs at all, how progress is counted and whether a run may be chunked — ``chunking``),
and ``georobust analyse NAME`` for every registered analysis (its own command where it has tables and figures
of its own, else a generic one: options from the function's signature, its result's ``table()`` or
``summary()``, the figure its entry names in ``extra["plot"]``). One option parser for ``-o``/``-O``/``-D``:
:mod:`georobust.core.options`.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import re
import shlex
import sys
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup, TyperOption

from . import __version__, registry
from . import data as gdata
from .core.options import parse_assignments
from .errors import GeorobustError, InputError, OptionError, OutputError
from .storage import ensure_writable

log = logging.getLogger("georobust.cli")

# a wide table when piped (CI logs, files); the terminal's width otherwise
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

_display_type = getattr(TyperOption, "display_type_rich", None)


def _flag_display_type(self, ctx):
    """A flag takes no value: show ``--use-labels``, not ``--use-labels <bool>`` (typer 0.29's help shows a
    type for every option)."""
    return None if self.is_flag and self.metavar is None else _display_type(self, ctx)


if _display_type is not None:  # a typer without this hook shows flags its own way
    TyperOption.display_type_rich = _flag_display_type

DATA_NAMES = tuple(d.name for d in gdata.datasets() if d.task != "dense") + tuple(  # label maps listed last
    d.name for d in gdata.datasets() if d.task == "dense")
SPLITS = tuple(gdata.SPLITS)
MODEL_HELP = "zoo:NAME, a .safetensors/.pt file, or package.module:factory (the current folder is importable)"


def _print_error(e: BaseException) -> None:
    msg = " ".join(str(e).split())  # one line, whatever the message
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True, markup=True)


_SHOWN: set[str] = set()


def _warn(messages) -> None:
    """Print each warning (of a result, an evaluation, a library log record) once, in yellow, on stderr."""
    for m in messages or ():
        m = str(m)
        if not any(m in old or old in m for old in _SHOWN):  # the log record may prefix the model's name
            _SHOWN.add(m)
            err_console.print(Text.assemble(("warning: ", "bold yellow"), (str(m), "yellow")), soft_wrap=True)


class _LogHandler(logging.Handler):
    """The library's log records on stderr: warnings in yellow (once: a result repeating one is not shown
    again), other records as ``logger: message``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                _warn([msg])
            else:
                err_console.print(f"{record.name}: {msg}", highlight=False, markup=False, soft_wrap=True)
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


# --------------------------------------------------------------------------------------------- progress
class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.3g}/s" if speed else "–/s", style="progress.data.speed")


class Reporter:
    """Progress of long work: a rich bar (done / total, rate, elapsed, time left) when stderr is a terminal;
    otherwise one plain line every 10% of the total or every 10 s (also while a single long call runs)."""

    def __init__(self, description: str, total: int | None, unit: str = "samples", every_s: float = 10.0):
        self.description, self.total, self.unit, self.every_s = description, total, unit, every_s
        self.title = description
        self.completed = 0
        self.info = ""
        self.tty = err_console.is_terminal
        self._t0 = self._last_line = time.perf_counter()
        self._last_pct = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> Reporter:
        self._t0 = self._last_line = time.perf_counter()
        if self.tty:
            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn(self.unit), _Rate(), TimeElapsedColumn(),
                                      TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                      console=err_console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, info="")
        else:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.tty:
            self._progress.stop()
        elif exc[0] is None:
            self._line(final=True)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            if time.perf_counter() - self._last_line >= self.every_s:
                self._line()

    def _line(self, final: bool = False) -> None:
        with self._lock:
            el = time.perf_counter() - self._t0
            self._last_line = time.perf_counter()
            rate = self.completed / el if el > 0 else 0.0
            if self.total:
                pct = 100.0 * self.completed / self.total
                left = (self.total - self.completed) / rate if rate > 0 else float("nan")
                msg = (f"{self.description}: {self.completed}/{self.total} {self.unit} ({pct:.0f}%), "
                       f"{rate:.3g}/s, {el:.0f}s elapsed" + ("" if final else
                                                             f", {'?' if math.isnan(left) else f'{left:.0f}s'} left"))
            else:
                msg = f"{self.description}: {self.completed} {self.unit}, {el:.0f}s elapsed"
            if self.info:
                msg += f"  {self.info}"
            err_console.print(("done " if final else "") + msg, highlight=False, soft_wrap=True)

    def update(self, completed: int | None = None, *, advance: int = 0, total: int | None = None,
               description: str | None = None, info: str | None = None) -> None:
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        if info is not None:
            self.info = info
        new = completed if completed is not None else self.completed + advance
        if new < self.completed:  # a new round (an epoch, a pass): count the 10% steps afresh
            self._last_pct = 0
        self.completed = new
        if self.tty:
            self._progress.update(self._task, completed=self.completed, total=self.total,
                                  description=self.description, info=self.info)
            return
        if self.total:
            pct = int(10 * self.completed / self.total)
            if pct > self._last_pct and self.completed < self.total:
                self._last_pct = pct
                self._line()
                return
        if time.perf_counter() - self._last_line >= self.every_s:
            self._line()

    def print(self, msg: str) -> None:
        (self._progress.console if self.tty else err_console).print(msg, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------- small parsers
def _floats(s: str | None, what: str = "value") -> list[float] | None:
    if s is None:
        return None
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise OptionError(f"{what}: expected comma-separated numbers, got {s!r}") from None


def _ints(s: str, what: str) -> list[int]:
    vals = _floats(s, what) or []
    if any(v != int(v) for v in vals):
        raise OptionError(f"{what}: expected comma-separated integers, got {s!r}")
    return [int(v) for v in vals]


def _fmt(v) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_table(title: str, rows: list[list[str]]) -> None:
    t = Table(title=title)
    first = max((len(str(r[0])) for r in rows), default=0)
    for i, h in enumerate(rows[0]):
        t.add_column(h, min_width=first if i == 0 else None)  # the row names are never cut
    for r in rows[1:]:
        t.add_row(*r)
    console.print(t)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s.replace("zoo:", "")).strip("-.") or "model"


def _default_out(command: str, model: str) -> Path:
    """``results/<command>-<model>-<timestamp>``: a fresh folder per run, so nothing is overwritten by surprise."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    p = Path("results") / f"{command}-{_slug(model)}-{stamp}"
    i = 1
    while p.exists():
        i += 1
        p = Path("results") / f"{command}-{_slug(model)}-{stamp}-{i}"
    return p


def _check_out_dir(out: Path | None, files: tuple[str, ...] = (), what: str = "--out") -> None:
    """``out`` must be a writable folder (created if missing) and each of its ``files`` writable — before work."""
    if out is None:
        return
    ensure_writable(out, directory=True, what=what)
    for f in files:
        ensure_writable(out / f, what=what)
    _OUTPUTS.append((Path(out), tuple(files)))  # recorded in out/commands.json when the command succeeds


#: the folders the running command writes into (:func:`_check_out_dir`), for :func:`_record_commands`
_OUTPUTS: list[tuple[Path, tuple[str, ...]]] = []


def _record_commands(s: Shared | None = None) -> None:
    """Append the command that ran (as typed, and its shared options) to ``commands.json`` in each folder it wrote
    into: the report (``georobust report``) says which command produced each part (georobust.report.commands)."""
    from .report.commands import command_line, current_context, record

    pending, _OUTPUTS[:] = list(_OUTPUTS), []
    ctx = current_context()
    if ctx is None or not pending:
        return
    line = command_line(ctx)
    opts = {k: v for k, v in (s.__dict__ if s is not None else {}).items() if k != "verbose"}
    folders: dict[Path, list[str]] = {}
    for out, files in pending:
        folders.setdefault(out, []).extend(files)
    for out, files in folders.items():
        if out.is_dir():
            record(out, command=line, files=files, options=opts)


# ----------------------------------------------------------------------------------- shared options
@dataclass
class Shared:
    """The options every command that loads data or a model shares (see :data:`SHARED`)."""

    model: str | None = None
    data: str | None = None
    split: str | None = None
    limit: int | None = None
    root: str | None = None
    data_option: list[str] = field(default_factory=list)
    device: str = "cpu"
    seed: int = 0
    verbose: bool = False
    logits: str | None = None


#: name -> (type, option factory taking the command's default): every shared option, defined once
SHARED: dict[str, tuple[Any, Any]] = {
    "model": (str, lambda d: typer.Option(d, "--model", metavar="SPEC", help=MODEL_HELP)),
    "data": (str, lambda d: typer.Option(d, "--data", metavar="[" + "|".join(DATA_NAMES) + "]",
                                         help="data set (georobust data list)")),
    "split": (str, lambda d: typer.Option(d, "--split", metavar="[train|test]", help="which split")),
    "limit": (Optional[int], lambda d: typer.Option(d, "--limit", help="use only the first N samples")),
    "root": (Optional[str], lambda d: typer.Option(d, "--root", help="folder of --data folder (one sub-folder "
                                                                      "of images per class)")),
    "data_option": (Optional[list[str]], lambda d: typer.Option(
        d, "--data-option", "-D", metavar="KEY=VALUE",
        help="data set option, repeatable (folder: size=28, channels=1; spheres: dim=, n=, ...)")),
    "device": (str, lambda d: typer.Option(d, "--device", help="cpu, cuda, cuda:N or mps (checked before any work)")),
    "seed": (int, lambda d: typer.Option(d, "--seed", help="seeds torch and every random choice of the command")),
    "verbose": (bool, lambda d: typer.Option(d, "--verbose", "-v", help="log what the library does")),
    "logits": (Optional[str], lambda d: typer.Option(
        d, "--logits", metavar="[log]",
        help="log: the model returns probabilities (a softmax); use their log as logits")),
}


#: the standard default of each shared option; a command overrides some (``@shared(limit=50)``)
STANDARD: dict[str, Any] = dict(model="zoo:mlp-digits", data="digits", split="test", limit=None, root=None,
                                data_option=None, device="cpu", seed=0, verbose=False, logits=None)


def shared(*names: str, omit: tuple[str, ...] = (), **defaults):
    """Add the shared options to a command: ``names`` (default: every option of :data:`SHARED`) less ``omit``,
    each with its :data:`STANDARD` default unless ``defaults`` gives the command's own.

    The command is written as ``def cmd(s: Shared, <own options>)``; the wrapper typer sees takes the own
    options plus the shared ones and calls ``cmd(Shared(...), **own)``, with georobust errors as one line
    (exit status 2). The command then begins with :func:`_start`.
    """
    chosen = [n for n in (names or SHARED) if n not in omit]
    unknown = (set(names) | set(omit) | set(defaults)) - set(SHARED)
    if unknown:
        raise OptionError(f"shared(): no shared option {sorted(unknown)}; the shared options are {list(SHARED)}")
    if set(defaults) - set(chosen):
        raise OptionError(f"shared(): defaults given for options the command leaves out: "
                          f"{sorted(set(defaults) - set(chosen))}")
    values = {n: defaults.get(n, STANDARD[n]) for n in chosen}

    def deco(fn):
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in list(inspect.signature(fn).parameters.values())[1:]]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=SHARED[n][1](d),
                                   annotation=SHARED[n][0]) for n, d in values.items()]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra

        @functools.wraps(fn)
        def wrapper(**kw):
            s = Shared(**{n: kw.pop(n) for n in values})
            s.data_option = list(s.data_option or [])
            _OUTPUTS.clear()
            try:
                result = fn(s, **kw)
                _record_commands(s)
                return result
            except GeorobustError as e:
                _print_error(e)
                raise typer.Exit(2) from None

        del wrapper.__wrapped__  # typer must see the new signature, not fn's
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper
    return deco


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise OptionError(f"unknown device {name!r} ({e}); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
        return dev
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu")
        return dev
    raise OptionError(f"--device {name}: {dev.type!r} devices are not supported; use cpu, cuda, cuda:N or mps")


def _data_options(s: Shared) -> dict[str, Any]:
    opts = parse_assignments(s.data_option, "data option (-D)")
    if s.root is not None:
        if "root" in opts and str(opts["root"]) != s.root:
            raise OptionError(f"--root {s.root} and -D root={opts['root']} both given; give the root once")
        opts["root"] = s.root
    return opts


def _check_logits(s: Shared) -> None:
    if s.logits is not None and s.logits not in ("log",):
        raise OptionError(f"--logits {s.logits!r}: the only choice is 'log' (the model returns probabilities)")


def _load_model(spec: str, dev: torch.device, logits: str | None):
    from .models import load_model

    if ":" in spec and not spec.startswith("zoo:") and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # factory models from the current folder (mymodels:make)
    return load_model(spec, dev, logits=logits)


def _check_fits(clf, x: torch.Tensor, s: Shared, num_classes: int | None) -> None:
    """The model accepts the data (shape from its metadata, else one forward pass) and has enough classes."""
    meta = getattr(clf, "metadata", None) or {}
    shape = tuple(x.shape[1:])
    where = f"model {s.model} and --data {s.data}"
    if "input_shape" in meta:
        want = tuple(json.loads(meta["input_shape"]))
        if want != shape:
            raise InputError(f"{where} do not fit: the model expects inputs of shape {want}, the data are {shape}; "
                             "pick a data set of that shape (georobust data list) or a model for this one "
                             "(georobust zoo list)")
    par = next(iter(clf.parameters()), None)
    probe = x[:2].to(par.dtype) if par is not None and par.is_floating_point() else x[:2]  # as prepare() converts
    with torch.inference_mode():
        try:
            out = clf(probe)
        except GeorobustError:
            raise
        except (RuntimeError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{where} do not fit: the model fails on inputs of shape {shape} ({first})") from None
    k = meta.get("num_classes")
    k = int(k) if k is not None else (int(out.shape[1]) if out.ndim == 2 else None)
    if num_classes and k is not None and num_classes > k:
        raise InputError(f"{where} do not fit: the data have {num_classes} classes, the model only {k}")


@dataclass
class Run:
    """What :func:`_start` prepared for a command: the shared options, the device, the checked data options,
    the data (``x``, ``y``: the ``--split``, first ``--limit`` samples) and the model."""

    s: Shared
    dev: torch.device
    data_options: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    clf: Any = None
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None

    def load(self, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Another split of the command's data set (same data options), on the device."""
        x, y = gdata.load(self.s.data, split=split, limit=limit, **self.data_options)
        return x.to(self.dev), y.to(self.dev)

    def load_model(self, spec: str):
        """The model ``spec`` on the device, checked against the data (:func:`_check_fits`)."""
        clf = _load_model(spec, self.dev, self.s.logits)
        if self.x is not None:
            self.check_fits(clf)
        return clf

    def check_fits(self, clf, num_classes: int | None = None) -> None:
        """``clf`` takes the data and has enough classes (``num_classes``, default the data set's)."""
        _check_fits(clf, self.x, self.s, num_classes or self.num_classes)


def _setup(s: Shared) -> torch.device:
    torch.manual_seed(s.seed)
    lib = logging.getLogger("georobust")
    if not any(isinstance(h, _LogHandler) for h in lib.handlers):
        lib.addHandler(_LogHandler())
    lib.setLevel(logging.INFO if s.verbose else logging.WARNING)
    lib.propagate = False
    _check_logits(s)
    return _device(s.device)


def _num_classes(s: Shared, data_opts: dict) -> int | None:
    try:
        return gdata.info(s.data, **data_opts).num_classes or None
    except GeorobustError:
        return None


def _start(s: Shared, *, model: bool = True, data: bool = True, check_outputs=None) -> Run:
    """How every command begins, before any work: seed and logging, the device, the data options, the outputs
    (``check_outputs()``), then the data, the model (``--model``), and whether they fit each other. A command
    that needs more data (another split) or another model asks the :class:`Run` (``run.load``,
    ``run.load_model``), with the same data options and checks."""
    if not _SHARDED and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # N ranks would each do it all
        raise OptionError("this command is not sharded over processes: under torchrun run `georobust evaluate` "
                          "(with or without --preset); run this one as one process, without torchrun")
    dev = _setup(s)
    opts = _data_options(s) if data else {}
    if check_outputs is not None:
        check_outputs()
    run = Run(s, dev, opts)
    if data:
        run.x, run.y = run.load(s.split or "test", s.limit)
        run.num_classes = _num_classes(s, opts)
    if model:
        run.clf = run.load_model(s.model)
    return run


def _classes(s: Shared) -> list[str] | None:
    """Class names of a named data set, for figure labels (``folder`` data has none)."""
    try:
        return gdata.info(s.data).classes or None
    except GeorobustError:
        return None


# ------------------------------------------------------------------------------------------ the app
def _version(value: bool):
    if value:
        console.print(f"georobust {__version__} (torch {torch.__version__})")
        raise typer.Exit()


app = typer.Typer(help="georobust: attack, analyse and defend PyTorch classifiers — geometrically.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """georobust: attack, analyse and defend PyTorch classifiers — geometrically."""


data_app = typer.Typer(help="Data sets.", no_args_is_help=True)
zoo_app = typer.Typer(help="Architectures and shipped models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(zoo_app, name="zoo")


# ---------------------------------------------------------------------------------------------- data
@data_app.command("list")
@shared("verbose")
def data_list(s: Shared):
    """Each data set, whether it is available here, and its shape."""
    _start(s, model=False, data=False)
    rows = [["name", "available", "shape", "classes", "train/test", "description"]]
    for d in gdata.datasets():
        rows.append([d.name, "yes" if d.available else "no", "×".join(map(str, d.shape)) or "any",
                     str(d.num_classes or "any"), "/".join(str(d.sizes.get(sp, "-")) for sp in ("train", "test")),
                     d.description])
    _print_table("data sets", rows)
    if not gdata.info("fashion-mnist").available:
        console.print("fashion-mnist: apt-get install -y dataset-fashion-mnist, or set $GEOROBUST_DATA")


# ----------------------------------------------------------------------------------------------- zoo
@zoo_app.command("list")
@shared("verbose")
def zoo_list(s: Shared):
    """Architectures that can be built by name, and the shipped pretrained models."""
    _start(s, model=False, data=False)
    from .models import manifest

    console.print("architectures: " + ", ".join(registry.architectures.names()))
    rows = [["model", "arch", "data", "test accuracy", "robust accuracy L∞: PGD-20 / cascade", "seed", "command"]]

    def robust(e):
        pgd, casc = e.get("robust_accuracy"), e.get("cascade_robust_accuracy")
        if not pgd:
            return "—"
        return (f"{pgd['value']:.3f} / {casc['value']:.3f}" if casc else f"{pgd['value']:.3f} / —") + \
            f" at ε={pgd['eps']:g} (n={pgd['n']})"

    for name, e in manifest().items():
        rows.append([f"zoo:{name}", e["arch"], e["data"], f"{e['test_accuracy']:.4f}", robust(e), str(e["seed"]),
                     e["command"]])
    _print_table("shipped models", rows)
    from .detection import cnn as _cnn

    det = json.loads(_cnn.WEIGHTS_FILE.with_suffix(".json").read_text())
    _print_table("shipped detectors (georobust.detection)", [
        ["detector", "data", "quality", "load", "command"],
        ["HOGPeopleDetector", "INRIA (OpenCV's SVM)", "OpenCV's boxes on all 795 vtest frames", "HOGPeopleDetector()",
         "cv2.HOGDescriptor_getDefaultPeopleDetector()"],
        ["CNNPeopleDetector", "vtest frames 0-599, HOG boxes as labels",
         f"AP@0.5 {det['ap50_test']:.3f} on frames 600-794 (vs HOG boxes)", "load_cnn_people()", det["command"]]])


# --------------------------------------------------------------------------------------------- train
@app.command()
@shared(omit=("model", "split", "logits"))  # the model is built (--arch) or --init; it trains on the train split
def train(
    s: Shared,
    out: Path = typer.Option(..., help="output .safetensors file (a .json with metadata goes beside it)"),
    arch: Optional[str] = typer.Option(None, help="architecture name (georobust zoo list); with --init, that model's"),
    init: Optional[str] = typer.Option(None, help="start from this model (zoo:NAME or .safetensors): fine-tune"),
    epochs: int = typer.Option(10), lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(128), optimizer: str = typer.Option("adam", help="adam or sgd"),
    schedule: str = typer.Option("cosine"), weight_decay: float = typer.Option(0.0),
    objective: str = typer.Option("standard", help="training objective: "
                                  + ", ".join(registry.objectives.names())),
    objective_option: Optional[list[str]] = typer.Option(None, "--objective-option", "-O", metavar="KEY=VALUE",
                                                         help="objective option, repeatable"),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="checkpoint each epoch here"),
    resume: bool = typer.Option(False, "--resume", help="resume from --checkpoint-dir"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace an existing checkpoint in --checkpoint-dir and an existing --out"),
    robust_eps: Optional[float] = typer.Option(None, help="report PGD-10 L∞ robust accuracy at this eps per epoch"),
):
    """Train a zoo architecture on a data set; write safetensors weights and a metadata JSON."""
    from .defenses import fit
    from .models import Classifier, build, save_weights

    if not init and not arch:
        raise OptionError("train needs --arch (georobust zoo list), or --init to fine-tune a model")
    if resume and checkpoint_dir is None:
        raise OptionError("--resume needs --checkpoint-dir (the folder of the run to continue)")
    if resume and overwrite:
        raise OptionError("--resume and --overwrite contradict each other: resume the checkpoint, or replace it")
    if out.suffix != ".safetensors":
        raise OptionError(f"--out {out}: weights are written as safetensors; name the file "
                          f"{out.with_suffix('.safetensors') if out.suffix else str(out) + '.safetensors'}")
    opts = registry.objectives.get(objective).check_options(
        parse_assignments(objective_option, "objective option (-O)"))
    s.split = "train"

    def outputs():
        ensure_writable(out, overwrite=overwrite or resume, what="--out")
        ensure_writable(out.with_suffix(".json"), overwrite=True, what="--out")
        if checkpoint_dir is not None:
            ensure_writable(checkpoint_dir, directory=True, what="--checkpoint-dir")
            existing = _checkpoint_files(checkpoint_dir)
            if existing and not (resume or overwrite):
                raise OutputError(f"--checkpoint-dir {checkpoint_dir} already holds a checkpoint of an earlier run "
                                  f"({', '.join(p.name for p in existing)}); pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another folder")

    run = _start(s, model=False, check_outputs=outputs)
    dev, x, y = run.dev, run.x, run.y
    xt, yt = run.load("test")
    num_classes = run.num_classes or int(torch.cat([y, yt]).max()) + 1
    if init:
        s.model = init
        model = _load_model(init, dev, None)
        meta = getattr(model, "metadata", None)
        if not meta or "arch" not in meta:
            raise OptionError(f"--init {init}: only zoo:NAME or a .safetensors file written by georobust train can "
                              "be fine-tuned (its architecture must be known to save the weights)")
        if arch is not None and arch != meta["arch"]:
            raise OptionError(f"--arch {arch} and --init {init} (a {meta['arch']}) conflict: --init fine-tunes that "
                              f"model with its own architecture; drop --arch to fine-tune, or drop --init to train "
                              f"a new {arch}")
        arch = meta["arch"]
        run.check_fits(model, num_classes)
    else:
        try:
            module = build(arch, tuple(x.shape[1:]), num_classes, seed=s.seed)
        except GeorobustError:
            raise
        except (RuntimeError, ValueError) as e:
            raise InputError(f"architecture {arch} cannot take inputs of shape {tuple(x.shape[1:])}: "
                             f"{str(e).splitlines()[0]}") from None
        model = Classifier(module, name=out.stem).to(dev)
    steps = (x.shape[0] + batch_size - 1) // batch_size
    kw = {"overwrite": True} if checkpoint_dir is not None and overwrite else {}
    t0 = time.perf_counter()
    with Reporter("epoch 1", steps, unit="batches") as rep:
        def on_step(epoch, step, total, terms):
            rep.update(step + 1, total=total, description=f"epoch {epoch + 1}/{epochs}",
                       info=" ".join(f"{k}={v:.3f}" for k, v in terms.items()))
        hist = fit(model, (x, y), objective, epochs=epochs, optimizer=optimizer, lr=lr, schedule=schedule,
                   weight_decay=weight_decay, batch_size=batch_size, seed=s.seed, checkpoint_dir=checkpoint_dir,
                   resume=resume, eval_data=(xt, yt), robust_eps=robust_eps,
                   objective_options=opts, on_step=on_step, **kw)
    seconds = time.perf_counter() - t0
    total_seconds = hist.train_seconds  # fit's count, across resumes
    command = "georobust " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = {"arch": arch, "data": s.data, "seed": s.seed, "epochs": epochs, "objective": objective,
            "objective_options": opts, **({"init": init} if init else {}), "command": command,
            "test_accuracy": hist.last.get("test_accuracy"), "train_seconds": total_seconds,
            **({"train_seconds_this_run": seconds} if total_seconds != seconds else {}),
            "history": hist.epochs, "torch": torch.__version__}
    if yt.ndim == 3:  # a segmenter: the test mIoU beside the pixel accuracy (test_accuracy)
        from .checks import predict
        from .evaluation.metrics import mean_iou

        model.eval()
        meta["test_miou"] = mean_iou(predict(model, xt), yt, num_classes)
    model.name = out.stem
    save_weights(model, out, arch=arch, input_shape=tuple(x.shape[1:]), num_classes=num_classes,
                 extra={"data": s.data, "test_accuracy": json.dumps(meta["test_accuracy"])})
    from .storage import atomic_write_text

    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    acc = meta["test_accuracy"]
    console.print(f"test accuracy {_fmt(acc) if acc is not None else '—'} after {epochs} epochs "
                  f"({total_seconds:.1f}s of training); wrote {out} and {out.with_suffix('.json')}")


def _checkpoint_files(d: Path) -> list[Path]:
    """The files of a training checkpoint in ``d`` (empty: none)."""
    from .defenses.train import checkpoint_files

    return list(checkpoint_files(d))


# -------------------------------------------------------------------------------------------- attack
#: attack options that also have their own flag (``--eps``, ``--norm``, ``--target``)
_CLI_SET = ("eps", "norm", "target")


def _doc_args(fn) -> dict[str, str]:
    """``name -> description`` from a Google-style docstring's ``Args:`` section (``a, b: ...`` counts for both)."""
    doc = inspect.getdoc(fn) or ""
    m = re.search(r"^Args:\n(.*?)(?:\n\S|\Z)", doc, re.S | re.M)
    out: dict[str, str] = {}
    if not m:
        return out
    names: list[str] = []
    for line in m.group(1).splitlines():
        mm = re.match(r"^    ([A-Za-z_][\w, ]*):\s*(.*)$", line)
        if mm:
            names = [n.strip() for n in mm.group(1).split(",")]
            for n in names:
                out[n] = mm.group(2).strip()
        elif line.strip() and names:
            for n in names:
                out[n] += " " + line.strip()
    return out


_CITATION = re.compile(r"\(([^()]*?\b(?:19|20)\d\d)\b[^()]*\)")


def _paper(entry) -> str:
    """The paper of an entry: the first ``(Authors, VENUE YEAR)`` in its function's docstring's first paragraph,
    else in its module's (a full reference there, ``(Author, Other & Other, "Title", VENUE YEAR)``, is
    shortened to ``Author et al., VENUE YEAR``); ``—`` when neither cites one."""
    m = _CITATION.search(" ".join((inspect.getdoc(entry.fn) or "").split("\n\n")[0].split()))
    if m:
        return m.group(1)
    module = sys.modules.get(getattr(entry.fn, "__module__", ""), None)
    m = _CITATION.search(" ".join((inspect.getdoc(module) or "").split("\n\n")[0].split()))
    if not m:
        return "—"
    parts = [p.strip() for p in m.group(1).split(",")]
    if len(parts) > 2 and any('"' in p for p in parts):  # authors, title, venue: the short form
        return f"{parts[0]} et al., {parts[-1]}"
    return m.group(1)


def _what(entry) -> str:
    return re.sub(r"\s*\([^()]*\)", "", entry.summary).replace("``", "").strip()


def _first_paragraph(entry) -> str:
    return " ".join((inspect.getdoc(entry.fn) or entry.summary).split("\n\n")[0].split()).replace("``", "")


def _options_help(entry) -> str:
    """One line per option of a registry entry: name, default (or ``required``), its docstring description."""
    desc = {k: v.replace("``", "") for k, v in _doc_args(entry.fn).items()}
    lines = []
    for n, p in entry.options().items():
        default = "required" if p.default is inspect.Parameter.empty else f"default {p.default!r}"
        text = desc.get(n, "")
        lines.append(f"  {n} ({default}){': ' + text if text else ''}")
    return "\n".join(lines)


def _attack_help(entry) -> str:
    return "\n\n".join([_first_paragraph(entry),
                         f"threat model: {entry.threat}; norms: {', '.join(entry.norms)}; paper: {_paper(entry)}",
                         "Attack options (-o KEY=VALUE; eps, norm, target also as --eps, --norm, --target):",
                         _options_help(entry)])


class RegistryGroup(TyperGroup):
    """A group with one sub-command per registry entry (``attack NAME``, ``analyse NAME``). A name without a
    command goes to ``check_name``, which raises the one-line error (unknown name with a suggestion, or why
    the entry has no command here); the commands are listed in registration order."""

    check_name: Callable[[str], Any] = staticmethod(lambda name: None)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and name not in self.commands:
            try:
                self.check_name(name)
            except GeorobustError as e:
                _print_error(e)
                ctx.exit(2)
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx):
        return list(self.commands)


class AttackGroup(RegistryGroup):
    """``georobust attack NAME``: one sub-command per registered per-sample attack."""

    check_name = staticmethod(lambda name: _attack_entry(name))


attack_app = typer.Typer(cls=AttackGroup, no_args_is_help=True, invoke_without_command=True,
                         help="Run one attack: georobust attack NAME [OPTIONS]; NAME --help shows that attack's "
                              "options, defaults and paper; --list lists them.")
app.add_typer(attack_app, name="attack")


@attack_app.callback()
def _attack_main(ctx: typer.Context,
                 list_: bool = typer.Option(False, "--list", help="list the attacks: threat model, norms, paper")):
    if list_:
        rows = [["attack", "threat model", "norms", "paper", "what"]]
        for n in registry.attacks.names():
            e = registry.attacks.get(n)
            rows.append([n, e.threat, ", ".join(e.norms), _paper(e),
                         _what(e) + (" (run with georobust universal)" if not e.threat_model.per_sample else "")])
        _print_table("attacks", rows)
        raise typer.Exit()


def _attack_entry(name: str):
    entry = registry.attacks.get(name)
    if not entry.threat_model.per_sample:  # one perturbation for a whole data set
        raise OptionError(f"{name!r} computes one perturbation for a whole data set: run `georobust universal` "
                          "(checkpointed passes, fooling rates, figures)")
    return entry


def attack_options(entry, *, eps=None, norm=None, target=None, option=None) -> dict[str, Any]:
    """The keyword options of one attack run from the command line, checked before any work."""
    opts = parse_assignments(option, "attack option (-o)")
    for key, val in (("eps", eps), ("norm", norm), ("target", target)):
        if val is None:
            continue
        if key in opts:
            raise OptionError(f"--{key} {val} and -o {key}={opts[key]} both given; give {key} once")
        opts[key] = val
    opts = entry.check_options(opts)  # names checked, text values converted to each option's type
    if "norm" in opts and str(opts["norm"]) not in entry.norms:
        raise OptionError(f"{entry.name} supports --norm {' or '.join(entry.norms)}, not {opts['norm']}")
    for n, p in entry.options().items():
        if p.default is inspect.Parameter.empty and n not in opts:
            flag = f"--{n}" if n in _CLI_SET else f"-o {n}=VALUE"
            what = " (the radius of the ball of a bounded attack), e.g. --eps 0.1" if n == "eps" else ""
            raise OptionError(f"{entry.name} needs {flag}{what}")
    return opts


def _batch_size(entry, opts) -> int:
    p = entry.options().get("batch_size")
    bs = opts.get("batch_size", p.default if p is not None else None)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        raise OptionError(f"batch_size must be a positive integer, got {bs!r}")
    return bs


def _chunks(entry, clf, x, y, opts) -> list[slice] | None:
    """Sample ranges that make a chunked run the same computation as one call, or ``None`` (not chunkable),
    from the entry's ``chunking`` (:mod:`georobust.registry`): ``"position"``, batches of ``batch_size`` in
    order; ``"remaining"``, batches formed over the samples still to attack (correctly classified when
    untargeted), so a chunk starts at every ``batch_size``-th of them."""
    n = x.shape[0]
    if entry.chunking is None or "batch_size" not in entry.options():
        return None
    bs = _batch_size(entry, opts)
    if entry.chunking == "position":  # each sample's answer is its own: chunks of batch_size by position
        return [slice(i, min(i + bs, n)) for i in range(0, n, bs)]
    if y is None or opts.get("target") is not None:
        todo = torch.arange(n)
    else:
        from .checks import predict

        todo = (predict(clf, x) == y).nonzero().squeeze(1).cpu()
    starts = [0] + [int(todo[k]) for k in range(bs, todo.numel(), bs)]
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


def run_attack(entry, clf, x, y, opts: dict[str, Any], *, seed: int = 0, reporter: Reporter | None = None):
    """Run ``entry`` on ``(x, y)``, in chunks when that is the same computation (see :func:`_chunks`),
    reporting samples done; the chunks' results are merged with :meth:`AttackResult.concat`."""
    from .results import AttackResult

    opts = dict(opts)
    known = entry.options()
    gen_seed = None
    if "generator" in known and "seed" in known and "seed" not in opts and "generator" not in opts:
        gen_seed = seed  # one generator for all chunks: the draws of gr.<attack>(..., seed=--seed)
    elif "seed" in known and "seed" not in opts and known["seed"].default is not inspect.Parameter.empty:
        opts["seed"] = seed
    chunks = _chunks(entry, clf, x, y, opts)
    target = opts.pop("target", None)
    if isinstance(target, (list, tuple)):  # per-sample targets (-o target=[...]): sliced with the chunks
        target = torch.as_tensor(target, device=x.device)
    if isinstance(target, torch.Tensor) and target.ndim > 0 and target.shape[0] != x.shape[0]:
        raise OptionError(f"target has {target.shape[0]} labels for {x.shape[0]} samples; they must match")

    def tgt(sl):
        return target[sl] if isinstance(target, torch.Tensor) else target

    if gen_seed is not None and opts.get("random_start", True):
        opts["generator"] = torch.Generator(device=x.device).manual_seed(gen_seed)
    if chunks is None or len(chunks) == 1:
        if reporter:
            reporter.update(0)
        res = entry.fn(clf, x, y, **opts, **({} if target is None else {"target": target}))
        parts = [res]
    else:
        parts = []
        for sl in chunks:
            t = tgt(sl)
            parts.append(entry.fn(clf, x[sl], None if y is None else y[sl], **opts,
                                  **({} if t is None else {"target": t})))
            if reporter:
                reporter.update(sl.stop)
        res = AttackResult.concat(parts)
    if "generator" in opts and gen_seed is not None and "seed" in res.params:
        res.params["seed"] = gen_seed  # what gr.<attack>(..., seed=--seed) records
    if reporter:
        reporter.update(x.shape[0])
    return res


def _query_budget(entry, opts) -> int | None:
    """The per-sample query budget of a decision-based attack (``None`` for the others)."""
    p = entry.options().get("max_queries")
    if entry.threat != "decision" or p is None:
        return None
    b = opts.get("max_queries", p.default)
    return b if isinstance(b, int) and not isinstance(b, bool) and b > 0 else None


def _make_attack_command(name: str):
    entry = registry.attacks.get(name)
    norms = "|".join(entry.norms)

    @shared(limit=100)
    def cmd(
        s: Shared,
        eps: Optional[float] = typer.Option(None, "--eps", help="budget of a bounded attack (required by pgd; "
                                            "omit for minimal mode where the attack has one)"),
        norm: Optional[str] = typer.Option(None, "--norm", metavar=f"[{norms}]",
                                           help=f"norm (default: {entry.norms[0] if entry.norms else '—'})"),
        target: Optional[int] = typer.Option(None, "--target", help="targeted attack towards this class"),
        option: Optional[list[str]] = typer.Option(None, "--option", "-o", metavar="KEY=VALUE",
                                                   help="attack option, repeatable (listed below)"),
        use_labels: bool = typer.Option(False, "--use-labels",
                                        help="attack the true labels (default: the model's predictions)"),
        out: Optional[Path] = typer.Option(None, "--out", help="write the result and a figure into this folder"),
    ):
        _attack(entry, s, eps=eps, norm=norm, target=target, option=option, use_labels=use_labels, out=out)

    attack_app.command(name, help=escape(_attack_help(entry)), short_help=escape(_what(entry)))(cmd)


def _attack(entry, s: Shared, *, eps, norm, target, option, use_labels, out) -> None:
    from . import plots

    name = entry.name
    opts = attack_options(entry, eps=eps, norm=norm, target=target, option=option)
    files = (f"result_{name}.json", f"result_{name}.safetensors", f"examples_{name}.png")
    run = _start(s, check_outputs=lambda: _check_out_dir(out, files))
    x, y = run.x, run.y
    budget = _query_budget(entry, opts)
    if budget is None:
        with Reporter(name, x.shape[0]) as rep:
            res = run_attack(entry, run.clf, x, y if use_labels else None, opts, seed=s.seed, reporter=rep)
    else:  # decision-based: progress is the label queries spent out of the budget (counted at the model)
        total = budget * x.shape[0]
        with Reporter(name, total, unit="queries") as rep:
            def count(module, inputs, output):
                rep.update(min(rep.completed + int(inputs[0].shape[0]), total))
            hook = run.clf.register_forward_hook(count)
            try:
                res = run_attack(entry, run.clf, x, y if use_labels else None, opts, seed=s.seed)
            finally:
                hook.remove()
            rep.update(total)
    summ = res.summary()
    if res.size is not None and bool(res.success.any()):  # a sized threat model (spatial): the size found
        sz = res.size[res.success].double()
        summ.update(median_size=float(sz.median()), mean_size=float(sz.mean()))
    rows = [["metric", "value"]] + [[k, _fmt(v)] for k, v in summ.items() if k != "warnings"]
    _print_table(f"{name} on {s.model} / {s.data} ({s.split})", rows)
    _warn(getattr(res, "warnings", None))
    if out is not None:
        res.save(out / f"result_{name}")
        plots.adversarial_examples(res, out / f"examples_{name}.png", classes=_classes(s))
        console.print(f"wrote {out}/result_{name}.json/.safetensors and {out}/examples_{name}.png")


for _name in registry.attacks.names():
    if registry.attacks.get(_name).threat_model.per_sample:
        _make_attack_command(_name)


# ------------------------------------------------------------------------------------------ evaluate
def _eval_default_eps() -> str:
    from .evaluation.suite import DEFAULT_EPS

    return "; ".join(f"L{'∞' if k == 'inf' else k}: {','.join(f'{e:g}' for e in v)}" for k, v in DEFAULT_EPS.items())


def _eval_options(option: list[str] | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """``-o ATTACK.KEY=VALUE`` → ``{attack: {key: value}}``; an attack that is not run is an error."""
    out: dict[str, dict[str, Any]] = {}
    for o in option or []:
        head, _, _ = o.partition("=")
        if "." not in head:
            raise OptionError(f"evaluate option {o!r} must look like ATTACK.KEY=VALUE, e.g. pgd.steps=20")
        a, _, rest = o.partition(".")
        if a not in names:
            raise OptionError(f"option {o!r} is for attack {a!r}, which this evaluation does not run "
                              f"(attacks: {', '.join(names)}); add it to --attacks or drop the option")
        kv = parse_assignments([rest], f"option of {a} (-o)")
        for k in kv:
            if k in ("eps", "norm"):
                raise OptionError(f"option {o!r}: evaluate sets {k} itself; use --{k}")
            if k in out.setdefault(a, {}):
                raise OptionError(f"option {a}.{k} is given twice; give it once")
        out[a].update(kv)
    for a, kv in out.items():
        out[a] = registry.attacks.get(a).check_options(kv)
    return out


class _Silent:
    """The progress of a rank other than 0 under torchrun: nothing on the terminal (its log goes to a file)."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, *args, **kwargs) -> None:
        return None

    def print(self, msg: str) -> None:
        log.info("%s", msg)


#: commands that shard their work under torchrun register here (:func:`_distributed`); :func:`_start` refuses the others
_SHARDED: list = []


def _distributed(s: Shared, out: Path | None):
    """This process's place in a torchrun launch (one process without one): ``--device cuda`` becomes its local
    GPU, the process group is joined (gloo on CPU, NCCL on CUDA), ranks other than 0 log to files
    (``OUT/logs/rank<R>.log``, else ``georobust-logs/``)."""
    from .evaluation import distributed as gdist

    ctx = gdist.context_from_env()
    _SHARDED.append(s)
    if not ctx.distributed:
        return ctx
    dev = gdist.device_for(ctx, _device(s.device))
    s.device = str(dev)
    gdist.init(ctx, dev)
    return ctx


def _rank_logs(ctx, out: Path | None) -> None:
    """After :func:`_start` (which sets up the terminal's logging): ranks other than 0 log to a file instead."""
    from .evaluation import distributed as gdist

    gdist.log_to_file(ctx, (out / "logs") if out is not None else Path("georobust-logs"))


@app.command()
@shared(limit=500)
def evaluate(
    s: Shared,
    attacks: Optional[str] = typer.Option(None, help="comma-separated attack names (default: fgsm, pgd, deepfool "
                                          "where they support --norm)"),
    eps: Optional[str] = typer.Option(None, help="comma-separated eps values (default: " + _eval_default_eps() + ")"),
    norm: str = typer.Option("inf", metavar="[2|inf]", help="the norm of every attack and eps"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", metavar="ATTACK.KEY=VALUE",
                                               help="an option of one attack, repeatable (e.g. pgd.steps=20)"),
    out: Optional[Path] = typer.Option(None, help="write evaluation.json, results and figures into this folder"),
    report: bool = typer.Option(False, "--report", help="at the end, write OUT/report.html: the HTML report of "
                                "everything in --out (georobust report)"),
    preset: Optional[str] = typer.Option(None, help="run a cascade instead: 'standard' = APGD-CE → APGD-T → FAB-T → "
                                         "Square, each on the samples still robust, at one --eps; robust accuracy "
                                         "is the per-sample worst case"),
    resume: bool = typer.Option(False, "--resume", help="continue the run whose per-shard checkpoints are in --out"),
    shard_size: int = typer.Option(256, "--shard-size", help="samples per shard: the unit of work of a process "
                                   "under torchrun and of a checkpoint; it (not the number of processes) fixes the "
                                   "random draws"),
    adaptive: bool = typer.Option(False, "--adaptive", help="run the adaptive attacks on a defended model at one "
                                  "--eps (non-adaptive PGD, BPDA/EOT/detector-aware PGD, SPSA; -o steps=, "
                                  "spsa=false, ...): --defence DIR or a defended --model"),
    defence: Optional[Path] = typer.Option(None, "--defence", help="with --adaptive: a defence folder written by "
                                           "georobust defend (replaces --model)"),
):
    """Clean accuracy and robust accuracy versus ε under several attacks (a whole evaluation), or the standard
    cascade of strong attacks at one ε (--preset standard). Sharded over processes when started by torchrun
    (torchrun --nproc-per-node N -m georobust evaluate ...): the same results whatever N."""
    if adaptive or defence is not None:  # issue 13: georobust.defend_cli
        from .defend_cli import evaluate_adaptive
        return evaluate_adaptive(sys.modules[__name__], s, defence=defence, attacks=attacks, eps=eps, norm=norm,
                                 option=option, out=out, preset=preset, report=report, resume=resume)
    from .checks import check_norm
    from .evaluation import distributed as gdist
    from .evaluation import save_evaluation
    from .evaluation.suite import DEFAULT_EPS, check_attacks, default_attacks

    nrm = check_norm(norm)
    if report and out is None:
        raise OptionError("--report writes OUT/report.html: give --out")
    if preset is None and _dense_data(s):  # a segmentation data set: mIoU vs ε (georobust.evaluation.dense)
        _evaluate_dense(s, attacks=attacks, eps=eps, norm=nrm, option=option, out=out)
        _report_at_end(s, report, out)
        return
    gdist.check_shard_size(shard_size)
    if resume and out is None:
        raise OptionError("--resume needs --out (the folder holding the run's checkpoints)")
    if preset is not None:
        _evaluate_cascade(s, preset=preset, attacks=attacks, eps=eps, norm=nrm, option=option, out=out, resume=resume,
                          shard_size=shard_size)
        _report_at_end(s, report, out)
        return
    names = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else default_attacks(nrm)
    if names and all(not registry.attacks.get(a).threat_model.lp for a in names):  # e.g. spatial: sized budgets
        _evaluate_sized(s, names=names, eps=eps, option=option, out=out)
        _report_at_end(s, report, out)
        return
    check_attacks(names, nrm)
    options = _eval_options(option, names)
    eps_list = _floats(eps, "--eps")
    n_runs = 0
    for a in names:
        e = registry.attacks.get(a)
        n_runs += 1 if e.threat_model.curve else sum(1 for v in (eps_list or DEFAULT_EPS[nrm]) if v != 0)
    files = ("evaluation.json", "robust_accuracy.png") + tuple(
        f for a in names for f in (f"result_{a}.json", f"result_{a}.safetensors", f"examples_{a}.png"))
    ctx = _distributed(s, out)
    run = _start(s, check_outputs=lambda: _check_out_dir(out, files))
    _rank_logs(ctx, out)
    x, y = run.x, run.y
    n = x.shape[0]
    gdist.check_world(ctx, n, shard_size)
    eps_sorted = sorted(eps_list if eps_list is not None else DEFAULT_EPS[nrm])
    # progress: the samples of the finished rounds of shards (all ranks), plus rank 0's runs in its current shard
    state = {"base": 0, "runs": 0, "running": False, "shard": None}
    with (Reporter("evaluating", n_runs * n, unit="attack-samples") if ctx.main else _Silent()) as rep:
        def on_attack(name, j, total, a, b):
            # called before each run (and before the skipped ε = 0 of a bounded attack): the previous one is done
            if state["shard"] != (a, b):
                state.update(shard=(a, b), runs=0, running=False)
            if state["running"]:
                state["runs"] += 1
            bounded = not registry.attacks.get(name).threat_model.curve
            state["running"] = not (bounded and eps_sorted[j] == 0)
            rep.update(min(state["base"] + min(state["runs"], n_runs) * (b - a), n_runs * n),
                       description=f"{name} ({j + 1}/{total})")

        def on_progress(done):
            state.update(base=done * n_runs, shard=None)
            rep.update(state["base"])
        try:
            got = gdist.evaluate_sharded(ctx, run.clf, x, y, attacks=names, eps=eps_list, norm=nrm,
                                         model_name=s.model, data_name=s.data, options=options, seed=s.seed,
                                         shard_size=shard_size, resume=resume, on_attack=on_attack,
                                         on_progress=on_progress,
                                         state_dir=None if out is None else out / "evaluate-state")
        finally:
            gdist.shutdown(ctx)
        if got is None:  # not rank 0: rank 0 writes
            return
        ev, results = got
        rep.update(n_runs * n, description="evaluated")
    console.print(f"{s.model} on {s.data} ({s.split}, n={ev.n}): clean accuracy {ev.clean_accuracy:.4f}")
    _print_table(f"robust accuracy (L{'∞' if ev.norm == 'inf' else ev.norm})" if ev.norm in ("0", "1", "2", "inf")
                 else f"robust accuracy (budget: {ev.norm})", ev.table())
    _warn(list(getattr(ev, "warnings", None) or []) + [w for r in results.values() for w in
                                                        (getattr(r, "warnings", None) or [])])
    if out is not None:
        written = save_evaluation(ev, results, out, classes=_classes(s))
        console.print("wrote " + ", ".join(str(p) for p in written))
        _report_at_end(s, report, out)


def _evaluate_sized(s: Shared, *, names: list[str], eps: str | None, option, out: Path | None) -> None:
    """``evaluate --attacks A,B`` where every attack's size is not an Lp norm (threat model ``spatial``): robust
    accuracy versus budgets of their size unit (georobust.evaluation.suite.evaluate_sized), in one process."""
    from .evaluation import save_evaluation
    from .evaluation.suite import evaluate_sized

    options = _eval_options(option, names)
    eps_list = _floats(eps, "--eps")
    for a in names:
        e = registry.attacks.get(a)
        if "seed" in e.options() and "seed" not in options.get(a, {}) and "generator" not in options.get(a, {}):
            options.setdefault(a, {})["seed"] = s.seed
    files = ("evaluation.json", "robust_accuracy.png") + tuple(
        f for a in names for f in (f"result_{a}.json", f"result_{a}.safetensors", f"examples_{a}.png"))
    run = _start(s, check_outputs=lambda: _check_out_dir(out, files))
    with Reporter("evaluating", len(names), unit="attacks") as rep:
        def on_attack(name, j, total):
            rep.update(names.index(name), description=name)
        ev, results = evaluate_sized(run.clf, run.x, run.y, attacks=names, eps=eps_list, model_name=s.model,
                                     data_name=s.data, options=options, on_attack=on_attack)
        rep.update(len(names), description="evaluated")
    console.print(f"{s.model} on {s.data} ({s.split}, n={ev.n}): clean accuracy {ev.clean_accuracy:.4f}")
    _print_table(f"robust accuracy (budget: {ev.norm})", ev.table())
    _warn(list(ev.warnings))
    if out is not None:
        written = save_evaluation(ev, results, out, classes=_classes(s))
        console.print("wrote " + ", ".join(str(p) for p in written))


def _report_at_end(s: Shared, report: bool, out: Path | None) -> None:
    """``evaluate --report``: record the command, then write OUT/report.html from everything in OUT (rank 0 of a
    torchrun launch only)."""
    if not report or out is None or int(os.environ.get("RANK", "0") or 0) != 0:
        return
    from .report import write_report

    _record_commands(s)
    console.print(f"wrote the report {write_report([out], out / 'report.html')}")


def _dense_data(s: Shared) -> bool:
    """Whether ``--data`` holds label maps (a segmentation data set, task ``dense``)."""
    try:
        return gdata.info(s.data, **_data_options(s)).task == "dense"
    except GeorobustError:
        return False


def _evaluate_dense(s: Shared, *, attacks, eps, norm, option, out) -> None:
    """``evaluate`` on a segmentation data set: mIoU and pixel accuracy versus ε under the dense attacks (Houdini,
    per-pixel cross-entropy PGD), one process; the table, ``evaluation.json``, the mIoU-vs-ε figure and examples."""
    from .checks import model_task
    from .evaluation.dense import DENSE_ATTACKS, DENSE_EPS, check_dense_attacks, evaluate_dense
    from .evaluation.suite import save_evaluation

    names = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else list(DENSE_ATTACKS)
    check_dense_attacks(names, norm)
    options = _eval_options(option, names)
    eps_list = sorted(_floats(eps, "--eps") or DENSE_EPS[norm])
    files = ("evaluation.json", "robust_accuracy.png") + tuple(
        f for a in names for f in (f"result_{a}.json", f"result_{a}.safetensors", f"examples_{a}.png"))
    run = _start(s, check_outputs=lambda: _check_out_dir(out, files))
    if model_task(run.clf, run.x) != "dense":
        raise InputError(f"--data {s.data} holds label maps (segmentation), but model {s.model} is a classifier "
                         "(it returns (N, K)); evaluate a segmenter on it (georobust zoo list)")
    n, runs = run.x.shape[0], len(names) * sum(1 for e in eps_list if e != 0)
    done = {"runs": 0}
    with Reporter("evaluating", max(runs, 1) * n, unit="attack-samples") as rep:
        def on_attack(name, j, total):
            rep.update(min(done["runs"], runs) * n, description=f"{name} ({j + 1}/{total})")
            done["runs"] += eps_list[j] != 0
        ev, results = evaluate_dense(run.clf, run.x, run.y, attacks=names, eps=eps_list, norm=norm, model_name=s.model,
                                     data_name=s.data, options=options, on_attack=on_attack)
        rep.update(max(runs, 1) * n, description="evaluated")
    console.print(f"{s.model} on {s.data} ({s.split}, n={ev.n}): clean pixel accuracy {ev.clean_accuracy:.4f}, "
                  f"clean mIoU {ev.clean_miou:.4f}")
    _print_table(f"mIoU and pixel accuracy vs ε (L{'∞' if norm == 'inf' else norm})", ev.table())
    _warn(ev.warnings)
    if out is not None:
        written = save_evaluation(ev, results, out, classes=_classes(s))
        console.print("wrote " + ", ".join(str(p) for p in written))


def _evaluate_cascade(s: Shared, *, preset, attacks, eps, norm, option, out, resume, shard_size) -> None:
    """``evaluate --preset NAME``: the cascade at one ε (georobust.evaluation.cascade), with the alarms; sharded
    under torchrun (georobust.evaluation.distributed)."""
    from .evaluation import distributed as gdist
    from .evaluation.cascade import resolve_attacks

    if attacks is not None:
        raise OptionError("give --preset or --attacks, not both (a preset names its attacks)")
    names = resolve_attacks(preset or "standard", None, norm)
    eps_list = _floats(eps, "--eps")
    if not eps_list or len(eps_list) != 1:
        raise OptionError("a cascade runs at one budget: give exactly one --eps (e.g. --eps 0.1)")
    options = _eval_options(option, names)
    files = ("cascade_result.json", "cascade_result.safetensors")
    ctx = _distributed(s, out)
    run = _start(s, check_outputs=lambda: _check_out_dir(out, files))
    _rank_logs(ctx, out)
    n = run.x.shape[0]
    gdist.check_world(ctx, n, shard_size)
    state = None if out is None else out / "cascade-state"
    # progress in attack-samples: the finished rounds of shards (all ranks), plus rank 0's current shard
    prog = {"base": 0}
    with (Reporter("cascade", len(names) * n, unit="attack-samples") if ctx.main else _Silent()) as rep:
        def on_attack(name, i, total, active):
            rep.update(prog["base"] + i * min(shard_size, n), description=f"{name} on {active} robust samples "
                       f"({i + 1}/{total})")

        def on_progress(done):
            prog["base"] = done * len(names)
            rep.update(prog["base"])
        try:
            res = gdist.cascade_sharded(ctx, run.clf, run.x, run.y, eps=eps_list[0], norm=norm, attacks=names,
                                        options=options, seed=s.seed, shard_size=shard_size, state_dir=state,
                                        resume=resume, model_name=s.model, on_attack=on_attack,
                                        on_progress=on_progress)
        finally:
            gdist.shutdown(ctx)
        if res is None:  # not rank 0: rank 0 writes
            return
        rep.update(len(names) * n, description="cascade done")
    console.print(f"{s.model} on {s.data} ({s.split}, n={res.robust.numel()}): clean accuracy "
                  f"{res.clean_accuracy:.4f}, robust accuracy {res.robust_accuracy:.4f} at ε={res.eps:g} "
                  f"(L{'∞' if norm == 'inf' else norm}, per-sample worst case over {', '.join(res.attacks)})")
    _print_table("cascade", res.table())
    if res.alarms:
        _print_table("alarms", [["alarm", "fired", "value", "message"]] + [
            [a["name"], "YES" if a["fired"] else "no", _fmt(a.get("value")), a.get("message", "")] for a in res.alarms])
    _warn(list(res.warnings) + [f"alarm {a['name']}: {a['message']}" for a in res.alarms if a["fired"]])
    if out is not None:
        console.print(f"wrote {res.save(out / 'cascade_result')}")


# ------------------------------------------------------------------------------------------- analyse
def _analysis_without_command(name: str) -> None:
    registry.analyses.get(name)  # an unknown name: the error with a suggestion
    raise OptionError(f"analysis {name!r} is registered after the command line was built; "
                      "import its module before georobust.cli")


class AnalyseGroup(RegistryGroup):
    """``georobust analyse NAME``: one sub-command per registered analysis (``registry.analyses``)."""

    check_name = staticmethod(_analysis_without_command)


analyse_app = typer.Typer(cls=AnalyseGroup, no_args_is_help=True,
                          help="Decision-boundary geometry: one command per registered analysis; "
                               "georobust analyse NAME --help shows its options, outputs and paper.")
app.add_typer(analyse_app, name="analyse")


def _analysis(name: str, **defaults):
    """``georobust analyse NAME`` for the registered analysis ``name`` written as its own command (its tables,
    figures and options), with the shared options (``defaults``: the command's own, e.g. its ``--limit``).
    The command finds its functions in the registry (``registry.analyses.get(...).fn``)."""
    registry.analyses.get(name)  # a command for an analysis that is not registered fails at import

    def deco(fn):
        analyse_app.command(name)(shared(**defaults)(fn))
        return fn
    return deco


def _analysis_fn(name: str):
    return registry.analyses.get(name).fn


def _stages(rep: Reporter, stages: list[tuple[str, Any]]) -> list[Any]:
    out = []
    for i, (desc, fn) in enumerate(stages):
        rep.update(i, description=desc)
        out.append(fn())
    rep.update(len(stages), description=rep.title)
    return out


def per_sample_chunks(fn, clf, x, *, reporter: Reporter | None = None, done: int = 0, **kw):
    """``fn(clf, x, **kw)`` run on consecutive chunks of its own ``batch_size`` (its batches are independent, each
    with the same seed: the same computation as one call), reporting samples done; per-sample tensor fields
    of the results are concatenated, the other fields must agree."""
    from dataclasses import fields as dc_fields

    bs = kw.get("batch_size", inspect.signature(fn).parameters["batch_size"].default)
    n = x.shape[0]
    parts = []
    for i in range(0, n, bs):
        parts.append(fn(clf, x[i:i + bs], **kw))
        if reporter:
            reporter.update(done + min(i + bs, n))
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for f in dc_fields(parts[0]):
        vals = [getattr(r, f.name) for r in parts]
        if all(isinstance(v, torch.Tensor) for v in vals):
            merged[f.name] = torch.cat(vals)
        elif all(v is None for v in vals) or all(v == vals[0] for v in vals):
            merged[f.name] = vals[0]
        else:
            raise OptionError(f"{fn.__name__}: chunk results disagree on {f.name!r}")
    return type(parts[0])(**merged)


@_analysis("curvature", limit=50)
def analyse_curvature(
    s: Shared,
    k: int = typer.Option(5, help="eigenvalues per end of the spectrum"),
    softplus_beta: Optional[float] = typer.Option(None, help="measure the boundary of a Softplus(β) copy"),
    out: Optional[Path] = typer.Option(None, help="write curvature_profile.png and the results into this folder"),
):
    """Curvature profile of the loss and principal curvatures of the boundary at the DeepFool point."""
    from . import plots

    curvature_profile, boundary_curvature = _analysis_fn("curvature-profile"), _analysis_fn("curvature")

    files = ("curvature_profile.json", "boundary_curvature.json", "curvature_profile.png")
    run = _start(s, check_outputs=lambda: _check_out_dir(out, files))
    n = run.x.shape[0]
    with Reporter("loss-Hessian spectra", 2 * n) as rep:
        prof = per_sample_chunks(curvature_profile, run.clf, run.x, reporter=rep, k=k, seed=s.seed)
        rep.update(n, description="boundary curvature")
        bc = per_sample_chunks(boundary_curvature, run.clf, run.x, reporter=rep, done=n, k=k, seed=s.seed,
                               softplus_beta=softplus_beta)
        rep.update(2 * n, description="curvature")
    rows = [["metric", "value"]] + [[f"loss Hessian: {a}", _fmt(b)] for a, b in prof.summary().items()]
    rows += [[f"boundary: {a}", _fmt(b)] for a, b in bc.summary().items()]
    _print_table(f"curvature of {s.model} on {s.data} ({s.split})", rows)
    if out is not None:
        prof.save(out / "curvature_profile")
        bc.save(out / "boundary_curvature")
        plots.loss_curvature_profiles({s.model: prof}, out / "curvature_profile.png")
        console.print(f"wrote {out}/curvature_profile.png and the results")


@_analysis("cross-section", limit=6)
def analyse_cross_section(
    s: Shared,
    second: str = typer.Option("random", metavar="[random|curvature]", help="the second direction of the plane"),
    resolution: int = typer.Option(101),
    scale_normal: float = typer.Option(2.0, help="half-width along the normal, × ‖r*‖"),
    scale_second: float = typer.Option(2.0, help="half-width along the second direction, × ‖r*‖"),
    softplus_beta: Optional[float] = typer.Option(None, help="for --second curvature on a ReLU model"),
    out: Optional[Path] = typer.Option(None, help="write cross_sections.png here (default: a new folder "
                                       "results/cross-section-MODEL-TIMESTAMP)"),
):
    """Normal cross-sections of the decision boundary (normal × random or × top-curvature direction)."""
    from . import plots

    cross_section = _analysis_fn("cross-section")

    out = out if out is not None else _default_out("cross-section", s.model)
    run = _start(s, check_outputs=lambda: _check_out_dir(out, ("cross_sections.png",)))
    with Reporter("cross-sections", 1, unit="stages") as rep:
        (cs,) = _stages(rep, [("cross-sections", lambda: cross_section(
            run.clf, run.x, second=second, resolution=resolution, scale=(scale_normal, scale_second), seed=s.seed,
            softplus_beta=softplus_beta))])
    rows = [["sample", "class", "‖r*‖", "classes in the section"]]
    for i in range(cs.labels.shape[0]):
        rows.append([str(i), str(int(cs.orig[i])), f"{float(cs.r_norm[i]):.4g}",
                     ",".join(str(c) for c in cs.labels[i].unique().tolist())])
    _print_table(f"normal × {cs.second_kind} cross-sections of {s.model}", rows)
    path = plots.cross_sections(cs, out / "cross_sections.png", n=cs.labels.shape[0], classes=_classes(s))
    console.print(f"wrote {path}")


def noise_rows(results, d: int, med: float) -> tuple[list[list[str]], bool]:
    """Rows of the random-noise table; ``—`` where no sample crossed (and whether that happened)."""
    rows = [["random noise", "never crosses", "median ‖r_noise‖", "√d·median ‖r*‖"]]
    none_crossed = False
    for name, r in results:
        if bool(r.crossed.any()):
            m = f"{float(r.r_noise[r.crossed].median()):.4g}"
        else:
            m, none_crossed = "— (no sample crossed)", True
        rows.append([name, f"{r.never_crossed:.3f}", m, _fmt(math.sqrt(d) * med)])
    return rows, none_crossed


@_analysis("subspace", limit=100)
def analyse_subspace(
    s: Shared,
    ratios: str = typer.Option("0.25,0.0625,0.0204,0.01", help="comma-separated m/d"),
    noise_directions: int = typer.Option(1, help="random directions per sample for random-noise robustness"),
    out: Optional[Path] = typer.Option(None, help="write subspace.png into this folder"),
):
    """β = √(m/d)·‖r*_S‖/‖r*‖ in random subspaces, and robustness to random noise (m = 1)."""
    from . import plots

    subspace_robustness, noise_robustness = _analysis_fn("subspace"), _analysis_fn("random-noise")

    rat = tuple(_floats(ratios, "--ratios") or ())
    run = _start(s, check_outputs=lambda: _check_out_dir(out, ("subspace.png",)))
    with Reporter("subspace", 3, unit="stages") as rep:
        res, nb, nu = _stages(rep, [
            (f"DeepFool in {len(rat)} random subspaces",
             lambda: subspace_robustness(run.clf, run.x, ratios=rat, seed=s.seed)),
            ("random noise inside the box",
             lambda: noise_robustness(run.clf, run.x, directions=noise_directions, seed=s.seed, bounded=True)),
            ("random noise, unbounded",
             lambda: noise_robustness(run.clf, run.x, directions=noise_directions, seed=s.seed, bounded=False))])
    _print_table(f"random-subspace robustness of {s.model} (d={res.d})", res.table())
    ok = res.r_norm[res.converged_full]
    med = float(ok.median()) if ok.numel() else float("nan")
    rows, none = noise_rows((("inside the box", nb), ("unbounded", nu)), res.d, med)
    _print_table("random noise (m = 1)", rows)
    if none:
        console.print("—: no sample crossed the boundary along its random directions")
    if out is not None:
        console.print(f"wrote {plots.subspace_ratios({s.model: res}, out / 'subspace.png')}")


@_analysis("normals", limit=200)
def analyse_normals(
    s: Shared,
    dims: str = typer.Option("1,5,10,25,50", help="comma-separated subspace dimensions m"),
    eps: Optional[float] = typer.Option(None, help="L2 norm of the random vectors (default 2 × median ‖r*‖)"),
    out: Optional[Path] = typer.Option(None, help="write normals.png into this folder"),
):
    """Singular values of boundary normals vs random vectors; flat-model fooling rates (evaluated on the other
    half of the samples)."""
    from . import plots

    normal_spectrum = _analysis_fn("normals")

    dim_list = _ints(dims, "--dims")
    run = _start(s, check_outputs=lambda: _check_out_dir(out, ("normals.png",)))
    x = run.x
    half = x.shape[0] // 2
    with Reporter("normals", 1, unit="stages") as rep:
        (ns,) = _stages(rep, [("boundary normals", lambda: normal_spectrum(
            run.clf, x[:half], x_eval=x[half:], dims=dim_list, eps=eps, seed=s.seed))])
    sv, sr = ns.singular_values, ns.random_singular_values
    rows = [["index", "σ normals / σ₁", "σ random / σ₁"]]
    for i in [0, 1, 4, 9, 24, 49]:
        if i < sv.numel():
            rows.append([str(i + 1), f"{float(sv[i] / sv[0]):.3f}", f"{float(sr[i] / sr[0]):.3f}"])
    _print_table(f"singular values of {ns.n_normals} boundary normals of {s.model}", rows)
    rows = [["m", "fooling (span of top m)", "fooling (isotropic)"]]
    rows += [[str(m), f"{f:.3f}", f"{ns.fooling_isotropic:.3f}"] for m, f in zip(ns.dims, ns.fooling_subspace)]
    _print_table(f"flat model, ‖v‖₂ = {ns.eps:.4g}, {ns.n_eval} points", rows)
    if out is not None:
        console.print(f"wrote {plots.normal_spectrum({s.model: ns}, out / 'normals.png')}")


def result_rows(res, what: str) -> list[list[str]]:
    """The table a command prints for a result: its ``table()`` (header row first), else its ``summary()`` as
    metric/value rows."""
    table = getattr(res, "table", None)
    if callable(table):
        return table()
    summary = getattr(res, "summary", None)
    if callable(summary):
        return [["metric", "value"]] + [[k, _fmt(v)] for k, v in summary().items()]
    raise OutputError(f"{what}: its result ({type(res).__name__}) has neither table() nor summary() to print; "
                      "give the result class one (see ARCHITECTURE.md, a geometry tool)")


def _plot_fn(entry):
    """The figure of a registered analysis: the function of :mod:`georobust.plots` named by its ``plot`` extra,
    called as ``fn(result.plot_data(label), path)`` (see :mod:`georobust.geometry._report`), or ``None``."""
    from . import plots

    name = entry.extra.get("plot")
    if name is None:
        return None
    fn = getattr(plots, name, None)
    if not callable(fn):
        raise OptionError(f"analysis {entry.name} names the figure {name!r}, which georobust.plots does not have")
    return fn


def analysis_options(entry, option: list[str] | None, *, seed: int = 0) -> dict[str, Any]:
    """The keyword options of one analysis run from the command line (``-o KEY=VALUE``, checked and converted
    to each option's type), with ``seed`` from ``--seed`` unless given; checked before any work."""
    opts = entry.check_options(parse_assignments(option, f"option of {entry.name} (-o)"))
    known = entry.options()
    for n, p in known.items():
        if p.default is inspect.Parameter.empty and n not in opts:
            raise OptionError(f"analysis {entry.name} needs -o {n}=VALUE")
    if "seed" in known and "seed" not in opts:
        opts["seed"] = seed
    return opts


def _analysis_help(entry) -> str:
    return "\n\n".join([_first_paragraph(entry), f"paper: {_paper(entry)}; figure (with --out): "
                         f"{(entry.extra.get('plot_file') or entry.name + '.png') if entry.extra.get('plot') else '—'}",
                         "Options (-o KEY=VALUE; seed defaults to --seed):", _options_help(entry) or "  (none)"])


def _make_analysis_command(name: str):
    entry = registry.analyses.get(name)

    @shared(limit=50)
    def cmd(
        s: Shared,
        option: Optional[list[str]] = typer.Option(None, "--option", "-o", metavar="KEY=VALUE",
                                                   help="option of the analysis, repeatable (listed above)"),
        out: Optional[Path] = typer.Option(None, "--out", help=f"write {name}.json/.safetensors and its figure "
                                           "into this folder"),
    ):
        _analyse(entry, s, option=option, out=out)

    short = re.sub(r"\s*\([^()]*\b(?:19|20)\d\d\b[^()]*\)", "", entry.summary).replace("``", "").strip()  # no citation
    analyse_app.command(name, help=escape(_analysis_help(entry)), short_help=escape(short))(cmd)


def _analyse(entry, s: Shared, *, option, out) -> None:
    """A registered analysis run on the data: ``entry.fn(model, x, **options)``; its table is printed, and with
    ``--out`` its result is saved beside the figure its entry names."""
    name = entry.name
    opts = analysis_options(entry, option, seed=s.seed)
    plot = _plot_fn(entry)
    png = entry.extra.get("plot_file") or f"{name}.png"
    files = (f"{name}.json", f"{name}.safetensors") + ((png,) if plot else ())
    run = _start(s, check_outputs=lambda: _check_out_dir(out, files))
    with Reporter(name, 1, unit="stages") as rep:
        (res,) = _stages(rep, [(name, lambda: entry.fn(run.clf, run.x, **opts))])
    _print_table(f"{name} of {s.model} on {s.data} ({s.split}, n={run.x.shape[0]})", result_rows(res, name))
    _warn(getattr(res, "warnings", None))
    if out is not None:
        res.save(out / name)
        written = [f"{out}/{name}.json/.safetensors"]
        if plot is not None:
            data = res.plot_data(s.model) if callable(getattr(res, "plot_data", None)) else {s.model: res}
            written.append(str(plot(data, out / png)))
        console.print("wrote " + " and ".join(written))


for _name in registry.analyses.names():  # the analyses without a command of their own above: a generic one
    if _name not in {c.name for c in analyse_app.registered_commands}:
        _make_analysis_command(_name)


# ----------------------------------------------------------------------------------------- universal
@app.command()
@shared(omit=("split",), limit=1000)  # X is the train split, the held-out images the test split
def universal(
    s: Shared,
    eval_limit: Optional[int] = typer.Option(1000, help="held-out images (the first N of the test split)"),
    norm: str = typer.Option("inf", metavar="[2|inf]", help="norm of the ball"),
    xi: float = typer.Option(0.2, help="radius ξ of the ball"),
    delta: float = typer.Option(0.2, help="stop at fooling rate 1 − δ on X"),
    max_passes: int = typer.Option(10),
    mode: str = typer.Option("sequential", metavar="[sequential|batched]", help="Algorithm 1, or the batched variant"),
    chunk: int = typer.Option(256, help="chunk size (batched mode: the DeepFool batch)"),
    clip: bool = typer.Option(True, "--clip/--no-clip", help="clamp x + v into the model's bounds"),
    resume: bool = typer.Option(False, "--resume", help="continue the run checkpointed in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a checkpoint already in --out"),
    out: Optional[Path] = typer.Option(None, help="write the result (checkpointed each pass) and figures here "
                                       "(default: a new folder results/universal-MODEL-TIMESTAMP)"),
    shard_size: int = typer.Option(1024, "--shard-size", help="held-out images per shard of the fooling rate "
                                   "(under torchrun: the unit of work of a process)"),
):
    """A universal adversarial perturbation (CVPR 2017), checkpointed after every pass; fooling rates per pass.
    --limit is the number of training images X (the first N of the train split). Under torchrun
    (torchrun --nproc-per-node N -m georobust universal --out DIR ...) rank 0 computes the perturbation and the
    held-out fooling rate of every pass is sharded over the processes: the same result whatever N."""
    from . import plots
    from .evaluation import distributed as gdist
    from .evaluation.metrics import perturbed_labels
    gdist.check_shard_size(shard_size)
    if gdist.context_from_env().distributed and out is None:  # every rank must name the same folder
        raise OptionError("universal under torchrun needs --out (the folder every process writes to and rank 0 "
                          "checkpoints in)")
    if resume and out is None:
        raise OptionError("--resume needs --out (the folder of the run to continue)")
    if resume and overwrite:
        raise OptionError("--resume and --overwrite contradict each other: resume the checkpoint, or replace it")
    out = out if out is not None else _default_out("universal", s.model)
    ckpt = out / "universal"
    s.split = "train"

    def outputs():
        _check_out_dir(out, ("universal.json", "universal.safetensors", "perturbation.png", "examples.png"))
        found = [p for p in (ckpt.with_suffix(".json"), ckpt.with_suffix(".safetensors")) if p.exists()]
        if resume and len(found) < 2:
            missing = [p.name for p in (ckpt.with_suffix(".json"), ckpt.with_suffix(".safetensors"))
                       if p not in found]
            from .errors import CheckpointError

            raise CheckpointError(f"--resume: the checkpoint in {out} is incomplete or missing "
                                  f"({', '.join(missing)} not found); nothing to resume")
        if found and not (resume or overwrite):
            raise OutputError(f"{out} already holds a universal perturbation ({found[0].name}); pass --resume to "
                              "continue it, --overwrite to replace it, or choose another --out")

    ctx = _distributed(s, out)
    run = _start(s, check_outputs=outputs)
    _rank_logs(ctx, out)
    gdist.barrier(ctx)  # every rank has checked --out before rank 0 writes its first checkpoint
    x = run.x
    xe, _ = run.load("test", eval_limit)
    with (Reporter("pass 1", x.shape[0]) if ctx.main else _Silent()) as rep:
        def on_progress(p, done, total, info):
            rep.update(done, total=total, description=f"pass {p + 1}/{max_passes}",
                       info=f"steps {info['updates']}  ‖v‖ {info['norm']:.3g}")

        def on_pass(r):
            fe = r.fooling_eval[-1]
            rep.print(f"pass {r.passes}: fooling rate X {r.fooling_train[-1]:.3f}, held-out "
                      f"{'—' if fe is None else f'{fe:.3f}'}, {r.updates[-1]} steps, {r.pass_seconds[-1]:.1f}s")

        try:
            res = gdist.universal_sharded(ctx, run.clf, x, x_eval=xe, shard_size=shard_size, xi=xi, norm=norm,
                                          delta=delta, max_passes=max_passes, mode=mode, chunk=chunk, clip=clip,
                                          seed=s.seed, checkpoint=ckpt, resume=resume, overwrite=overwrite,
                                          on_progress=on_progress, on_pass=on_pass)
        finally:
            gdist.shutdown(ctx)
    if res is None:  # not rank 0: rank 0 writes
        return
    rows = [["metric", "value"]] + [[k, _fmt(v)] for k, v in res.summary().items()]
    _print_table(f"universal perturbation of {s.model} on {s.data}", rows)
    _warn(getattr(res, "warnings", None))
    lc, la = perturbed_labels(run.clf, xe[:64], res.v, clip=clip)
    plots.universal_perturbation(res.v, out / "perturbation.png", title=f"{s.model}: L{norm} ξ={xi:g}")
    plots.universal_examples(xe[:64], res.v, lc, la, out / "examples.png", classes=_classes(s),
                             bounds=run.clf.bounds)
    console.print(f"wrote {out}/universal.json/.safetensors, {out}/perturbation.png, {out}/examples.png")


# -------------------------------------------------------------------------------------------- report
@app.command("report")
@shared("verbose")
def report_command(
    s: Shared,
    results: list[Path] = typer.Argument(..., metavar="RESULTS_DIR [RESULTS_DIR_B]",
                                         help="the --out folder(s) of georobust commands; two: side by side"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="the HTML file to write (default: "
                                       "RESULTS_DIR/report.html; required with two folders)"),
    compare: bool = typer.Option(False, "--compare", help="allow results of different models (side by side)"),
):
    """One self-contained HTML report (no network needed to read it) of the results in RESULTS_DIR: model and data,
    robust accuracy tables and curves, alarms, timings, example images, geometry figures, the commands. Two
    folders give a comparison side by side; results of different models need --compare."""
    from .report import write_report

    _start(s, model=False, data=False)
    if out is None:
        if len(results) > 1:
            raise OptionError("a comparison of several folders needs -o FILE.html (where to write it)")
        out = results[0] / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise OptionError(f"-o {out}: the report is an HTML file; name it {out.with_suffix('.html').name}")
    console.print(f"wrote {write_report(results, out, compare=compare)}")


# --------------------------------------------------------------------------------------------- study
from .study_cli import register_cli as _register_study  # noqa: E402 (the command lives in its own module)

_register_study(app, shared=shared, console=console, setup=_setup)


# --------------------------------------------------------------------------------------------- defend
from .defend_cli import register_cli as _register_defend  # noqa: E402 (issue 13: its own module)

_register_defend(app, sys.modules[__name__])


def main():  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
