"""``georobust study CONFIG --out DIR [--quick] [--resume] [--replot]``: the "what makes a network robust" sweep
(:mod:`georobust.evaluation.study`) from the command line.

``cli.py`` hooks it in with ``register_cli(app, shared=..., console=..., setup=...)``; this module imports nothing
of ``cli`` (no import cycle): the CLI hands over its shared-options decorator (which also shows a georobust error
as one line, exit status 2), its console and its logging/device set-up. The shared options mean: ``--data`` the
data set (replaces ``base.data``), ``--split`` the split measured (``measure.split``), ``--limit`` the images
measured (``base.n_test``), ``--seed`` an offset added to every seed of ``sweep.seeds`` (another set of
replicates), ``--device``, ``--verbose``; ``--model`` is refused (a study trains its own models: ``base.arch``).
Under ``torchrun --nproc-per-node W -m georobust study ...`` each rank trains its share of the runs (run ``i`` on
rank ``i mod W``), ranks other than 0 log to ``DIR/logs/rank<R>.log``, and rank 0 merges the results, writes the
table and the figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .errors import OptionError

#: the shared options the command takes (``cli.SHARED``), and their defaults here
SHARED_NAMES = ("model", "data", "split", "limit", "device", "seed", "verbose")


def _f(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def register_cli(app: typer.Typer, *, shared: Callable, console: Any, setup: Callable[[Any], Any]) -> None:
    """Add the ``study`` command to ``app``. ``shared``: the CLI's decorator adding the shared options (the command
    receives them as its first argument ``s``); ``setup(s) -> torch.device`` sets up logging and checks the device
    (the CLI's own)."""

    @app.command("study")
    @shared(*SHARED_NAMES, model=None, data=None, split=None)
    def study(
        s: Any,
        config: Path = typer.Argument(..., metavar="CONFIG", help="the sweep file (TOML with the sections sweep, base, "
                                      "factors, measure; see repro/factors.toml)"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder: runs/, results.jsonl, table.md, figures"),
        quick: bool = typer.Option(False, "--quick", help="the same sweep on digits at a size of seconds"),
        resume: bool = typer.Option(False, "--resume", help="continue the sweep in --out: finished runs are skipped, "
                                    "an interrupted training resumes from its checkpoint"),
        replot: bool = typer.Option(False, "--replot", help="only rewrite table.md and the figures from the saved "
                                    "results of --out (nothing is trained; CONFIG is not read)"),
    ):
        """What makes a network robust: train one network per configuration of a sweep over architecture width,
        depth, batch-norm, dropout, batch size, learning rate and optimiser (one factor at a time around a base, or
        a grid; every configuration once per seed), measure clean accuracy, DeepFool's ρ_adv, PGD robust accuracy,
        the largest input-Hessian eigenvalues of the loss and the normals' spectrum, and write results.jsonl,
        table.md and one figure per factor (mean ± std over seeds). Resumable (--resume); sharded over processes
        under torchrun. --data, --split and --limit replace the file's data set, measured split and number of
        measured images; --seed is added to every seed."""
        from .evaluation import distributed as gdist
        from .evaluation import study as gstudy

        if s.model is not None:
            raise OptionError(f"--model {s.model}: a study trains its own models (base.arch and the factors "
                              "of CONFIG); leave --model out")
        if quick and s.data is not None:
            raise OptionError("--quick runs the sweep on digits; leave --data out (or --quick)")
        dev = setup(s)
        if replot:
            for p in gstudy.replot(out):
                console.print(f"wrote {p}")
            return
        overrides: dict[str, dict] = {"base": {}, "measure": {}}
        if s.data is not None:
            overrides["base"]["data"] = s.data
        if s.limit is not None:
            overrides["base"]["n_test"] = s.limit
        if s.split is not None:
            overrides["measure"]["split"] = s.split
        cfg = gstudy.load_config(config, quick=quick, overrides=overrides)
        if s.seed:
            cfg.seeds = [v + s.seed for v in cfg.seeds]
        ctx = gdist.context_from_env()
        if ctx.distributed:
            dev = gdist.device_for(ctx, dev)
            gdist.init(ctx, dev)
            gdist.log_to_file(ctx, out / "logs")
        n_runs = len(gstudy.expand(cfg))
        if ctx.main:
            console.print(f"study {cfg.name!r}: {n_runs} runs ({cfg.mode}, {len(cfg.factors)} factors, "
                          f"seeds {cfg.seeds}) on {cfg.base['data']}"
                          + (f", {ctx.world_size} processes" if ctx.distributed else ""))

        def on_run(ev: dict) -> None:
            if not ctx.main:
                return
            head = f"[{ev['index'] + 1}/{ev['total']}] {ev['label']}"
            if ev["status"] == "skipped":
                console.print(f"{head}: finished before, skipped")
            elif ev["status"] == "done":
                r = ev["result"]
                console.print(f"{head}: clean {_f(r['clean_accuracy'])}, robust {_f(r['robust_accuracy'])}, "
                              f"ρ_adv {_f(r['rho_adv_median'])}, λ_max {_f(r['hessian_lambda_max_median'])} "
                              f"({r['train_seconds']:.1f} s training)")

        try:
            res = gstudy.run_sweep(cfg, out, resume=resume, device=dev, ctx=ctx, on_run=on_run)
        finally:
            gdist.shutdown(ctx)
        if not ctx.main:
            return
        t = Table(title=f"{cfg.name}: {len(res.results)}/{res.total} runs finished "
                        f"({len(res.trained)} trained now, {len(res.skipped)} skipped)")
        for h in ("run", "clean acc.", "PGD robust acc.", "ρ_adv median", "λ_max", "σ₁₀/σ₁", "train s"):
            t.add_column(h)
        for r in res.results:
            t.add_row(r["label"], _f(r["clean_accuracy"]), _f(r["robust_accuracy"]), _f(r["rho_adv_median"]),
                      _f(r["hessian_lambda_max_median"]), _f(r["normals_sigma10_over_sigma1"]),
                      _f(r["train_seconds"]))
        console.print(t)
        console.print("wrote " + ", ".join(res.files))
