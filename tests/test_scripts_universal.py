"""The universal-perturbation reproduction, benchmark and CLI command, in their quick modes."""

from __future__ import annotations

import json

import pytest
from conftest import load_script, needs_fmnist, run_cli


@needs_fmnist
def test_repro_universal_quick(tmp_path):
    out = load_script("repro/universal.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    md = (tmp_path / "universal.md").read_text()
    assert "Why they exist" in md and "Transfer" in md
    g = out["geometry"]["fc500-150-10-fmnist"]
    assert g["uap"] > g["random"] and g["flat"] > g["random"]
    for f in ("universal_comparison.png", "universal_fooling_vs_xi_inf.png", "universal_v_fc500-150-10-fmnist.png"):
        assert (tmp_path / f).stat().st_size > 1000


@needs_fmnist
def test_benchmark_universal_quick(capsys):
    rows = load_script("benchmarks/universal.py").main(["--quick", "--threads", "1", "--no-art"])
    text = capsys.readouterr().out
    assert [r["method"].split(" (")[0] for r in rows] == ["georobust sequential", "georobust batched"]
    for r in rows:
        assert r["method"] in text and r["passes"] == 1
        assert 0 < r["fool_train"] <= 1 and 0 < r["fool_test"] <= 1  # the perturbation fools something


@needs_fmnist
@pytest.mark.slow
def test_benchmark_universal_quick_with_art(capsys):
    rows = load_script("benchmarks/universal.py").main(["--quick", "--threads", "1"])
    assert "ART UniversalPerturbation" in capsys.readouterr().out
    art, batched = rows[-1], rows[1]
    assert art["method"] == "ART UniversalPerturbation" and art["speedup_vs_art"] == 1.0
    assert 0 <= art["fool_test"] <= 1 and batched["speedup_vs_art"] > 1


def test_cli_universal(tmp_path):
    args = ["universal", "--model", "zoo:mlp-digits", "--data", "digits", "--limit", "80", "--eval-limit", "80",
            "--norm", "inf", "--xi", "0.2", "--max-passes", "2", "--mode", "batched", "--chunk", "20"]
    p = run_cli(*args, "--out", tmp_path)
    meta = json.loads((tmp_path / "universal.json").read_text())
    assert meta["type"] == "UniversalResult" and len(meta["fields"]["fooling_train"]) >= 1
    assert (tmp_path / "perturbation.png").exists() and (tmp_path / "examples.png").exists()
    assert "pass 1" in p.stderr
    bad = run_cli(*args, "--xi", "-1", "--out", tmp_path / "b", check=False)
    assert bad.returncode == 2 and "xi" in bad.stderr
