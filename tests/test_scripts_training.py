"""The quick modes of the training benchmark and the CURE-vs-AT reproduction run and report sane numbers
(marked slow: ~10-20 s each on an idle 2-core CPU, a minute when it is shared)."""

from __future__ import annotations

import pytest
from conftest import load_script, needs_fmnist


@pytest.mark.slow
@needs_fmnist
def test_training_benchmark_quick():
    out = load_script("benchmarks/training.py").main(["--quick", "--threads", "1"])
    s = out["seconds"]
    assert s["ours PGD-AT"] > s["ours CURE"] > 0 and s["ours PGD-AT"] > s["ours fast-AT"]
    # identical seeds and random starts: our PGD-AT and the torchattacks loop train the same model
    assert out["quality"]["ours PGD-AT"] == out["quality"]["torchattacks PGD-AT"]


@pytest.mark.slow
@needs_fmnist
def test_cure_vs_at_quick(tmp_path):
    out = load_script("repro/cure_vs_at.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    rows = out["rows"]
    assert set(rows) == {"standard", "PGD-AT", "fast-AT", "CURE", "LLR"}
    for r in rows.values():
        assert 0.5 < r["clean"] <= 1 and 0 <= r["pgd@0.15"] <= r["pgd@0.05"] <= 1
    assert min(out["seconds"]["PGD-AT"]) > min(out["seconds"]["standard"])
    assert not list(tmp_path.iterdir())  # the quick mode writes nothing
