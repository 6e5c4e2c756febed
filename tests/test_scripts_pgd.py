"""The quick mode of the PGD benchmark runs and reports sane numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem + "_bench", ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pgd_benchmark_quick():
    rows = _load("benchmarks/pgd.py").main(["--quick", "--threads", "1", "--model", "zoo:mlp-digits",
                                            "--data", "digits", "-n", "80", "--eps-2", "0.5"])
    assert len(rows) == 6  # (georobust, georobust no early stop, torchattacks) × (L∞, L2)
    for i in range(0, 6, 3):
        ours, full, theirs = rows[i:i + 3]
        assert ours["robust_accuracy"] <= theirs["robust_accuracy"] + 0.0125
        assert full["robust_accuracy"] <= theirs["robust_accuracy"] + 0.0125
        assert all(r["seconds"] > 0 for r in (ours, full, theirs))
