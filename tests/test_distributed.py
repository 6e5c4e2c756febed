"""Sharded evaluation (georobust.evaluation.distributed): the shards, their seeds and checkpoints; and the real
thing — ``torchrun --nproc-per-node 2 -m georobust evaluate`` on CPU with gloo, whose per-sample results must be
byte-identical to the one-process run's (DeepFool, and PGD with random start), also after a kill and a resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from georobust.errors import CheckpointError, InputError, OptionError
from georobust.evaluation import distributed as gd
from georobust.evaluation.cascade import cascade
from georobust.evaluation.suite import evaluate

TORCHRUN = Path(sys.executable).with_name("torchrun")
# the same evaluation in every run below: 6 shards of 16, two attacks (PGD with its random start)
EVAL = ["evaluate", "--model", "zoo:mlp-digits", "--data", "digits", "--limit", "96", "--attacks", "deepfool,pgd",
        "--eps", "0,0.05,0.1", "-o", "pgd.steps=10", "--shard-size", "16"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _cmd(nproc: int, *args) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "georobust", *map(str, args)]
    return [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "-m", "georobust", *map(str, args)]


def _run(nproc: int, *args, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    p = subprocess.run(_cmd(nproc, *args), capture_output=True, text=True, env=_env(), timeout=300, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _same_outputs(a: Path, b: Path) -> None:
    """Per-sample content byte-identical: every tensor of every result, and evaluation.json but for timings."""
    for name in ("deepfool", "pgd"):
        ta, tb = load_file(a / f"result_{name}.safetensors"), load_file(b / f"result_{name}.safetensors")
        assert set(ta) == set(tb) and {"x_adv", "success", "label_adv"} <= set(ta)
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), (name, k)
        fa = json.loads((a / f"result_{name}.json").read_text())["fields"]
        fb = json.loads((b / f"result_{name}.json").read_text())["fields"]
        assert {k: v for k, v in fa.items() if k != "elapsed"} == {k: v for k, v in fb.items() if k != "elapsed"}
    ea, eb = (json.loads((d / "evaluation.json").read_text()) for d in (a, b))
    for d in (ea, eb):
        d.pop("seconds")
        for v in d["details"].values():  # timings: the only fields that may differ
            v.pop("seconds")
            v.pop("elapsed", None)
    assert ea == eb


# ------------------------------------------------------------------------------------------- unit
def test_shards_seeds_and_refusals():
    assert gd.shards(60, 16) == [(0, 16), (16, 32), (32, 48), (48, 60)]
    assert gd.shards(5, 16) == [(0, 5)]
    assert gd.shard_seed(7, 0) == 7  # one shard draws what the unsharded call with seed=7 draws
    seeds = {gd.shard_seed(s, a) for s in range(4) for a in range(0, 4096, 16)}
    assert len(seeds) == 4 * 256 and all(0 <= v < 2**63 for v in seeds)
    with pytest.raises(InputError, match="3 processes for 2 samples"):
        gd.check_world(gd.Context(0, 3), 2, 16)
    with pytest.raises(OptionError, match="only 2 shard"):
        gd.check_world(gd.Context(0, 3), 20, 10)
    with pytest.raises(OptionError, match="positive integer"):
        gd.shards(10, 0)
    gd.check_world(gd.Context(1, 2), 20, 10)


def test_one_process_sharded_evaluation_is_the_evaluation_of_each_shard(mlp_digits, digits_test):
    x, y = digits_test[0][:24], digits_test[1][:24]
    kw = dict(attacks=["deepfool", "pgd"], eps=[0.0, 0.05, 0.1], norm="inf", options={"pgd": {"steps": 5}})
    ev, res = gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, seed=3, shard_size=10, **kw)
    # by hand: the unsharded evaluation of each shard with that shard's seed, concatenated
    parts = []
    for a, b in gd.shards(24, 10):
        opts = {"pgd": {"steps": 5, "seed": gd.shard_seed(3, a)}}
        parts.append(evaluate(mlp_digits, x[a:b], y[a:b], **{**kw, "options": opts}))
    for name in ("deepfool", "pgd"):
        assert torch.equal(res[name].x_adv, torch.cat([r[name].x_adv for _, r in parts]))
        assert torch.equal(res[name].success, torch.cat([r[name].success for _, r in parts]))
        want = [sum(e.robust[name][j] * (b - a) for (e, _), (a, b) in zip(parts, gd.shards(24, 10))) / 24
                for j in range(3)]
        assert ev.robust[name] == pytest.approx(want, abs=1e-12)
    assert res["pgd"].params["seed"] == 3 and res["pgd"].params["shard_size"] == 10
    assert ev.n == 24 and ev.worst_case[0] == ev.clean_accuracy
    # one shard holding every sample is the unsharded call with the run's seed
    ev1, res1 = gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, seed=3, shard_size=64, **kw)
    ev0, res0 = evaluate(mlp_digits, x, y, **{**kw, "options": {"pgd": {"steps": 5, "seed": 3}}})
    assert torch.equal(res1["pgd"].x_adv, res0["pgd"].x_adv) and ev1.robust == ev0.robust


def test_checkpoints_resume_and_refusals(mlp_digits, digits_test, tmp_path):
    x, y = digits_test[0][:30], digits_test[1][:30]
    kw = dict(attacks=["pgd"], eps=[0.0, 0.1], norm="inf", options={"pgd": {"steps": 3}}, seed=1, shard_size=10)
    st = tmp_path / "st"
    ev, res = gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, state_dir=st, **kw)
    assert sorted(p.name for p in st.iterdir()) == ["config.json", "shard-000000000", "shard-000000010",
                                                     "shard-000000020"]
    with pytest.raises(CheckpointError, match="--resume"):
        gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, state_dir=st, **kw)
    with pytest.raises(CheckpointError, match="seed"):
        gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, state_dir=st, resume=True, **{**kw, "seed": 2})
    with pytest.raises(CheckpointError, match="nothing to resume"):
        gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, state_dir=tmp_path / "none", resume=True, **kw)
    # a lost shard is run again, the others are loaded: the same result
    shutil.rmtree(st / "shard-000000010")
    marker = st / "shard-000000000" / "shard.json"
    before = marker.stat().st_mtime_ns
    ev2, res2 = gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, state_dir=st, resume=True, **kw)
    assert marker.stat().st_mtime_ns == before and (st / "shard-000000010" / "shard.json").exists()
    assert torch.equal(res2["pgd"].x_adv, res["pgd"].x_adv) and ev2.robust == ev.robust
    # a corrupted shard is named, not silently used
    (st / "shard-000000020" / "tensors.safetensors").write_bytes(b"junk")
    with pytest.raises(Exception, match="shard-000000020"):
        gd.evaluate_sharded(gd.Context(), mlp_digits, x, y, state_dir=st, resume=True, **kw)


def test_sharded_cascade_merges_the_shards(mlp_digits, digits_test):
    x, y = digits_test[0][:30], digits_test[1][:30]
    kw = dict(eps=0.05, norm="inf", attacks=["fgsm", "pgd"], options={"pgd": {"steps": 3}}, alarms=False)
    c = gd.cascade_sharded(gd.Context(), mlp_digits, x, y, seed=2, shard_size=12, **kw)
    parts = [cascade(mlp_digits, x[a:b], y[a:b], seed=gd.shard_seed(2, a), **kw) for a, b in gd.shards(30, 12)]
    assert c.broken_by == [v for p in parts for v in p.broken_by]
    assert torch.equal(c.x_adv, torch.cat([p.x_adv for p in parts]))
    assert c.robust_accuracy == pytest.approx(sum(float(p.robust.sum()) for p in parts) / 30, abs=1e-12)
    for i in range(2):
        assert c.per_attack[i]["ran_on"] == sum(p.per_attack[i]["ran_on"] for p in parts)
        assert c.per_attack[i]["broke"] == sum(p.per_attack[i]["broke"] for p in parts)
    assert c.per_attack[-1]["robust_after"] == pytest.approx(c.robust_accuracy, abs=1e-12)
    # one shard: the unsharded cascade itself
    one = gd.cascade_sharded(gd.Context(), mlp_digits, x, y, seed=2, shard_size=30, **kw)
    ref = cascade(mlp_digits, x, y, seed=2, **kw)
    assert one.broken_by == ref.broken_by and torch.equal(one.x_adv, ref.x_adv)
    assert [{k: v for k, v in a.items() if k != "seconds"} for a in one.per_attack] == \
        [{k: v for k, v in a.items() if k != "seconds"} for a in ref.per_attack]


# ------------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_killed_and_resumed_is_identical_to_one_process(tmp_path):
    one, killed = tmp_path / "one", tmp_path / "killed"
    _run(1, *EVAL, "--out", one)
    # two processes, killed after the first shard's checkpoint (3 rounds of 2 shards: the kill lands mid-run)
    proc = subprocess.Popen(_cmd(2, *EVAL, "--out", killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), start_new_session=True)
    first = killed / "evaluate-state" / "shard-000000000" / "shard.json"
    try:
        t0 = time.monotonic()
        while not first.exists() and proc.poll() is None and time.monotonic() - t0 < 240:
            time.sleep(0.02)
        assert first.exists(), "the first shard was never checkpointed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = sorted((killed / "evaluate-state").glob("shard-*/shard.json"))
    assert 1 <= len(done) < 6 and not (killed / "evaluation.json").exists()
    stamp = first.stat().st_mtime_ns
    p = _run(2, *EVAL, "--out", killed, "--resume")
    assert first.stat().st_mtime_ns == stamp  # loaded, not run again
    assert "done evaluated: 288/288 attack-samples" in p.stderr  # one bar for the whole run, on rank 0
    assert p.stdout.count("clean accuracy") == 1  # only rank 0 prints
    assert "loaded from" in (killed / "logs" / "rank1.log").read_text()  # rank 1 logs to its file
    _same_outputs(one, killed)


@pytest.mark.slow
def test_scale_benchmark_quick_one_and_two_processes_agree():
    from conftest import load_script

    rows = load_script("benchmarks/scale.py").main(["--quick"])
    assert [r["processes"] for r in rows] == [1, 2]
    assert all(r["identical"] for r in rows)  # per-sample results byte-identical (DeepFool, PGD)
    assert rows[0]["worst_case"] == rows[1]["worst_case"] and rows[0]["speedup_eval"] == 1.0
    assert all(r["eval_s"] > 0 and r["efficiency_eval"] > 0 for r in rows)


@pytest.mark.slow
def test_torchrun_more_processes_than_samples_is_refused(tmp_path):
    p = _run(2, "evaluate", "--limit", "1", "--attacks", "fgsm", check=False, cwd=tmp_path)  # logs: tmp_path
    assert p.returncode != 0
    assert "2 processes for 1 samples" in p.stderr and "start at most 1 processes" in p.stderr


def test_commands_other_than_evaluate_under_torchrun_are_refused(tmp_path):
    # the environment torchrun sets is enough: the command refuses before joining any process group
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    p = subprocess.run([sys.executable, "-m", "georobust", "analyse", "curvature", "--limit", "5"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 2 and "this command is not sharded over processes" in p.stderr
    assert "Traceback" not in p.stderr
    # every command but evaluate: one message, before any work
    p = subprocess.run([sys.executable, "-m", "georobust", "attack", "fgsm", "--limit", "5"], capture_output=True,
                       text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 2 and "this command is not sharded over processes" in p.stderr


@pytest.mark.slow
def test_torchrun_standard_preset_identical_to_one_process(tmp_path):
    from georobust.evaluation.cascade import CascadeResult

    args = ["evaluate", "--model", "zoo:mlp-digits", "--limit", "40", "--preset", "standard", "--eps", "0.05",
            "-o", "apgd-ce.steps=3", "-o", "apgd-t.steps=3", "-o", "fab-t.steps=3", "-o", "square.max_queries=50",
            "--shard-size", "16"]
    _run(1, *args, "--out", tmp_path / "c1")
    _run(2, *args, "--out", tmp_path / "c2")
    a, b = (CascadeResult.load(tmp_path / c / "cascade_result") for c in ("c1", "c2"))
    assert a.broken_by == b.broken_by and torch.equal(a.x_adv, b.x_adv) and torch.equal(a.robust, b.robust)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a.per_attack] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b.per_attack]
    assert a.alarms == b.alarms and a.robust_accuracy == b.robust_accuracy
    assert sum(r["broke"] for r in a.per_attack) + sum(v == "clean" for v in a.broken_by) + int(a.robust.sum()) == 40
