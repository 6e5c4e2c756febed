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
