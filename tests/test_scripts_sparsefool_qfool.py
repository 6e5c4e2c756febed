"""The quick modes of the SparseFool/QFool benchmarks and reproductions run and report sane numbers."""

from __future__ import annotations

from conftest import load_script, needs_fmnist


@needs_fmnist
def test_sparsefool_benchmark_quick():
    out = load_script("benchmarks/sparsefool.py").main(["--quick", "--threads", "1"])
    ours, theirs = out["rows"]
    assert ours["success"] >= theirs["success"] and ours["success"] == 1.0
    assert out["speedup"] > 3


@needs_fmnist
def test_qfool_benchmark_quick():
    out = load_script("benchmarks/qfool.py").main(["--quick", "--threads", "1"])
    for m, s, _ in out["ours"].values():
        assert s == 1.0 and all(v > 0 for v in m.values())


def test_sparsefool_repro_quick(tmp_path):
    out = load_script("repro/sparsefool.py").main(["--quick", "--out", str(tmp_path)])
    assert all(r["success"] > 0.8 for r in out["rows"])
    assert (tmp_path / "sparsefool_examples.png").exists()


def test_qfool_repro_quick(tmp_path):
    out = load_script("repro/qfool.py").main(["--quick", "--out", str(tmp_path)])
    curves = out["curves"]
    for med in curves.values():
        assert med[-1] <= med[0]
        assert med[-1] >= out["deepfool"] * 0.99  # the white-box floor
    assert (tmp_path / "qfool_queries.png").exists()
