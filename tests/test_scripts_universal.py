"""The universal-perturbation reproduction, benchmark and CLI command, in their quick modes. Every number the
scripts report is recomputed here independently from what they return (the perturbation v, the subspace bases,
the seconds and run counts), so a wrong number fails."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script, needs_fmnist, run_cli

import georobust as gr


def _fooling(clf, x, v) -> float:
    """Fraction of ``x`` whose predicted label changes under ``x + v`` clipped to [0, 1] — a plain forward pass."""
    with torch.no_grad():
        clean = clf(x).argmax(1)
        pert = clf((x + v).clamp(0.0, 1.0)).argmax(1)
    return int((clean != pert).sum()) / x.shape[0]


@needs_fmnist
def test_repro_universal_quick(tmp_path):
    out = load_script("repro/universal.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    md = (tmp_path / "universal.md").read_text()
    assert "Why they exist" in md and "Transfer" in md
    name = "fc500-150-10-fmnist"
    g, gm = out["geometry"][name], out["geometry_results"][name]
    assert g["uap"] > g["random"] and g["flat"] > g["random"]
    # the quick mode: 100 train / 200 held-out images, 60 geometry points, m = 10, ξ = 3 (L2), seed 0
    clf = gr.pretrained(name)
    xt, _ = gr.data.load("fashion-mnist", "test", limit=200)
    d = xt[0].numel()
    assert gm.xi == 3.0 and gm.n_eval == 200 and gm.m_curved == 10
    for basis in (gm.flat_basis, gm.curved_basis):
        torch.testing.assert_close(basis.double() @ basis.double().T, torch.eye(basis.shape[0], dtype=torch.float64),
                                   atol=1e-4, rtol=0)
    # every fooling rate of the four-way comparison, recomputed from the returned bases with the documented draws
    # (one generator seeded 0: random (n, d), then flat (n, m_flat), then curved (n, m_curved) coefficients)
    gen = torch.Generator().manual_seed(0)
    n = xt.shape[0]
    for kind, basis in (("random", None), ("flat", gm.flat_basis), ("curved", gm.curved_basis)):
        if basis is None:
            z = torch.randn(n, d, generator=gen, dtype=torch.float64)
        else:
            z = torch.randn(n, basis.shape[0], generator=gen, dtype=torch.float64) @ basis.double()
        v = (z / z.norm(dim=1, keepdim=True) * 3.0).float().reshape(xt.shape)
        assert _fooling(clf, xt, v) == pytest.approx(g[kind], abs=1.5 / n), kind
    uap = out["uaps"][(name, "2", 3.0)].v
    assert _fooling(clf, xt, uap / uap.norm() * 3.0) == pytest.approx(g["uap"], abs=1.5 / n)
    # the curved directions are the averaged boundary Hessian's top eigenvectors: sorted, positive eigenvalues
    ev = gm.hessian_eigenvalues
    assert bool((ev[:-1] >= ev[1:] - 1e-6).all()) and float(ev[0]) > 0
    for f in ("universal_comparison.png", "universal_fooling_vs_xi_inf.png", "universal_v_fc500-150-10-fmnist.png"):
        assert (tmp_path / f).stat().st_size > 1000


def _check_rows(rows, n_train, n_test, passes):
    clf = gr.pretrained("lenet-fmnist")
    x, _ = gr.data.load("fashion-mnist", "train", limit=n_train)
    xt, _ = gr.data.load("fashion-mnist", "test", limit=n_test)
    for r in rows:
        # the reported fooling rates are those of the returned v, recomputed with a plain forward pass
        assert r["fool_train"] == pytest.approx(_fooling(clf, x, r["v"]), abs=1e-6), r["method"]
        assert r["fool_test"] == pytest.approx(_fooling(clf, xt, r["v"]), abs=1e-6), r["method"]
        assert float(r["v"].abs().max()) <= 0.2 + 1e-6  # inside the L∞ ball of radius ξ
        # work-normalised columns: DeepFool runs are bounded by the samples visited, and ms/run = seconds / runs
        assert 0 < r["deepfool_runs"] <= n_train * passes
        assert r["ms_per_run"] == pytest.approx(1000 * r["seconds"] / r["deepfool_runs"], rel=1e-12)


@needs_fmnist
def test_benchmark_universal_quick(capsys):
    rows = load_script("benchmarks/universal.py").main(["--quick", "--threads", "1", "--no-art"])
    text = capsys.readouterr().out
    assert [r["method"].split(" (")[0] for r in rows] == ["georobust sequential", "georobust batched"]
    for r in rows:
        assert r["method"] in text and r["passes"] == 1
        assert f"{r['deepfool_runs']:8d}" in text
    _check_rows(rows, 60, 100, 1)


@needs_fmnist
@pytest.mark.slow
def test_benchmark_universal_quick_with_art(capsys):
    rows = load_script("benchmarks/universal.py").main(["--quick", "--threads", "1"])
    assert "ART UniversalPerturbation" in capsys.readouterr().out
    art = rows[-1]
    assert art["method"] == "ART UniversalPerturbation"
    _check_rows(rows, 60, 100, 1)
    for r in rows:
        # the speed ratios are the ratios of the reported seconds and of the reported per-run times
        assert r["speedup_vs_art"] == pytest.approx(art["seconds"] / r["seconds"], rel=1e-12)
        assert r["per_run_speedup_vs_art"] == pytest.approx(art["ms_per_run"] / r["ms_per_run"], rel=1e-12)
    # ART runs DeepFool once per sample still unfooled when visited: at least once, at most once per sample (1 pass)
    assert 1 <= art["deepfool_runs"] <= 60


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
