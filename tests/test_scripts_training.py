"""The quick modes of the training benchmark and the CURE-vs-AT reproduction run and report sane numbers
(marked slow: ~10-20 s each on an idle 2-core CPU, a minute when it is shared)."""

from __future__ import annotations

import pytest
from conftest import load_script, needs_fmnist


@pytest.mark.slow
@needs_fmnist
def test_training_benchmark_quick():
    out = load_script("benchmarks/training.py").main(["--quick", "--threads", "1"])
    # no timing assertion (seconds depend on the machine's load); every method timed and evaluated
    assert set(out["seconds"]) == set(out["quality"])
    # identical seeds and random starts: our PGD-AT and the torchattacks loop train the same model
    assert out["quality"]["ours PGD-AT"] == out["quality"]["torchattacks PGD-AT"]
    # fine-tuning a trained LeNet for the quick epochs keeps it accurate (measured 0.90-0.92; chance 0.1)
    assert all(clean > 0.8 for clean, _ in out["quality"].values())


@pytest.mark.slow
@needs_fmnist
def test_cure_vs_at_quick(tmp_path):
    out = load_script("repro/cure_vs_at.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    rows = out["rows"]
    assert set(rows) == {"standard", "PGD-AT", "fast-AT", "CURE", "LLR"}
    for r in rows.values():
        assert r["clean"] > 0.5 and r["pgd@0.15"] <= r["pgd@0.1"] <= r["pgd@0.05"]
    # the talk's geometric claim, with a wide margin even in the quick mode: adversarial training flattens the
    # loss (top input-Hessian eigenvalue 0.0033 vs 0.0169 measured, 5x; asserted 2x)
    assert rows["PGD-AT"]["lam_max"] < rows["standard"]["lam_max"] / 2
    assert rows["PGD-AT"]["profile"][0] == rows["PGD-AT"]["lam_max"]
    assert not list(tmp_path.iterdir())  # the quick mode writes nothing
