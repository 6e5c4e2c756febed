"""Reproduction: what makes a network robust — architecture (width, depth, batch-norm, dropout) and training (batch
size, learning rate, optimiser) as causes of robustness (issue 18, item 5; the "future challenges" of Fawzi,
Moosavi-Dezfooli & Frossard, "The robustness of deep networks: a geometrical perspective", IEEE SPM 2017).

Runs the sweep of ``repro/factors.toml`` (Fashion-MNIST, the zoo's ``convnet``, one factor at a time around a base,
three seeds) with :func:`georobust.evaluation.study.run_sweep` — the same as
``georobust study repro/factors.toml --out repro/results/factors`` — and writes, in ``OUT/factors/`` (``--quick``:
``OUT/factors_quick/``), ``results.jsonl``, ``table.md`` and ``factor_<name>.png`` (mean ± std over seeds);
``runs/`` holds each run's ``fit`` checkpoint and result (not committed). Every figure and table is made from
``results.jsonl``: ``--replot`` rebuilds them without training.

    python repro/factors.py                 # the default sweep: 36 runs, under an hour on a quiet 2-core CPU
    python repro/factors.py --resume        # continue a killed sweep: finished runs are skipped
    python repro/factors.py --replot        # table and figures from the saved results only
    python repro/factors.py --quick         # repro/factors_quick.toml on digits: seconds (what the tests run)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from _common import parser

from georobust.evaluation import study

HERE = Path(__file__).resolve().parent


def main(argv=None) -> study.SweepSummary | list[Path]:
    ap = parser(__doc__, seed=False)
    ap.add_argument("--config", type=Path, default=None,
                    help="the sweep file (default: repro/factors.toml; --quick: repro/factors_quick.toml)")
    ap.add_argument("--resume", action="store_true", help="continue the sweep in OUT: finished runs are skipped")
    ap.add_argument("--replot", action="store_true", help="only rewrite the table and figures from saved results")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("georobust.attacks").setLevel(logging.WARNING)
    out = a.out / ("factors_quick" if a.quick else "factors")
    if a.replot:
        return study.replot(out)
    config = a.config or HERE / ("factors_quick.toml" if a.quick else "factors.toml")
    cfg = study.load_config(config, quick=a.quick)
    res = study.run_sweep(cfg, out, resume=a.resume, device=a.device)
    print((out / study.TABLE_NAME).read_text())
    return res


if __name__ == "__main__":
    main()
