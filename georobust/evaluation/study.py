"""What makes a network robust: a declarative sweep over architecture and training factors (``georobust study``).

The "future challenges" of the analysis chapter (issue 18; Fawzi, Moosavi-Dezfooli & Frossard, "The robustness of
deep networks: a geometrical perspective", IEEE Signal Processing Magazine 2017) ask to disentangle the causes of
robustness: architecture (width, depth, batch-norm, dropout), and training (batch size, solver, learning rate).
This module trains one network per configuration of a small TOML file with :func:`~georobust.defenses.train.fit`
and measures, on the test set:

* clean accuracy;
* ρ_adv of DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016): ``‖r*‖₂ / ‖x‖₂`` over the correctly
  classified samples DeepFool fooled — median and mean;
* robust accuracy under PGD (Madry et al., ICLR 2018) at one ``ε``;
* the curvature profile (Moosavi-Dezfooli et al., "Robustness via curvature regularization, and vice versa",
  CVPR 2019): the largest eigenvalues of the input Hessian of the loss on a few images (Lanczos);
* the normals' spectrum (Moosavi-Dezfooli et al., "Robustness of classifiers to universal perturbations: a
  geometric perspective", ICLR 2018): singular values of the stacked unit DeepFool normals, ``σ_m/σ₁``.

**The sweep file** (TOML, read with :mod:`tomllib`) has four sections, each optional, every key checked (an
unknown one is an :class:`~georobust.errors.OptionError` naming it and the valid ones, before any work)::

    [sweep]   mode = "one-at-a-time" (or "grid"), seeds = [0, 1, 2], name = "..."
    [base]    data, n_train, n_test, arch, width, depth, batch_norm, dropout, epochs, batch_size, lr,
              optimizer, schedule, weight_decay, momentum
    [factors] a list of values for any of width, depth, batch_norm, dropout, epochs, batch_size, lr,
              optimizer, schedule, weight_decay, momentum
    [measure] split, n_eval, pgd_eps, pgd_norm, pgd_steps, hessian_images, hessian_k, normals_images,
              deepfool_max_iter, deepfool_overshoot

**One factor at a time** (the default): the base configuration, plus one configuration per value of each factor
that differs from the base, all other factors at their base values; each configuration is trained once per
seed (the seeds are the error bars: mean ± std over seeds). ``mode = "grid"`` runs the full product of the
factors' values instead; its per-factor tables and figures are still the slice through the base (every other
factor at its base value), so both modes answer "what does changing this factor alone do".

**Files** in the output folder: ``sweep.json`` (the parsed configuration); ``runs/<run>/train/`` (the ``fit``
checkpoint, resumed exactly after a kill), ``runs/<run>/result.json`` (written atomically once the run is
measured: the commit point — a run with it is finished and is never trained again); ``results.jsonl`` (one line
per finished run, in the order of the expansion, rewritten atomically after every run); ``table.md``; one
figure ``factor_<name>.png`` per factor. :func:`replot` rebuilds the table and figures from ``results.jsonl``
without training anything.

**Sharding** (``torchrun --nproc-per-node W -m georobust study ...``): run ``i`` of the expansion belongs to rank
``i mod W`` (:func:`assignment`, fixed whatever finished before), so the ranks never train the same run; each
writes only its runs' folders; after a barrier rank 0 merges every ``result.json`` into ``results.jsonl``, the
table and the figures. A run's result does not depend on the rank that ran it (its seed is its own).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import itertools
import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import data as gdata
from .. import registry
from ..errors import GeorobustError, OptionError, OutputError, ResultFileError
from ..models.classifier import as_classifier
from ..models.zoo import build
from ..storage import atomic_write_text, ensure_writable
from .distributed import Context

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, if installed (load_config says so otherwise)
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- the schema
MODES = ("one-at-a-time", "grid")
#: the architecture options a study may set or vary (passed to ``build`` when the architecture takes them)
ARCH_OPTIONS = ("width", "depth", "batch_norm", "dropout")
#: the training options (``fit``'s keyword arguments)
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay", "momentum")
#: the keys a ``[factors]`` table may vary
FACTORS = ARCH_OPTIONS + TRAIN_OPTIONS


def _pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _choices(*names):
    return (lambda v: v in names), "one of " + ", ".join(map(repr, names))


def _optimizers():
    from ..defenses.train import OPTIMIZERS
    return OPTIMIZERS


def _schedules():
    from ..defenses.train import SCHEDULES
    return SCHEDULES


#: key -> (check, what it must be, default); a default of ``None`` under [base] means "the builder's default"
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], bool], str, Any]]] = {
    "sweep": {
        "name": (lambda v: isinstance(v, str), "a string", "study"),
        "mode": (*_choices(*MODES), "one-at-a-time"),
        "seeds": (lambda v: isinstance(v, list) and len(v) > 0 and len(set(v)) == len(v)
                  and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v),
                  "a non-empty list of distinct non-negative integers", [0, 1, 2]),
    },
    "base": {
        "data": (lambda v: isinstance(v, str), "a data set name (georobust data list)", "fashion-mnist"),
        "n_train": (_pos_int, "a positive integer (the first n training images)", 20000),
        "n_test": (_pos_int, "a positive integer (the first n images of measure.split: clean accuracy)", 2000),
        "arch": (lambda v: isinstance(v, str), "an architecture name (georobust zoo list)", "convnet"),
        "width": (_pos_int, "a positive integer", None),
        "depth": (_pos_int, "a positive integer", None),
        "batch_norm": (lambda v: isinstance(v, bool), "true or false", None),
        "dropout": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)", None),
        "epochs": (_pos_int, "a positive integer", 3),
        "batch_size": (_pos_int, "a positive integer", 64),
        "lr": (lambda v: _num(v) and v > 0, "a positive number", 1e-3),
        "optimizer": (lambda v: v in _optimizers(), "an optimizer (sgd, adam)", "adam"),
        "schedule": (lambda v: v in _schedules(), "a schedule (constant, cosine, step)", "cosine"),
        "weight_decay": (lambda v: _num(v) and v >= 0, "a non-negative number", 0.0),
        "momentum": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)", 0.9),
    },
    "measure": {
        "split": (*_choices("test", "train"), "test"),
        "n_eval": (_pos_int, "a positive integer (test images attacked by DeepFool and PGD)", 200),
        "pgd_eps": (lambda v: _num(v) and v > 0, "a positive number", 0.05),
        "pgd_norm": (*_choices("inf", "2"), "inf"),
        "pgd_steps": (_pos_int, "a positive integer", 20),
        "hessian_images": (_pos_int, "a positive integer", 8),
        "hessian_k": (_pos_int, "a positive integer", 5),
        "normals_images": (lambda v: _pos_int(v) and v >= 2, "an integer >= 2", 100),
        "deepfool_max_iter": (_pos_int, "a positive integer", 50),
        "deepfool_overshoot": (lambda v: _num(v) and v >= 0, "a non-negative number", 0.02),
    },
}
SECTIONS = ("sweep", "base", "factors", "measure")

#: what ``--quick`` does to any sweep file: digits, tiny sizes, at most two seeds (the grid is kept)
QUICK = {"base": {"data": "digits"},
         "caps": {"n_train": 1000, "n_test": 200, "width": 8, "epochs": 4},
         "measure": {"n_eval": 30, "pgd_steps": 5, "hessian_images": 3, "hessian_k": 3, "normals_images": 20,
                     "deepfool_max_iter": 20},
         "seeds": 2}


def _unknown_key(where: str, key: str, valid, what: str = "key") -> OptionError:
    """Messages name sections as ``base`` and keys as ``base.lr`` (TOML's dotted keys): no square brackets, which
    the CLI's rich console would read as markup."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=2, cutoff=0.6)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    if what == "section":
        return OptionError(f"{where}{hint} the valid sections are {', '.join(valid)}")
    return OptionError(f"{where}: unknown key {key!r}{hint}; the valid keys are {', '.join(valid)}")


# --------------------------------------------------------------------------------------------- the config
@dataclasses.dataclass
class StudyConfig:
    """A parsed and checked sweep file: ``base`` (every training setting, the architecture's options filled in
    from its builder), ``factors`` (factor -> values), ``measure``, ``seeds``, ``mode``, ``name``."""

    name: str
    mode: str
    seeds: list[int]
    base: dict[str, Any]
    factors: dict[str, list]
    measure: dict[str, Any]
    source: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "mode": self.mode, "seeds": self.seeds, "base": self.base,
                "factors": self.factors, "measure": self.measure, "source": self.source}


