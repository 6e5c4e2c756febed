"""Evaluations sharded over processes with ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc-per-node N -m georobust evaluate ...`` (and ``--nnodes``/``--rdzv-*`` for several machines)
starts N copies of the command; each reads its rank and the world size from the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the process group (gloo on CPU, NCCL on CUDA, one GPU per
local rank), runs the attacks on its shards of the samples, and rank 0 gathers the per-sample results
(``gather_object``) and writes exactly what a single-process run writes.

**Identical results whatever the number of processes.** The samples are cut into *fixed* shards of
``shard_size`` consecutive global indices (the last one shorter); shard ``k`` runs on rank ``k mod N``. A
single-process run runs the same shards in the same order. Each shard is one independent computation: its
attacks see only its samples (so batch composition and floating-point rounding are those of the shard, whatever
N is), and an attack that draws random numbers (PGD's random start, APGD, Square, ...) gets the seed
:func:`shard_seed` ``(seed, first global index of the shard)``: the randomness of a sample is keyed by its global
index through its shard. The per-sample content of the results is therefore byte-identical for 1 and N
processes (``tests/test_distributed.py`` checks DeepFool and PGD with random start, and a killed-and-resumed
run). Changing ``shard_size`` changes the random draws, as another seed would; the shard holding sample 0 keeps
the seed itself, so a run on at most ``shard_size`` samples draws what the unsharded library call draws.

**Checkpoints.** With a state folder, each finished shard is written atomically (its tensors in safetensors,
its attack results as result files, then a ``shard.json`` marker with the tensors' sha256, last); ``resume``
loads the finished shards and runs the others. The folder records the run's configuration and refuses another.

**Progress.** Shards run in rounds of N (one per rank); after each round the ranks add up the samples done
(one ``all_reduce`` of one number), so rank 0 can show one progress bar for the whole run. Other ranks log to
files (:func:`log_to_file`).

No process pool of our own: torchrun starts the processes, ``torch.distributed`` carries the data.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, InputError, OptionError, ResultFileError
from ..results import AttackResult, Saveable
from ..storage import atomic_write_bytes, atomic_write_text, ensure_writable

log = logging.getLogger(__name__)

#: samples per shard by default: two shards for the CLI's default 500 samples, 40 for a 10 000-image test set
DEFAULT_SHARD_SIZE = 256
#: how long a rank waits for the others at a collective (a shard may be long: a cascade on a large model)
TIMEOUT = datetime.timedelta(hours=6)
SHARD_MARKER = "shard.json"
CONFIG_NAME = "config.json"

_MIX = 0x9E3779B97F4A7C15  # the golden-ratio constant: spreads consecutive shard starts over the seed space


# ------------------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Context:
    """Where this process stands: its ``rank`` among ``world_size`` processes, its ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise OptionError(f"environment variable {name}={v!r} is not an integer (torchrun sets it; unset it to "
                          "run as one process)") from None


def context_from_env() -> Context:
    """The rank, world size and local rank that ``torchrun`` sets (one process without them)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise OptionError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return Context(rank, world, local)


def device_for(ctx: Context, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process) when distributed."""
    if ctx.distributed and device.type == "cuda" and device.index is None:
        n = torch.cuda.device_count()
        if ctx.local_rank >= n:
            raise OptionError(f"local rank {ctx.local_rank} has no GPU: this machine has {n}; start at most {n} "
                              "processes per node (torchrun --nproc-per-node)")
        return torch.device("cuda", ctx.local_rank)
    return device


def init(ctx: Context, device: torch.device) -> None:
    """Join the process group of a torchrun launch (gloo on CPU, NCCL on CUDA); nothing for one process."""
    import torch.distributed as dist

    if not ctx.distributed or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise OptionError("this PyTorch build has no torch.distributed: run as one process")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:  # torchrun always sets them: this is a hand-made environment, not a launch
        raise OptionError(f"WORLD_SIZE={ctx.world_size} is set but {' and '.join(missing)} not: start the command with "
                          "torchrun (torchrun --nproc-per-node N -m georobust ...), or unset WORLD_SIZE and RANK to "
                          "run it as one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    log.info("rank %d of %d joined the %s process group on %s", ctx.rank, ctx.world_size, backend, device)


def shutdown(ctx: Context) -> None:
    import torch.distributed as dist

    if ctx.distributed and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def log_to_file(ctx: Context, folder: str | Path) -> Path | None:
    """On ranks other than 0: send the package's log records to ``folder/rank<R>.log`` (returned) instead of the
    terminal; rank 0 keeps the terminal (its progress bar and tables)."""
    if ctx.main:
        return None
    folder = ensure_writable(folder, directory=True, what="log folder")
    path = Path(folder) / f"rank{ctx.rank}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s rank " + str(ctx.rank) + " %(name)s %(levelname)s: %(message)s"))
    lib = logging.getLogger("georobust")
    for h in list(lib.handlers):
        lib.removeHandler(h)
    lib.addHandler(handler)
    lib.setLevel(logging.INFO)
    lib.propagate = False
    return path


