"""``georobust study`` (georobust.evaluation.study): the sweep file's checks, the expansion, the fixed sharded
assignment, resume without retraining (fit calls counted), a run killed mid-training resumed from its checkpoint,
the measurements against independent computations (accuracy, DeepFool's ρ_adv, a dense Hessian), the figures
re-plotted from saved results, and the zoo's configurable ``convnet``."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from georobust import data as gdata
from georobust.defenses import train as gtrain
from georobust.errors import OptionError, OutputError
from georobust.evaluation import study
from georobust.evaluation.distributed import Context
from georobust.models.classifier import as_classifier
from georobust.models.zoo import build

REAL_FIT = gtrain.fit

# A sweep of a second per run: 2 configurations (base, batch_norm on) x 2 seeds on digits.
TINY = {
    "sweep": {"name": "tiny", "seeds": [0, 1]},
    "base": {"data": "digits", "n_train": 1000, "n_test": 100, "arch": "convnet", "width": 4, "depth": 1,
             "epochs": 2, "batch_size": 32, "lr": 1e-2},
    "factors": {"batch_norm": [False, True]},
    "measure": {"n_eval": 12, "pgd_eps": 0.1, "pgd_steps": 3, "hessian_images": 3, "hessian_k": 3,
                "normals_images": 8, "deepfool_max_iter": 20},
}


def _cfg(**changes):
    raw = json.loads(json.dumps(TINY))
    for sec, kv in changes.items():
        raw.setdefault(sec, {}).update(kv)
    return study.parse_config(raw, source="tiny.toml")


class CountingFit:
    """Wraps the real ``fit``, counting calls (and their ``resume`` flags); ``kill_at``: the call that stops after
    its first epoch and raises, as a killed process would."""

    def __init__(self, kill_at: int | None = None):
        self.calls: list[bool] = []
        self.kill_at = kill_at

    def __call__(self, *args, **kw):
        self.calls.append(bool(kw.get("resume")))
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            REAL_FIT(*args, **kw, stop_after_epoch=1)
            raise KeyboardInterrupt("killed")
        return REAL_FIT(*args, **kw)


@pytest.fixture
def counting(monkeypatch):
    def make(kill_at=None):
        c = CountingFit(kill_at)
        monkeypatch.setattr(gtrain, "fit", c)
        return c
    return make


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cfg = _cfg()
    res = study.run_sweep(cfg, out)
    return cfg, out, res


# ------------------------------------------------------------------------------------------------ the config
@pytest.mark.parametrize("section, key", [("base", "widht"), ("measure", "pgd_epsilon"), ("sweep", "seed"),
                                          ("factors", "activation")])
def test_unknown_key_is_an_error_naming_it_and_the_valid_ones(section, key):
    raw = json.loads(json.dumps(TINY))
    raw[section][key] = [1] if section == "factors" else 1
    with pytest.raises(OptionError) as e:
        study.parse_config(raw, source="s.toml")
    msg = str(e.value)
    assert f"unknown key {key!r}" in msg and f"section {section}" in msg and "valid keys" in msg
    valid = study.FACTORS if section == "factors" else study.SCHEMA[section]
    assert all(k in msg for k in valid)
    if key == "widht":
        assert "did you mean 'width'" in msg


def test_unknown_section_and_bad_values_are_errors(tmp_path):
    with pytest.raises(OptionError, match="unknown section 'model'.*the valid sections are sweep, base, factors, measure"):
        study.parse_config({**TINY, "model": {}})
    with pytest.raises(OptionError, match=r"base\.dropout = 1.5 .* in \[0, 1\)"):
        _cfg(base={"dropout": 1.5})
    with pytest.raises(OptionError, match=r"factors\.optimizer.*'rmsprop'"):
        _cfg(factors={"optimizer": ["adam", "rmsprop"]})
    with pytest.raises(OptionError, match="architecture 'mlp' has no option 'width'"):
        _cfg(base={"arch": "mlp", "width": 8})
    with pytest.raises(OptionError, match="seeds"):
        _cfg(sweep={"seeds": [0, 0]})
    with pytest.raises(OptionError, match="sweep section: seeds = "):
        _cfg(factors={"seed": [0, 1]})
    p = tmp_path / "s.toml"
    p.write_text('[base]\nlr = 0.01\nbatchsize = 32\n')
    with pytest.raises(OptionError, match="unknown key 'batchsize'.*did you mean 'batch_size'"):
        study.load_config(p)
    p.write_text("[base\n")
    with pytest.raises(OptionError, match="not valid TOML"):
        study.load_config(p)


def test_cli_reports_an_unknown_key_in_one_line(tmp_path):
    from georobust.cli import app

    p = tmp_path / "s.toml"
    p.write_text('[factors]\nwidth = [8, 16]\nactivation = ["relu"]\n')
    r = CliRunner().invoke(app, ["study", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "section factors: unknown key 'activation'; the valid keys are width, depth" in " ".join(r.output.split())
    assert not (tmp_path / "o" / "runs").exists()


def test_shipped_sweep_files_parse_and_expand():
    from conftest import ROOT

    full = study.load_config(ROOT / "repro/factors.toml")
    assert full.base["data"] == "fashion-mnist" and full.mode == "one-at-a-time"
    others = sum(len([v for v in vs if v != full.base[k]]) for k, vs in full.factors.items())
    assert len(study.expand(full)) == (1 + others) * len(full.seeds)
    quick = study.load_config(ROOT / "repro/factors.toml", quick=True)
    assert quick.base["data"] == "digits" and len(quick.seeds) <= 2 and quick.base["epochs"] <= 4
    assert study.load_config(ROOT / "repro/factors_quick.toml").base["data"] == "digits"


# ------------------------------------------------------------------------------------------------ expansion, shards
def test_expansion_one_factor_at_a_time_and_grid():
    cfg = _cfg(factors={"batch_norm": [False, True], "depth": [1, 2, 3], "lr": [1e-2]})
    runs = study.expand(cfg)
    # base + bn on + depth 2, 3 (depth 1 and lr 1e-2 are the base): 4 configurations x 2 seeds
    assert len(runs) == 4 * 2 and len({r.run_id for r in runs}) == len(runs)
    assert all(len(r.changed) <= 1 for r in runs)
    assert [r.changed for r in runs[:4]] == [{}, {"batch_norm": True}, {"depth": 2}, {"depth": 3}]
    assert [r.seed for r in runs] == [0] * 4 + [1] * 4
    grid = study.expand(_cfg(sweep={"mode": "grid"}, factors={"batch_norm": [False, True], "depth": [1, 2, 3]}))
    assert len(grid) == 2 * 3 * 2 and len({r.run_id for r in grid}) == len(grid)
    # the same training settings and seed are the same run in both sweeps
    assert {r.run_id for r in runs if "lr" not in r.changed} <= {r.run_id for r in grid}


@pytest.mark.parametrize("n", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_sharded_assignment_covers_every_run_exactly_once(n, world):
    parts = [study.assignment(n, r, world) for r in range(world)]
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(n))
    assert all(i % world == r for r, p in enumerate(parts) for i in p)
    with pytest.raises(OptionError):
        study.assignment(n, world, world)


@pytest.mark.slow
def test_ranks_train_their_own_runs_and_rank0_merges(tmp_path, counting):
    cfg = _cfg(sweep={"seeds": [0]}, base={"n_train": 300, "epochs": 1})  # 2 runs, one per rank
    c1 = counting()
    r1 = study.run_sweep(cfg, tmp_path, ctx=Context(rank=1, world_size=2, local_rank=1))
    assert len(c1.calls) == 1 and r1.results == [] and not (tmp_path / "table.md").exists()
    assert r1.trained == [study.expand(cfg)[1].run_id]
    c0 = counting()
    r0 = study.run_sweep(cfg, tmp_path, ctx=Context(rank=0, world_size=2, local_rank=0), resume=True)
    assert len(c0.calls) == 1 and r0.trained == [study.expand(cfg)[0].run_id]
    assert [r["index"] for r in r0.results] == [0, 1]  # merged, in the order of the expansion
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [r.run_id for r in study.expand(cfg)]


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.slow
def test_rerun_skips_finished_runs_without_training(swept, counting, tmp_path):
    cfg, out, res = swept
    assert len(res.trained) == 4 and res.skipped == []
    with pytest.raises(OutputError, match="already holds a sweep.*resume"):
        study.run_sweep(cfg, out)
    c = counting()
    again = study.run_sweep(cfg, out, resume=True)
    assert c.calls == [] and again.trained == [] and len(again.skipped) == 4
    assert again.results == res.results
    # one more seed (in a copy of the folder): only its two runs are trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    c = counting()
    more = study.run_sweep(_cfg(sweep={"seeds": [0, 1, 2]}), copy, resume=True)
    assert len(c.calls) == 2 and len(more.skipped) == 4 and len(more.results) == 6


def test_killed_sweep_resumes_the_interrupted_training_from_its_checkpoint(tmp_path, counting):
    cfg = _cfg(sweep={"seeds": [0]})  # 2 runs
    c = counting(kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        study.run_sweep(cfg, tmp_path)
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 1  # the first run finished, the second was killed after its first epoch
    killed = study.expand(cfg)[1]
    assert json.loads((tmp_path / "runs" / killed.folder / "train" / "checkpoint.json").read_text())["epoch"] == 1
    c = counting()
    res = study.run_sweep(cfg, tmp_path, resume=True)
    assert c.calls == [True]  # only the killed run, continued from its checkpoint
    epochs = [json.loads(x)["epoch"] for x in
              (tmp_path / "runs" / killed.folder / "train" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and len(res.results) == 2


# ------------------------------------------------------------------------------------------------ measurements
def test_results_have_every_field_in_range(swept):
    cfg, out, res = swept
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and recs == res.results
    for r in recs:
        for k in ("clean_accuracy", "robust_accuracy", "deepfool_fooled"):
            assert 0.0 <= r[k] <= 1.0
        assert r["clean_accuracy"] > 0.3  # 10 classes: far above chance after two epochs
        assert r["rho_adv_median"] > 0 and r["rho_adv_mean"] > 0 and r["deepfool_median_l2"] > 0
        top = r["hessian_top"]
        assert len(top) == 3 and all(a >= b for a, b in zip(top, top[1:])) and top[-1] >= -1e-6
        s = r["normals_sigma_ratio"]
        assert s[0] == 1.0 and all(1 + 1e-9 >= a >= b >= 0 for a, b in zip(s, s[1:]))
        assert r["n_normals"] <= 8 and len(r["normals_singular_values"]) == r["n_normals"]
        assert r["train_seconds"] > 0 and r["settings"]["batch_norm"] == ("batch_norm" in r["changed"])


def test_measurements_match_independent_computations(swept):
    from georobust.attacks.deepfool import deepfool
    from georobust.geometry.hessian import dense_hessian, loss_fn

    cfg, out, res = swept
    r = res.results[1]  # batch_norm on, seed 0
    s = r["settings"]
    info = gdata.info(s["data"])
    model = as_classifier(build(s["arch"], info.shape, info.num_classes, width=s["width"], depth=s["depth"],
                                batch_norm=s["batch_norm"], dropout=s["dropout"]))
    state = gtrain.load_checkpoint(out / "runs" / r["folder"] / "train")
    model.module.load_state_dict(state["model"])
    model.eval()
    x, y = gdata.load("digits", "test", limit=100)
    assert r["clean_accuracy"] == float((model(x).argmax(1) == y).double().mean())
    m = cfg.measure
    df = deepfool(model, x[:12], y[:12], max_iter=m["deepfool_max_iter"])
    ok = df.success & (df.label_clean == y[:12])
    assert r["rho_adv_median"] == pytest.approx(float(df.rho[ok].median()), rel=1e-6)
    # the largest eigenvalue of the dense 64x64 input Hessian of the loss (Lanczos is exact here up to rounding)
    h = dense_hessian(loss_fn(model, y[:3]), x[:3]).double()
    lam = torch.linalg.eigvalsh(h)[:, -1]
    assert r["hessian_lambda_max_median"] == pytest.approx(float(lam.median()), rel=1e-3, abs=1e-7)


# ------------------------------------------------------------------------------------------------ tables, figures
def test_table_and_figures_replot_from_saved_results_without_training(swept, monkeypatch, tmp_path):
    cfg, out, res = swept
    for f in ("table.md", "factor_batch_norm.png"):
        assert (out / f).stat().st_size > 0

    def boom(*a, **k):
        raise AssertionError("replot must not train or measure")

    monkeypatch.setattr(gtrain, "fit", boom)
    monkeypatch.setattr(study, "measure", boom)
    (out / "table.md").unlink()
    (out / "factor_batch_norm.png").unlink()
    paths = study.replot(out)
    assert {p.name for p in paths} == {"table.md", "factor_batch_norm.png"}
    assert (out / "factor_batch_norm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table's numbers are the mean and std over seeds of the saved records
    rows = study.factor_rows(cfg, res.results, "batch_norm")
    on = [r["clean_accuracy"] for r in res.results if r["settings"]["batch_norm"]]
    mean = sum(on) / 2
    std = math.sqrt(sum((a - mean) ** 2 for a in on))  # ddof=1 with two seeds
    assert rows[1]["value"] is True and rows[1]["clean_accuracy"] == pytest.approx((mean, std, 2))
    assert f"| on | 2 | {mean:.4g} ± {std:.2g} |" in (out / "table.md").read_text()
    # the CLI's --replot does the same
    from georobust.cli import app

    (out / "table.md").unlink()
    r = CliRunner().invoke(app, ["study", "unused.toml", "--out", str(out), "--replot"])
    assert r.exit_code == 0, r.output
    assert (out / "table.md").exists()


# ------------------------------------------------------------------------------------------------ the convnet
def test_convnet_options():
    plain = build("convnet", (1, 28, 28), 10, seed=0)
    assert sum(p.numel() for p in plain.parameters()) == (9 * 16 + 16) + (16 * 9 * 32 + 32) + (32 * 7 * 7 * 10 + 10)
    bn = build("convnet", (1, 8, 8), 10, seed=0, width=4, depth=3, batch_norm=True, dropout=0.5)
    kinds = [type(m).__name__ for m in bn]
    assert kinds.count("BatchNorm2d") == 3 and kinds.count("Dropout") == 1 and kinds.count("MaxPool2d") == 3
    assert bn.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(OptionError, match="no option 'widht'; its options are width, depth, batch_norm, dropout"):
        build("convnet", (1, 8, 8), 10, widht=4)
    with pytest.raises(OptionError, match="dropout"):
        build("convnet", (1, 8, 8), 10, dropout=1.0)


# ------------------------------------------------------------------------------------------------ the reproduction
@pytest.mark.slow
def test_factors_repro_quick(tmp_path):
    from conftest import ROOT, load_script

    res = load_script("repro/factors.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    out = tmp_path / "factors_quick"
    cfg = study.load_config(ROOT / "repro/factors_quick.toml", quick=True)
    assert res.total == len(study.expand(cfg)) == len(res.results) == len(res.trained)
    table = (out / "table.md").read_text()
    for f in cfg.factors:
        assert (out / f"factor_{f}.png").stat().st_size > 0 and f"## {f}" in table
        for row in study.factor_rows(cfg, res.results, f):
            assert row["n"] == len(cfg.seeds)
            cell = study._pm(row["robust_accuracy"])
            assert f"| {study._fmt_value(row['value'])}" in table and cell in table
    # --replot rebuilds them from results.jsonl alone
    (out / "table.md").unlink()
    paths = load_script("repro/factors.py").main(["--quick", "--replot", "--out", str(tmp_path)])
    assert (out / "table.md").read_text() == table and len(paths) == 1 + len(cfg.factors)


@pytest.mark.slow
def test_torchrun_two_processes_give_the_one_process_results(tmp_path):
    """Two ranks train one run each; rank 0 merges: every measured number equals that of one process (this one)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    lines = []
    small = {**TINY, "sweep": {"name": "tiny", "seeds": [0]}, "base": {**TINY["base"], "n_train": 200, "epochs": 1}}
    for sec, kv in small.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in kv.items()]
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("\n".join(lines) + "\n")  # JSON scalars and lists are TOML values
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200")
    torchrun = Path(sys.executable).with_name("torchrun")
    p = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "georobust", "study", str(cfg),
                        "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): the same floating-point reductions
    try:
        study.run_sweep(study.load_config(cfg), tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    two, one = ([json.loads(x) for x in (tmp_path / o / "results.jsonl").read_text().splitlines()]
                for o in ("two", "one"))
    assert len(two) == len(one) == 2
    assert (tmp_path / "two" / "logs" / "rank1.log").read_text().count("study run 2/2") == 1  # rank 1 ran run 2
    drop = ("seconds", "threads")
    assert [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in two] == \
        [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in one]