def _check_value(section: str, key: str, v, where: str) -> None:
    check, what, _ = SCHEMA[section][key]
    if not check(v):
        raise OptionError(f"{where}: {section}.{key} = {v!r} is not valid; it must be {what}")


def parse_config(raw: dict, *, source: str = "<config>") -> StudyConfig:
    """Check a sweep configuration (the dict a TOML file holds) and fill in the defaults; every unknown section or
    key, and every bad value, is an :class:`~georobust.errors.OptionError` naming it, before any work."""
    if not isinstance(raw, dict):
        raise OptionError(f"{source}: a sweep configuration is a table of sections, got {type(raw).__name__}")
    for sec in raw:
        if sec not in SECTIONS:
            raise _unknown_key(f"{source}: unknown section {sec!r};", sec, SECTIONS, what="section")
        if not isinstance(raw[sec], dict):
            raise OptionError(f"{source}: section {sec} must be a table of keys, got {raw[sec]!r}")
    vals: dict[str, dict] = {}
    for sec in ("sweep", "base", "measure"):
        given = raw.get(sec, {})
        for k, v in given.items():
            if k not in SCHEMA[sec]:
                raise _unknown_key(f"{source}: section {sec}", k, SCHEMA[sec])
            _check_value(sec, k, v, source)
        vals[sec] = {k: given.get(k, d) for k, (_, _, d) in SCHEMA[sec].items()}
    factors = {}
    for k, values in raw.get("factors", {}).items():
        if k in ("seed", "seeds"):
            raise OptionError(f"{source}: factors.{k}: the seeds are not a factor but the replicates of every "
                              "configuration (the error bars); list them in the sweep section: seeds = [0, 1, 2]")
        if k not in FACTORS:
            raise _unknown_key(f"{source}: section factors", k, FACTORS)
        if not isinstance(values, list) or not values:
            raise OptionError(f"{source}: factors.{k} must be a non-empty list of values, got {values!r}")
        for v in values:
            _check_value("base", k, v, f"{source}: factors.{k}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise OptionError(f"{source}: factors.{k} = {values!r} repeats a value")
        factors[k] = list(values)
    base = vals["base"]
    if base["data"] not in registry.datasets.names():
        raise OptionError(f"{source}: base.data = {base['data']!r} is not a data set; known: "
                          f"{', '.join(registry.datasets.names())}")
    if base["arch"] not in registry.architectures.names():
        raise OptionError(f"{source}: base.arch = {base['arch']!r} is not an architecture; known: "
                          f"{', '.join(registry.architectures.names())}")
    params = inspect.signature(registry.architectures.get(base["arch"]).fn).parameters
    for k in ARCH_OPTIONS:
        if k in params:
            if base[k] is None:
                base[k] = params[k].default
        elif base[k] is not None or k in factors:
            raise OptionError(f"{source}: architecture {base['arch']!r} has no option {k!r} (it takes "
                              f"{', '.join(list(params)[2:]) or 'none'}); use arch = \"convnet\" to vary {k}")
    base = {k: v for k, v in base.items() if v is not None}
    if isinstance(base.get("dropout"), int):
        base["dropout"] = float(base["dropout"])
    return StudyConfig(name=vals["sweep"]["name"], mode=vals["sweep"]["mode"], seeds=list(vals["sweep"]["seeds"]),
                       base=base, factors=factors, measure=vals["measure"], source=source)


def load_config(path: str | Path, *, quick: bool = False, overrides: dict[str, dict] | None = None) -> StudyConfig:
    """Read and check the sweep file ``path`` (TOML); ``overrides`` (section -> key -> value, checked like the
    file's) replace its values; ``quick=True`` then shrinks it (:func:`quick_config`)."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"sweep file {p} does not exist (give a TOML file; see repro/factors.toml)")
    if tomllib is None:
        raise OptionError("reading a sweep file needs Python >= 3.11 (tomllib) or, on Python 3.10, the tomli "
                          "package (pip install tomli)")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OptionError(f"sweep file {p} is not valid TOML: {e}") from None
    for sec, kv in (overrides or {}).items():
        if not isinstance(raw.get(sec, {}), dict):
            break  # parse_config says what is wrong with the file
        raw[sec] = {**raw.get(sec, {}), **kv}
    cfg = parse_config(raw, source=str(p))
    return quick_config(cfg) if quick else cfg


def quick_config(cfg: StudyConfig) -> StudyConfig:
    """The same sweep at a size of seconds: digits, 1000 training images, at most four epochs, a width of at
    most 8, tiny measurements, at most two seeds (the factors and their values are kept)."""
    base = {**cfg.base, **QUICK["base"]}
    for k, cap in QUICK["caps"].items():
        if k in base:
            base[k] = min(base[k], cap)
    factors = {}
    for k, values in cfg.factors.items():
        cap = QUICK["caps"].get(k)
        vs = [min(v, cap) for v in values] if cap is not None else list(values)
        factors[k] = list(dict.fromkeys(vs))
    measure = {**cfg.measure, **{k: min(cfg.measure[k], v) for k, v in QUICK["measure"].items()}}
    return dataclasses.replace(cfg, base=base, factors=factors, measure=measure,
                               seeds=cfg.seeds[:QUICK["seeds"]], name=cfg.name + " (quick)")


# --------------------------------------------------------------------------------------------- expansion
@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run: its ``settings`` (``base`` with the factors' values), its ``seed``, and ``changed``
    (the factors that differ from the base, with their values)."""

    settings: dict
    seed: int
    changed: dict

    @property
    def run_id(self) -> str:
        """A content hash of what is trained (settings and seed): the same run has the same id in any sweep."""
        blob = json.dumps({"settings": self.settings, "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        c = ",".join(f"{k}={_fmt_value(v)}" for k, v in self.changed.items()) or "base"
        return f"{c} seed={self.seed}"

    @property
    def folder(self) -> str:
        c = "_".join(f"{k}={_fmt_value(v)}" for k, v in self.changed.items()) or "base"
        return re.sub(r"[^A-Za-z0-9_.=-]+", "-", c) + f"_s{self.seed}_{self.run_id[:8]}"


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def expand(cfg: StudyConfig) -> list[RunSpec]:
    """The runs of the sweep, in a fixed order — every configuration with the first seed, then every one with the
    second, ... (so a sweep cut short has covered every factor) — one factor at a time around the base, or the
    full grid. A configuration listed twice (a factor value equal to the base) runs once."""
    if cfg.mode == "grid" and cfg.factors:
        keys = list(cfg.factors)
        combos = [dict(zip(keys, vs)) for vs in itertools.product(*(cfg.factors[k] for k in keys))]
    else:
        combos = [{}] + [{k: v} for k, values in cfg.factors.items() for v in values]
    runs, seen = [], set()
    for seed in cfg.seeds:
        for combo in combos:
            settings = {**cfg.base, **combo}
            changed = {k: settings[k] for k in cfg.factors if settings[k] != cfg.base[k]}
            r = RunSpec(settings=settings, seed=seed, changed=changed)
            if r.run_id not in seen:
                seen.add(r.run_id)
                runs.append(r)
    return runs


def assignment(n_runs: int, rank: int, world_size: int) -> list[int]:
    """The runs of rank ``rank`` among ``world_size`` processes: ``rank, rank + W, rank + 2W, ...`` — fixed,
    so every run belongs to exactly one rank whatever has finished before."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise OptionError(f"rank {rank!r} of world size {world_size!r}: need 0 <= rank < world_size")
    return list(range(rank, n_runs, world_size))


# --------------------------------------------------------------------------------------------- one run
def _build(settings: dict, input_shape, num_classes: int, seed: int):
    opts = {k: settings[k] for k in ARCH_OPTIONS if k in settings}
    return build(settings["arch"], input_shape, num_classes, seed=seed, **opts)


def measure(clf, x: torch.Tensor, y: torch.Tensor, m: dict, *, seed: int) -> dict[str, Any]:
    """The robustness measurements of one trained classifier (eval mode) on images ``x, y``: clean
    accuracy on all of them, then on the first ``n_eval`` DeepFool's ρ_adv and PGD's robust accuracy, on the
    first ``hessian_images`` the largest input-Hessian eigenvalues of the loss, on the first
    ``normals_images`` the normals' spectrum."""
    from ..attacks.deepfool import deepfool
    from ..attacks.pgd import pgd
    from ..geometry.curvature import curvature_profile
    from ..geometry.normals import normal_spectrum
    from .metrics import accuracy

    out: dict[str, Any] = {"clean_accuracy": accuracy(clf, x, y), "n_test": int(x.shape[0])}
    xe, ye = x[:m["n_eval"]], y[:m["n_eval"]]
    t = time.perf_counter()
    df = deepfool(clf, xe, ye, max_iter=m["deepfool_max_iter"], overshoot=m["deepfool_overshoot"])
    ok = df.success & (df.label_clean == df.y)
    rho = df.rho[ok]
    out.update({"n_eval": int(xe.shape[0]), "deepfool_fooled": float(ok.double().sum() / (df.label_clean == df.y)
                                                                      .double().sum().clamp_min(1)),
                "rho_adv_median": float(rho.median()) if rho.numel() else float("nan"),
                "rho_adv_mean": float(rho.mean()) if rho.numel() else float("nan"),
                "deepfool_median_l2": float(df.l2[ok].median()) if rho.numel() else float("nan"),
                "deepfool_seconds": time.perf_counter() - t})
    t = time.perf_counter()
    pr = pgd(clf, xe, ye, eps=m["pgd_eps"], norm=m["pgd_norm"], steps=m["pgd_steps"], seed=seed)
    out.update({"pgd_eps": m["pgd_eps"], "pgd_norm": m["pgd_norm"],
                "robust_accuracy": float(pr.robust_accuracy([m["pgd_eps"]], m["pgd_norm"])[0]),
                "pgd_seconds": time.perf_counter() - t})
    t = time.perf_counter()
    d = int(x[0].numel())
    k = min(m["hessian_k"], d)
    cp = curvature_profile(clf, x[:m["hessian_images"]], y[:m["hessian_images"]], k=k, seed=seed)
    top = cp.values[:, :k]  # the k largest, decreasing, per image
    out.update({"hessian_top": [float(v) for v in top.mean(0)],
                "hessian_lambda_max_median": float(top[:, 0].median()),
                "hessian_images": int(top.shape[0]), "hessian_seconds": time.perf_counter() - t})
    t = time.perf_counter()
    nn_ = min(m["normals_images"], x.shape[0])
    ns = normal_spectrum(clf, x[:nn_], y[:nn_], dims=(1,), seed=seed, max_iter=m["deepfool_max_iter"],
                         overshoot=m["deepfool_overshoot"])
    s = ns.singular_values.double()
    sr = ns.random_singular_values.double()
    ratio = (s / s[0]).tolist() if float(s[0]) > 0 else [float("nan")] * s.numel()
    m10 = min(10, s.numel())
    out.update({"normals_singular_values": [float(v) for v in s[:50]],
                "normals_sigma_ratio": [float(v) for v in ratio[:50]],
                "normals_sigma10_over_sigma1": float(ratio[m10 - 1]),
                "random_sigma10_over_sigma1": float(sr[m10 - 1] / sr[0]),
                "normals_m": m10, "n_normals": ns.n_normals, "normals_seconds": time.perf_counter() - t})
    return out


# --------------------------------------------------------------------------------------------- the sweep
RESULTS_NAME = "results.jsonl"
CONFIG_NAME = "sweep.json"
TABLE_NAME = "table.md"
#: (key in a result, column title, figure panel title) of the per-factor table and figure
METRICS = (("clean_accuracy", "clean acc.", "clean accuracy"),
           ("robust_accuracy", "PGD robust acc.", "robust accuracy (PGD)"),
           ("rho_adv_median", "ρ_adv median", "ρ_adv (DeepFool, median)"),
           ("rho_adv_mean", "ρ_adv mean", None),
           ("hessian_lambda_max_median", "λ_max ∇²ℓ (median)", "λ_max of ∇²ₓ loss (median)"),
           ("normals_sigma10_over_sigma1", "σ₁₀/σ₁ normals", "σ₁₀/σ₁ of the normals"),
           ("fit_cpu_seconds", "fit CPU s", None))


@dataclasses.dataclass
class SweepSummary:
    """What :func:`run_sweep` did on this rank: runs ``trained`` (and measured) and ``skipped`` (finished before);
    on rank 0 also ``results`` (every finished run's record) and the files written."""

    total: int
    trained: list[str]
    skipped: list[str]
    results: list[dict]
    files: list[str]


def _read_result(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        log.warning("%s is unreadable: the run is done again", path)
        return None
    return rec if isinstance(rec, dict) else None


def _finished(out: Path, run: RunSpec, measure_cfg: dict) -> dict | None:
    rec = _read_result(out / "runs" / run.folder / "result.json")
    if rec is None or rec.get("id") != run.run_id:
        return None
    if rec.get("measure") != measure_cfg:
        return None  # measured with other settings: measured again (the trained model is reused)
    return rec


def _collect(out: Path, runs: list[RunSpec], measure_cfg: dict) -> list[dict]:
    return [rec for r in runs if (rec := _finished(out, r, measure_cfg)) is not None]


def _write_results(out: Path, records: list[dict]) -> Path:
    return atomic_write_text(out / RESULTS_NAME, "".join(json.dumps(r) + "\n" for r in records))


def _check_out(out: Path, cfg: StudyConfig, resume: bool) -> None:
    ensure_writable(out, directory=True, what="study output folder")
    for f in (RESULTS_NAME, CONFIG_NAME, TABLE_NAME):
        ensure_writable(out / f, what="study output folder")
    has = (out / CONFIG_NAME).exists() or (out / "runs").exists()
    if has and not resume:
        raise OutputError(f"{out} already holds a sweep ({CONFIG_NAME}, runs/): pass resume=True (CLI: --resume) "
                          "to continue it (finished runs are skipped) or choose another output folder")


def run_sweep(cfg: StudyConfig, out: str | Path, *, resume: bool = False, device: str | torch.device = "cpu",
              ctx: Context | None = None, on_run: Callable[[dict], None] | None = None) -> SweepSummary:
    """Train and measure every run of ``cfg`` that has not finished in ``out`` (this rank's share when ``ctx``
    says there are several processes), then, on rank 0, write ``results.jsonl``, ``table.md`` and one figure
    per factor. ``on_run(event)`` is called before and after each run (``event["status"]``: ``start``,
    ``done``, ``skipped``)."""
    from ..defenses import train as gtrain

    ctx = ctx or Context()
    out = Path(out)
    dev = torch.device(device)
    _check_out(out, cfg, resume)
    runs = expand(cfg)
    # Everything checked before any work: the data set's shape and classes, each architecture builds.
    info = gdata.info(cfg.base["data"])
    if not info.shape or not info.num_classes or info.task != "classification":
        raise OptionError(f"data set {cfg.base['data']!r} is not a classification data set with a fixed input shape; a "
                          "study needs one (digits, fashion-mnist, ...)")
    for r in {json.dumps(r.settings, sort_keys=True): r for r in runs}.values():
        try:
            _build(r.settings, info.shape, info.num_classes, seed=0)
        except GeorobustError as e:
            raise OptionError(f"run {r.label}: {e}") from None
    _barrier(ctx)  # every rank has checked the output folder before any rank writes into it
    if ctx.main:
        atomic_write_text(out / CONFIG_NAME, json.dumps(cfg.to_json(), indent=2))
    mine = assignment(len(runs), ctx.rank, ctx.world_size)
    todo = [i for i in mine if _finished(out, runs[i], cfg.measure) is None]
    skipped = [runs[i].run_id for i in mine if i not in todo]
    for i in mine:
        if i not in todo and on_run is not None:
            on_run({"status": "skipped", "index": i, "total": len(runs), "label": runs[i].label})
    trained: list[str] = []
    if todo:
        x, y = gdata.load(cfg.base["data"], "train", limit=cfg.base["n_train"])
        xt, yt = gdata.load(cfg.base["data"], cfg.measure["split"], limit=cfg.base["n_test"])
        xt, yt = xt.to(dev), yt.to(dev)
    for i in todo:
        r = runs[i]
        if on_run is not None:
            on_run({"status": "start", "index": i, "total": len(runs), "label": r.label})
        s = r.settings
        folder = out / "runs" / r.folder
        ckpt = folder / "train"
        resume_fit = (ckpt / gtrain.MANIFEST_NAME).exists()
        model = as_classifier(_build(s, info.shape, info.num_classes, seed=r.seed).to(dev))
        t0, c0 = time.perf_counter(), time.process_time()
        hist = gtrain.fit(model, (x, y), "standard", epochs=s["epochs"], optimizer=s["optimizer"], lr=s["lr"],
                          schedule=s["schedule"], weight_decay=s["weight_decay"], momentum=s["momentum"],
                          batch_size=s["batch_size"], seed=r.seed, checkpoint_dir=ckpt, resume=resume_fit,
                          overwrite=not resume_fit)
        fit_wall, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        model.eval()
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = measure(model, xt, yt, cfg.measure, seed=r.seed)
        measure_wall, measure_cpu = time.perf_counter() - t0, time.process_time() - c0
        rec = {"id": r.run_id, "label": r.label, "folder": r.folder, "index": i, "seed": r.seed,
               "changed": r.changed, "settings": s, "measure": cfg.measure,
               "n_params": sum(p.numel() for p in model.parameters()),
               "train_seconds": hist.train_seconds, "fit_wall_seconds": fit_wall,
               "fit_cpu_seconds": fit_cpu, "train_accuracy": hist.last.get("acc"),
               "measure_seconds": measure_wall, "measure_cpu_seconds": measure_cpu,
               "threads": torch.get_num_threads(), "device": str(dev), **metrics}
        atomic_write_text(folder / "result.json", json.dumps(rec, indent=2))  # the commit point of the run
        trained.append(r.run_id)
        log.info("study run %d/%d %s: %s", i + 1, len(runs), r.label,
                 {k: rec[k] for k in ("clean_accuracy", "robust_accuracy", "rho_adv_median", "train_seconds")})
        if ctx.main:
            _write_results(out, _collect(out, runs, cfg.measure))
        if on_run is not None:
            on_run({"status": "done", "index": i, "total": len(runs), "label": r.label, "result": rec})
    _barrier(ctx)
    if not ctx.main:
        return SweepSummary(len(runs), trained, skipped, [], [])
    records = _collect(out, runs, cfg.measure)
    files = [str(_write_results(out, records))]
    missing = len(runs) - len(records)
    if missing:
        log.warning("study: %d of %d runs have no result yet (other ranks not run, or killed): the table and "
                    "figures show the %d finished ones; run again with resume to finish", missing, len(runs),
                    len(records))
    files += [str(p) for p in write_reports(out, cfg, records)]
    return SweepSummary(len(runs), trained, skipped, records, files)


def _barrier(ctx: Context) -> None:
    if not ctx.distributed:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------------------------- tables, figures
def _config_from_json(d: dict) -> StudyConfig:
    return StudyConfig(**{f.name: d[f.name] for f in dataclasses.fields(StudyConfig) if f.name in d})


def load_results(out: str | Path) -> tuple[StudyConfig, list[dict]]:
    """The configuration and the finished runs' records of the sweep in ``out`` (``sweep.json``, ``results.jsonl``)."""
    out = Path(out)
    cpath, rpath = out / CONFIG_NAME, out / RESULTS_NAME
    for p in (cpath, rpath):
        if not p.is_file():
            raise ResultFileError(f"{p} is missing: {out} is not the output folder of a finished study")
    try:
        cfg = _config_from_json(json.loads(cpath.read_text(encoding="utf-8")))
        recs = [json.loads(line) for line in rpath.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ResultFileError(f"{out}: {CONFIG_NAME} or {RESULTS_NAME} is unreadable ({e})") from None
    return cfg, recs


def factor_rows(cfg: StudyConfig, records: list[dict], factor: str) -> list[dict]:
    """Per value of ``factor`` (the base value included, in the order of the values; numbers sorted): the runs
    with that value and every other factor at its base value, and each metric's mean, std (over seeds, ``ddof=1``;
    0 for one seed) and count."""
    base = cfg.base
    values = list(cfg.factors.get(factor, []))
    if base[factor] not in values:
        values.append(base[factor])
    if all(_num(v) for v in values):
        values = sorted(values)
    rows = []
    for v in values:
        sel = [r for r in records if r["settings"].get(factor) == v
               and all(r["settings"].get(g) == base[g] for g in cfg.factors if g != factor)]
        row: dict[str, Any] = {"value": v, "n": len(sel), "seeds": sorted(r["seed"] for r in sel)}
        for key, _, _ in METRICS:
            xs = [float(r[key]) for r in sel if r.get(key) is not None and math.isfinite(float(r[key]))]
            mean = sum(xs) / len(xs) if xs else float("nan")
            std = math.sqrt(sum((a - mean) ** 2 for a in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
            row[key] = (mean, std if xs else float("nan"), len(xs))
        rows.append(row)
    return rows


def _pm(t) -> str:
    mean, std, n = t
    if n == 0:
        return "—"
    return f"{mean:.4g} ± {std:.2g}" if n > 1 else f"{mean:.4g}"


def _random_ratio(records: list[dict]) -> str:
    xs = [float(r["random_sigma10_over_sigma1"]) for r in records if r.get("random_sigma10_over_sigma1") is not None]
    return f"{sum(xs) / len(xs):.3g} on average" if xs else "—"


def table_markdown(cfg: StudyConfig, records: list[dict]) -> str:
    """``table.md``: the base configuration, then per factor a table of each metric's mean ± std over seeds."""
    m = cfg.measure
    lines = [f"# {cfg.name}: what makes a network robust", "",
             f"{len(records)} finished runs; mode {cfg.mode}"
             + (" (one factor at a time around the base: every other factor at its base value)"
                if cfg.mode == "one-at-a-time" else " (tables: the slice through the base)")
             + f"; seeds {cfg.seeds}; mean ± std over seeds.", "",
             "Base: " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in cfg.base.items()), "",
             f"Measured on the first {cfg.base['n_test']} {m.get('split', 'test')} images (clean accuracy) and the first {m['n_eval']} "
             f"(DeepFool ρ_adv = ‖r‖₂/‖x‖₂ over the correctly classified samples it fooled; PGD "
             f"{'L∞' if m['pgd_norm'] == 'inf' else 'L2'} "
             f"ε={m['pgd_eps']:g}, {m['pgd_steps']} steps); λ_max: the largest eigenvalue of ∇²ₓ loss on "
             f"{m['hessian_images']} images; σ₁₀/σ₁: singular values of {m['normals_images']} unit DeepFool "
             f"normals (as many random unit vectors give {_random_ratio(records)}); fit CPU s: CPU seconds of "
             "the training (one thread: about its wall time on a quiet machine).", ""]
    for f in cfg.factors:
        lines += [f"## {f}", "", "| " + f + " | seeds | " + " | ".join(t for _, t, _ in METRICS) + " |",
                  "|---" * (len(METRICS) + 2) + "|"]
        for row in factor_rows(cfg, records, f):
            mark = " (base)" if row["value"] == cfg.base[f] else ""
            lines.append(f"| {_fmt_value(row['value'])}{mark} | {row['n']} | "
                         + " | ".join(_pm(row[k]) for k, _, _ in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def factor_figure(cfg: StudyConfig, records: list[dict], factor: str, path: str | Path) -> Path:
    """One figure per factor: each measured quantity against the factor's values, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = factor_rows(cfg, records, factor)
    panels = [(k, title) for k, _, title in METRICS if title is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 2.9))
    xs = list(range(len(rows)))
    labels = [_fmt_value(r["value"]) + ("*" if r["value"] == cfg.base[factor] else "") for r in rows]
    for ax, (key, title) in zip(axes, panels):
        mean = [r[key][0] for r in rows]
        std = [r[key][1] for r in rows]
        ax.errorbar(xs, mean, yerr=std, fmt="o-", capsize=3)
        ax.set_xticks(xs, labels)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(factor + " (* base)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    ns = sorted({r["n"] for r in rows})
    per = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    fig.suptitle(f"{cfg.name}: {factor} (mean ± std over seeds, {per} per point)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(out: str | Path, cfg: StudyConfig, records: list[dict]) -> list[Path]:
    out = Path(out)
    paths = [atomic_write_text(out / TABLE_NAME, table_markdown(cfg, records))]
    for f in cfg.factors:
        paths.append(factor_figure(cfg, records, f, out / f"factor_{f}.png"))
    return paths


def replot(out: str | Path) -> list[Path]:
    """Rewrite ``table.md`` and the figures of the study in ``out`` from its saved results (nothing is trained)."""
    cfg, recs = load_results(out)
    return write_reports(out, cfg, recs)