# ------------------------------------------------------------------------------------------- shards
def check_shard_size(shard_size: Any) -> int:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise OptionError(f"shard size must be a positive integer, got {shard_size!r}")
    return shard_size


def shards(n: int, shard_size: int) -> list[tuple[int, int]]:
    """The fixed shards ``[(start, stop), ...]`` of ``n`` samples: consecutive, ``shard_size`` each, the last shorter."""
    check_shard_size(shard_size)
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def check_world(ctx: Context, n: int, shard_size: int) -> None:
    """Every process must have work: refuse more processes than samples, or than shards, before any work."""
    if ctx.world_size > n:
        raise InputError(f"{ctx.world_size} processes for {n} samples: each process needs at least one sample; "
                         f"start at most {n} processes (torchrun --nproc-per-node) or evaluate more samples (--limit)")
    k = len(shards(n, shard_size))
    if ctx.world_size > k:
        raise OptionError(f"{ctx.world_size} processes but only {k} shard(s) of {shard_size} samples for {n} samples: "
                          f"a process would have nothing to do; give --shard-size {max(1, n // ctx.world_size)} or "
                          f"less, or start at most {k} processes (the shard size, not the number of processes, "
                          "decides the random draws)")


def shard_seed(seed: int, start: int) -> int:
    """The seed of the shard whose first global sample index is ``start``: ``seed`` itself for the first shard
    (``start = 0``), a well-spread 63-bit function of ``(seed, start)`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    return (seed + start * _MIX) % (1 << 63)


# ------------------------------------------------------------------------------------------- shard store
@dataclass
class ShardOutput:
    """What one shard produced: per-sample ``tensors`` (first dimension the shard's samples), ``results``
    (saved as result files), and JSON-able ``meta``."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    results: dict[str, Saveable] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_cpu(self) -> ShardOutput:
        """Every tensor on the CPU (what is gathered and saved: a CUDA tensor unpickled on rank 0 would land on
        the sending rank's GPU)."""
        results = {}
        for name, r in self.results.items():
            moved = {f.name: getattr(r, f.name).detach().cpu() for f in dataclasses.fields(r)
                     if isinstance(getattr(r, f.name), torch.Tensor)}
            results[name] = dataclasses.replace(r, **moved)
        return ShardOutput({k: v.detach().cpu() for k, v in self.tensors.items()}, results, self.meta)


class ShardStore:
    """Per-shard checkpoints in a folder: ``config.json`` (the run's configuration), and one
    ``shard-<start>/`` folder per finished shard (see the module docstring)."""

    def __init__(self, folder: str | Path, config: dict[str, Any], *, kinds: Sequence[type] = (AttackResult,)):
        self.folder = Path(folder)
        self.config = json.loads(json.dumps(config))
        self.kinds = {k.__name__: k for k in kinds}

    def shard_dir(self, start: int) -> Path:
        return self.folder / f"shard-{start:09d}"

    def check(self, resume: bool) -> None:
        """Before any work, on every rank: a folder holding another run is refused; ``resume`` needs one."""
        cfg = self.folder / CONFIG_NAME
        if cfg.exists():
            try:
                old = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{cfg} is not readable ({e}); remove the folder {self.folder} to start afresh") from None
            if not resume:
                raise CheckpointError(f"{self.folder} holds an earlier run's shards; resume it (--resume) or choose "
                                      "another folder")
            if old != self.config:
                diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
                raise CheckpointError(f"{self.folder} holds a run of another configuration ({', '.join(diff)} "
                                      "differ); it cannot be resumed with this one")
        elif resume:
            raise CheckpointError(f"nothing to resume in {self.folder}: no {CONFIG_NAME}")
        else:
            ensure_writable(self.folder, directory=True, what="shard checkpoint folder")

    def start(self) -> None:
        """Write the configuration (rank 0, after :meth:`check` on every rank)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / CONFIG_NAME, json.dumps(self.config, indent=2))

    def save(self, start: int, out: ShardOutput) -> None:
        from safetensors.torch import save as st_save

        d = self.shard_dir(start)
        d.mkdir(parents=True, exist_ok=True)
        kinds = {}
        for name, r in out.results.items():
            r.save(d / f"result_{name}")
            kinds[name] = type(r).__name__
        data = st_save({k: v.detach().cpu().contiguous() for k, v in out.tensors.items()})
        atomic_write_bytes(d / "tensors.safetensors", data)
        marker = {"start": start, "results": kinds, "meta": out.meta,
                  "tensors_sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_text(d / SHARD_MARKER, json.dumps(marker, indent=2))  # last: the shard is done

    def load(self, start: int) -> ShardOutput | None:
        """The finished shard starting at ``start``, or ``None`` when it has not finished."""
        from safetensors.torch import load as st_load

        d = self.shard_dir(start)
        if not (d / SHARD_MARKER).exists():
            return None
        marker = json.loads((d / SHARD_MARKER).read_text(encoding="utf-8"))
        data = (d / "tensors.safetensors").read_bytes()
        if hashlib.sha256(data).hexdigest() != marker.get("tensors_sha256"):
            raise ResultFileError(f"{d}/tensors.safetensors does not match its {SHARD_MARKER} (corrupt or replaced); "
                                  f"delete {d} to run that shard again")
        results = {}
        for name, kind in marker["results"].items():
            if kind not in self.kinds:
                raise ResultFileError(f"{d}: result {name!r} is a {kind}, which this run does not write")
            results[name] = self.kinds[kind].load(d / f"result_{name}")
        return ShardOutput(dict(st_load(data)), results, marker.get("meta", {}))


# ------------------------------------------------------------------------------------------- the sharded run
def run_sharded(ctx: Context, n: int, shard_size: int, work: Callable[[int, int], ShardOutput], *,
                store: ShardStore | None = None, resume: bool = False,
                on_progress: Callable[[int], None] | None = None) -> list[ShardOutput] | None:
    """Run ``work(start, stop)`` on every shard of ``n`` samples, this rank's shards here; return every shard's
    output in order on rank 0 (``None`` on the others).

    With ``store``, finished shards are checkpointed and, with ``resume``, loaded instead of run again.
    ``on_progress(samples_done)`` is called on rank 0 after each round (the samples of all ranks together).
    """
    check_world(ctx, n, shard_size)
    bounds = shards(n, shard_size)
    if store is not None:
        store.check(resume)
        barrier(ctx)
        if ctx.main and not resume:
            store.start()
        barrier(ctx)
    mine: list[tuple[int, ShardOutput]] = []
    rounds = math.ceil(len(bounds) / ctx.world_size)
    done = 0
    for r in range(rounds):
        k = r * ctx.world_size + ctx.rank
        size = 0
        if k < len(bounds):
            a, b = bounds[k]
            out = store.load(a) if store is not None and resume else None
            if out is None:
                log.info("shard %d of %d: samples %d..%d", k + 1, len(bounds), a, b - 1)
                out = work(a, b).to_cpu()
                if store is not None:
                    store.save(a, out)
            else:
                log.info("shard %d of %d: samples %d..%d loaded from %s", k + 1, len(bounds), a, b - 1,
                         store.shard_dir(a))
            mine.append((k, out))
            size = b - a
        done += _sum_over_ranks(ctx, size)
        if on_progress is not None and ctx.main:
            on_progress(done)
    gathered = _gather(ctx, mine)
    if gathered is None:
        return None
    by_k = dict(kv for part in gathered for kv in part)
    if sorted(by_k) != list(range(len(bounds))):
        raise CheckpointError(f"the gathered shards are {sorted(by_k)}, expected 0..{len(bounds) - 1}")
    return [by_k[k] for k in range(len(bounds))]


def _sum_over_ranks(ctx: Context, v: int) -> int:
    if not ctx.distributed:
        return v
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([v], dtype=torch.int64, device=dev)
    dist.all_reduce(t)
    return int(t.item())


def _gather(ctx: Context, mine: list) -> list | None:
    if not ctx.distributed:
        return [mine]
    import torch.distributed as dist

    got = [None] * ctx.world_size if ctx.main else None
    dist.gather_object(mine, got, dst=0)
    return got if ctx.main else None


# ------------------------------------------------------------------------------------------- evaluate
def _seeded(entry, opts: dict[str, Any], seed: int, start: int) -> tuple[dict[str, Any], bool]:
    """The options of ``entry`` on the shard starting at ``start``: the shard's seed where the attack takes one
    and the user gave neither a seed nor a generator."""
    known = entry.options()
    if "seed" in known and "seed" not in opts and "generator" not in opts:
        return {**opts, "seed": shard_seed(seed, start)}, True
    return dict(opts), False


def evaluate_sharded(ctx: Context, model, x: torch.Tensor, y: torch.Tensor, *, attacks: Sequence[str] | None = None,
                     eps: Sequence[float] | None = None, norm: Any = "inf", model_name: str = "model",
                     data_name: str = "data", options: dict[str, dict[str, Any]] | None = None, seed: int = 0,
                     shard_size: int = DEFAULT_SHARD_SIZE, state_dir: str | Path | None = None, resume: bool = False,
                     on_attack: Callable[[str, int, int], None] | None = None,
                     on_progress: Callable[[int], None] | None = None):
    """:func:`georobust.evaluation.suite.evaluate`, sharded (module docstring): every rank passes the same
    ``x, y`` and runs its shards; rank 0 returns ``(Evaluation, results)`` — the results of all samples, as
    the unsharded call returns them — and the other ranks ``None``. ``on_attack(name, j, total, start, stop)``
    is called before each attack run of rank 0's own shards; ``on_progress(samples_done)`` on rank 0 after each
    round."""
    import time

    from .. import registry
    from ..checks import check_norm, prepare
    from .suite import DEFAULT_EPS, attack_masks, check_attacks, default_attacks, evaluation_from_masks

    norm = check_norm(norm)
    shard_size = check_shard_size(shard_size)
    attacks = list(attacks) if attacks is not None else default_attacks(norm)
    if not attacks:
        raise OptionError(f"no attack to run for norm {norm}")
    options = {k: dict(v) for k, v in (options or {}).items()}
    for a in options:
        if a not in attacks:
            raise OptionError(f"options given for attack {a!r}, which this evaluation does not run "
                              f"(attacks: {', '.join(attacks)}); add it to attacks= or drop its options")
    check_attacks(attacks, norm)
    entries = [registry.attacks.get(a) for a in attacks]
    for e in entries:
        e.check_options(options.get(e.name, {}))
    eps = sorted(float(e) for e in (eps if eps is not None else DEFAULT_EPS[norm]))
    if any(e < 0 for e in eps):
        raise OptionError(f"eps values must be >= 0, got {eps}")
    p = prepare(model, x, y, labels_required=True)  # every rank validates the whole input: the same refusals
    clf, x, y = p.clf, p.x, p.y
    n = int(x.shape[0])
    check_world(ctx, n, shard_size)
    store = None
    if state_dir is not None:
        config = {"kind": "evaluate", "model": model_name, "data": data_name, "n": n, "norm": norm, "eps": eps,
                  "attacks": attacks, "options": options, "seed": seed, "shard_size": shard_size,
                  "x_sum": float(x.double().sum()), "y_sum": int(y.sum())}
        store = ShardStore(state_dir, config)
    seeded: set[str] = set()

    def work(a: int, b: int) -> ShardOutput:
        opts = {}
        for e in entries:
            opts[e.name], s = _seeded(e, options.get(e.name, {}), seed, a)
            if s:
                seeded.add(e.name)
        xs, ys = x[a:b], y[a:b]
        correct = p.pred[a:b] == ys
        hook = None
        if on_attack is not None and ctx.main:
            def hook(name, j, total):
                on_attack(name, j, total, a, b)
        masks, results, details = attack_masks(clf, xs, ys, correct, entries, eps, norm, opts, hook)
        for name, r in results.items():
            if name in seeded:  # the run's seed, not the shard's: the shards' params agree and merge
                r.params["seed"] = seed
                r.params["shard_size"] = shard_size
        tensors = {"correct": correct, **{f"mask/{k}": v for k, v in masks.items()}}
        meta = {"seconds": {k: d["seconds"] for k, d in details.items()},
                "warnings": list(getattr(clf, "output_warnings", None) or [])}
        return ShardOutput(tensors, dict(results), meta)

    t0 = time.perf_counter()
    outs = run_sharded(ctx, n, shard_size, work, store=store, resume=resume, on_progress=on_progress)
    if outs is None:
        return None
    correct = torch.cat([o.tensors["correct"] for o in outs]).to(x.device)
    masks = {e.name: torch.cat([o.tensors[f"mask/{e.name}"] for o in outs]).to(x.device) for e in entries}
    results = {}
    for e in entries:
        parts = [o.results[e.name] for o in outs if e.name in o.results]
        if parts:
            results[e.name] = AttackResult.concat(parts)
    details = {}
    for e in entries:
        r = results.get(e.name)
        if r is None:
            d: dict[str, Any] = {}
        elif e.threat_model.curve:
            d = r.summary()
        else:
            d = {"success_rate_at_max_eps": r.success_rate}
        d["seconds"] = float(sum(o.meta["seconds"][e.name] for o in outs))  # compute time, summed over shards
        details[e.name] = d
    warnings = list(dict.fromkeys(w for o in outs for w in o.meta.get("warnings", [])))
    ev = evaluation_from_masks(model_name, data_name, norm, eps, correct, masks, details, warnings, results)
    ev.seconds = time.perf_counter() - t0
    return ev, results


# ------------------------------------------------------------------------------------------- cascade
def cascade_sharded(ctx: Context, model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: Any = "inf",
                    preset: str | None = None, attacks: Sequence[str] | None = None,
                    options: dict[str, dict[str, Any]] | None = None, seed: int = 0,
                    shard_size: int = DEFAULT_SHARD_SIZE, state_dir: str | Path | None = None, resume: bool = False,
                    model_name: str = "model", on_attack: Callable[[str, int, int, int], None] | None = None,
                    on_progress: Callable[[int], None] | None = None, alarms: bool = True):
    """:func:`georobust.evaluation.cascade.cascade`, sharded (module docstring): each shard is a cascade on its
    samples with the shard's seed (and its own per-attack checkpoints under ``state_dir``, so a shard killed
    half-way resumes from its last finished attack); rank 0 merges the shards' per-sample worst cases into one
    :class:`CascadeResult` and computes the alarms on all samples. Returns ``None`` on the other ranks."""
    import time

    from ..checks import check_norm, check_positive, prepare
    from .cascade import STATE_NAME, CascadeResult, cascade, cascade_alarms, resolve_attacks

    norm = check_norm(norm)
    check_positive(eps, "eps")
    shard_size = check_shard_size(shard_size)
    names = resolve_attacks(preset, attacks, norm)
    options = {k: dict(v) for k, v in (options or {}).items()}
    p = prepare(model, x, y, labels_required=True)
    clf, x, y = p.clf, p.x, p.y
    n = int(x.shape[0])
    check_world(ctx, n, shard_size)
    store = None
    if state_dir is not None:
        config = {"kind": "cascade", "model": model_name, "n": n, "eps": float(eps), "norm": norm, "attacks": names,
                  "options": options, "seed": seed, "shard_size": shard_size,
                  "x_sum": float(x.double().sum()), "y_sum": int(y.sum())}
        store = ShardStore(state_dir, config, kinds=(CascadeResult,))

    def work(a: int, b: int) -> ShardOutput:
        sd = None if store is None else store.shard_dir(a) / "cascade-state"
        again = sd is not None and (sd / STATE_NAME).exists()  # killed half-way: resume its finished attacks
        r = cascade(clf, x[a:b], y[a:b], eps=eps, norm=norm, attacks=names, options=options,
                    seed=shard_seed(seed, a), state_dir=sd, resume=again, model_name=model_name,
                    on_attack=on_attack if ctx.main else None, alarms=False)
        return ShardOutput(results={"cascade": r})

    t0 = time.perf_counter()
    outs = run_sharded(ctx, n, shard_size, work, store=store, resume=resume, on_progress=on_progress)
    if outs is None:
        return None
    parts = [o.results["cascade"] for o in outs]
    broken_by = [b for r in parts for b in r.broken_by]
    correct = torch.cat([r.robust.new_tensor([b != "clean" for b in r.broken_by]) for r in parts])
    robust = torch.cat([r.robust for r in parts]).to(x.device)
    per_attack = []
    gone = sum(b == "clean" for b in broken_by)
    for i, name in enumerate(names):
        broke = sum(b == name for b in broken_by)
        gone += broke
        per_attack.append({"attack": name, "ran_on": int(sum(r.per_attack[i]["ran_on"] for r in parts)),
                           "broke": int(broke), "robust_after": (n - gone) / n,
                           "seconds": float(sum(r.per_attack[i]["seconds"] for r in parts))})
    res = CascadeResult(model=model_name, eps=float(eps), norm=norm, attacks=names, x=x, y=y,
                        x_adv=torch.cat([r.x_adv.to(x.device, x.dtype) for r in parts]), robust=robust,
                        broken_by=broken_by, clean_accuracy=float(correct.double().mean()), per_attack=per_attack,
                        seed=seed, seconds=0.0,
                        warnings=list(dict.fromkeys(w for r in parts for w in r.warnings)))
    if alarms:
        res.alarms = [a.to_dict() for a in cascade_alarms(clf, res)]
    res.seconds = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------------------- universal
#: samples per shard of a universal perturbation's fooling rate: a multiple of the prediction batch (1024,
#: :func:`georobust.checks.predict`), so the shards' batches are exactly those of an unsharded fooling rate
DEFAULT_UNIVERSAL_SHARD_SIZE = 1024
PREDICT_BATCH = 1024


def _validated(model, x, what: str):
    """Validate ``model`` and inputs ``x`` as :func:`~georobust.checks.prepare` does, without predicting all of
    ``x`` (that is the sharded part): ``(classifier, x, number of classes)``."""
    from torch import nn

    from ..checks import check_input_shape, check_model, check_x, match_dtype
    from ..errors import ModelError
    from ..models.classifier import as_classifier

    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module returning logits (N, K), got {type(model).__name__}")
    clf = as_classifier(model)
    x = check_x(x, clf.bounds, name=what)
    check_input_shape(clf, x, name=what)
    x = match_dtype(x, clf, name=what)
    clf, k = check_model(clf, x)
    return clf, x, k


def fooling_sharded(ctx: Context, model, x: torch.Tensor, v: torch.Tensor, *,
                    shard_size: int = DEFAULT_UNIVERSAL_SHARD_SIZE, clip: bool = True,
                    batch_size: int = PREDICT_BATCH, _checked: tuple | None = None) -> tuple[float, torch.Tensor]:
    """The fooling rate of one perturbation ``v`` on ``x`` (the fraction whose *predicted* label changes,
    :func:`georobust.evaluation.metrics.fooling_rate`), sharded: each rank predicts ``x`` and ``x + v`` on its
    fixed shards (shard ``k`` on rank ``k mod N``, batches of ``batch_size`` inside a shard) and the ``(K, K)``
    transition counts (clean label, perturbed label) are summed with one ``all_reduce``. Every rank returns
    ``(fooling rate, transitions)`` (transitions on the CPU, int64).

    Integer counts add up exactly, and a shard's predictions do not depend on N, so the answer is identical for
    any number of processes; with ``shard_size`` a multiple of ``batch_size`` the batches are also those of an
    unsharded :func:`~georobust.evaluation.metrics.fooling_rate` with that ``batch_size``, so it equals it too.
    Every rank passes the same ``x`` and ``v`` (validated on every rank, before any work)."""
    from ..evaluation.metrics import perturbed_labels

    check_shard_size(shard_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    clf, x, k = _checked if _checked is not None else _validated(model, x, "x")
    if not isinstance(v, torch.Tensor) or v.shape != x.shape[1:]:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise InputError(f"v must be one perturbation shaped like one input {tuple(x.shape[1:])}, got {got}")
    n = int(x.shape[0])
    check_world(ctx, n, shard_size)
    v = v.to(x.device, x.dtype)
    counts = torch.zeros(k * k, dtype=torch.int64, device=x.device)
    for j, (a, b) in enumerate(shards(n, shard_size)):
        if j % ctx.world_size != ctx.rank:
            continue
        clean, adv = perturbed_labels(clf, x[a:b], v, clip=clip, batch_size=batch_size)
        counts += torch.bincount(clean * k + adv, minlength=k * k)
    counts = _sum_tensor(ctx, counts)
    transitions = counts.view(k, k).cpu()
    fooled = n - int(transitions.diagonal().sum())
    return fooled / n, transitions


def _sum_tensor(ctx: Context, t: torch.Tensor) -> torch.Tensor:
    if not ctx.distributed:
        return t
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.to(dev)
    dist.all_reduce(out)
    return out


def _broadcast(ctx: Context, obj: Any) -> Any:
    """``obj`` of rank 0 on every rank (pickled; tensors travel on the CPU)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def universal_sharded(ctx: Context, model, x: torch.Tensor, *, x_eval: torch.Tensor | None = None,
                      shard_size: int = DEFAULT_UNIVERSAL_SHARD_SIZE,
                      on_pass: Callable[[Any], None] | None = None, **options):
    """:func:`georobust.attacks.universal.universal_perturbation` under torchrun: the perturbation is computed
    **once, on rank 0**, and its fooling rate on the held-out set ``x_eval`` after every pass is sharded over the
    ranks (:func:`fooling_sharded`). Returns the :class:`~georobust.results.UniversalResult` on rank 0 (``None``
    on the others), with the per-pass held-out fooling rates and the held-out transitions of the last pass.

    Why rank 0 alone, not every rank with the same seed: Algorithm 1 is sequential (each accepted step changes
    ``v`` before the next sample is looked at), so N copies would take as long as one and save nothing; one
    writer owns the per-pass checkpoint (``checkpoint=``, ``resume=``); and on GPUs the same seed does not make
    N devices compute the same bits (non-deterministic kernels, different cards across nodes), whereas
    broadcasting ``v`` after each pass evaluates, on every shard, exactly the ``v`` that is saved. The other ranks
    wait (at most the process group's timeout, :data:`TIMEOUT`) and then share the held-out evaluation — the
    part that grows with the data set.

    A one-process call (``ctx.world_size == 1``) runs the same shards in order, so the result is identical for
    any number of processes; with ``shard_size`` a multiple of 1024 it is also what
    ``universal_perturbation(..., x_eval=x_eval)`` computes unsharded. ``options``: those of
    ``universal_perturbation`` but ``x_eval``. ``on_pass(result)``: on rank 0 after each pass, once its held-out
    fooling rate is in. Under torchrun ``x_eval`` is required (it is what is sharded).
    """
    from ..attacks.universal import universal_perturbation

    if "x_eval" in options:
        raise OptionError("universal_sharded: give the held-out set as x_eval= (keyword), once")
    shard_size = check_shard_size(shard_size)
    checked = None
    if x_eval is not None:
        checked = _validated(model, x_eval, "x_eval")  # every rank, before any work: the same refusals
        if isinstance(x, torch.Tensor) and x.shape[1:] != checked[1].shape[1:]:
            raise InputError(f"x_eval must be inputs shaped like x (…, {tuple(x.shape[1:])}), got "
                             f"{tuple(checked[1].shape)}")
        check_world(ctx, int(checked[1].shape[0]), shard_size)
    elif ctx.distributed:
        raise OptionError("universal under torchrun shards the fooling rate on a held-out set: give x_eval "
                          "(CLI: --eval-limit > 0), or run it as one process")
    if checked is None:
        return universal_perturbation(model, x, on_pass=on_pass, **options)
    n_eval = int(checked[1].shape[0])
    clip = options.get("clip", True)

    def evaluate_v(v: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Every rank together: rank 0 sends ``v``, all evaluate their shards, all get the sums."""
        v = _broadcast(ctx, v.detach().cpu() if v is not None else None)
        return fooling_sharded(ctx, checked[0], checked[1], v, shard_size=shard_size, clip=clip, _checked=checked)

    if not ctx.main:
        while True:  # one evaluation per pass of rank 0, until it says there is no more (None)
            v = _broadcast(ctx, None)
            if v is None:
                return None
            fooling_sharded(ctx, checked[0], checked[1], v, shard_size=shard_size, clip=clip, _checked=checked)

    evaluated = []

    def after_pass(r):
        fe, tr = evaluate_v(r.v)
        r.fooling_eval[-1] = fe
        r.transitions = tr
        r.params["n_eval"] = n_eval
        if options.get("checkpoint") is not None:
            r.save(options["checkpoint"])  # this pass's checkpoint again, now with its held-out numbers
        evaluated.append(r.passes)
        if on_pass is not None:
            on_pass(r)

    try:
        res = universal_perturbation(model, x, on_pass=after_pass, **options)
        if not evaluated:  # resumed from a finished checkpoint: no pass ran; evaluate its final v once
            res.fooling_eval[-1], res.transitions = evaluate_v(res.v)
            res.params["n_eval"] = n_eval
    finally:
        _broadcast(ctx, None)  # no more passes (also after an error: no rank waits for ever)
    return res
