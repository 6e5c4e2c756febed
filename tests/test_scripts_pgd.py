"""The quick mode of the PGD benchmark runs and reports sane numbers."""

from __future__ import annotations

from conftest import load_script


def test_pgd_benchmark_quick():
    rows = load_script("benchmarks/pgd.py").main(["--quick", "--threads", "1", "--model", "zoo:mlp-digits",
                                            "--data", "digits", "-n", "80", "--eps-2", "0.5"])
    assert len(rows) == 6  # (georobust, georobust no early stop, torchattacks) × (L∞, L2)
    for i in range(0, 6, 3):
        ours, full, theirs = rows[i:i + 3]
        assert ours["robust_accuracy"] <= theirs["robust_accuracy"] + 0.0125
        assert full["robust_accuracy"] <= theirs["robust_accuracy"] + 0.0125
        assert all(r["seconds"] > 0 for r in (ours, full, theirs))
