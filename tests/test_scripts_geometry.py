"""The geometry benchmark and reproductions run in --quick mode and write their tables and figures."""

from __future__ import annotations

import math

import pytest
from conftest import load_script, run_cli


def test_hessian_benchmark_quick():
    out = load_script("benchmarks/hessian.py").main(["--quick", "--threads", "1"])
    assert out["top_rel_err"] < 1e-3 and out["matvecs"] > 0


def test_subspace_robustness_quick(tmp_path):
    out = load_script("repro/subspace_robustness.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert (tmp_path / "subspace_robustness.md").exists() and (tmp_path / "subspace_robustness.png").exists()
    assert all(0.5 < b < 2.0 for b in out["mlp-digits"])


def test_curvature_profiles_quick(tmp_path):
    out = load_script("repro/curvature_profiles.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert (tmp_path / "curvature_profiles.md").exists() and (tmp_path / "curvature_profiles.png").exists()
    assert out[("mlp-digits", None)][0] == 0.0  # ReLU boundary: zero curvature
    assert math.isfinite(out[("mlp-digits", 10.0)][0])


@pytest.mark.parametrize("name", ["cross_sections", "normals_spectrum"])
def test_gallery_quick(tmp_path, name):
    load_script(f"repro/{name}.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert (tmp_path / f"{name}.md").exists()
    assert list(tmp_path.glob("*.png"))


def test_cli_analyse_subprocess(tmp_path):
    run_cli("analyse", "cross-section", "--limit", "2", "--resolution", "11", "--out", tmp_path, timeout=120)
    assert (tmp_path / "cross_sections.png").exists()
    p = run_cli("analyse", "subspace", "--ratios", "2", check=False, timeout=120)
    assert p.returncode == 2 and "ratios" in p.stderr
