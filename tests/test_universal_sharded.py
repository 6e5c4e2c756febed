"""Universal perturbations under torchrun (georobust.evaluation.distributed.universal_sharded): rank 0 computes the
perturbation, the held-out fooling rate of every pass is sharded over fixed shards and all-reduced. The sharded
fooling rate equals the unsharded one exactly (same perturbation); a 2-process gloo torchrun run of
``georobust universal`` writes the same perturbation and the same per-pass fooling rates as the 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from georobust import data, pretrained
from georobust.attacks.universal import universal_perturbation
from georobust.errors import InputError, OptionError
from georobust.evaluation import distributed as gd
from georobust.evaluation.metrics import fooling_rate, perturbed_labels

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _setup():
    clf = pretrained("mlp-digits")
    x, _ = data.load("digits", "train", limit=40)
    xe, _ = data.load("digits", "test", limit=70)
    return clf, x, xe


def test_fooling_sharded_equals_unsharded_exactly():
    clf, _, xe = _setup()
    g = torch.Generator().manual_seed(0)
    v = (torch.rand(xe.shape[1:], generator=g) * 2 - 1) * 0.3
    for shard_size, batch in ((16, 16), (32, 16), (70, 70), (1024, 1024)):
        # shards that are a multiple of the batch: the same batches as the unsharded call, so the same bits
        rate, tr = gd.fooling_sharded(gd.Context(), clf, xe, v, shard_size=shard_size, batch_size=batch)
        assert rate == fooling_rate(clf, xe, v, batch_size=batch)
        clean, adv = perturbed_labels(clf, xe, v, batch_size=batch)
        assert torch.equal(tr, torch.bincount(clean * 10 + adv, minlength=100).view(10, 10))
        assert tr.dtype == torch.int64 and int(tr.sum()) == xe.shape[0]
    assert 0.0 < rate < 1.0  # the test means something: some but not all labels change


def test_fooling_sharded_refusals_before_work():
    clf, _, xe = _setup()
    with pytest.raises(InputError, match="3 processes for 2 samples"):
        gd.fooling_sharded(gd.Context(0, 3), clf, xe[:2], torch.zeros(xe.shape[1:]), shard_size=1)
    with pytest.raises(InputError, match="one perturbation shaped like one input"):
        gd.fooling_sharded(gd.Context(), clf, xe, torch.zeros(3))
    with pytest.raises(OptionError, match="shard size"):
        gd.fooling_sharded(gd.Context(), clf, xe, torch.zeros(xe.shape[1:]), shard_size=0)
    with pytest.raises(OptionError, match="x_eval"):  # under torchrun the held-out set is what is sharded
        gd.universal_sharded(gd.Context(0, 2), clf, xe, xi=0.5)


@pytest.mark.slow
def test_universal_sharded_one_process_equals_the_library_call():
    clf, x, xe = _setup()
    kw = {"xi": 0.6, "norm": "inf", "max_passes": 2, "delta": 0.0, "mode": "batched", "chunk": 20, "seed": 3}
    ref = universal_perturbation(clf, x, x_eval=xe, **kw)
    seen = []
    got = gd.universal_sharded(gd.Context(), clf, x, x_eval=xe, shard_size=1024,
                               on_pass=lambda r: seen.append(r.fooling_eval[-1]), **kw)
    assert torch.equal(got.v, ref.v)
    assert got.fooling_train == ref.fooling_train and got.fooling_eval == ref.fooling_eval
    assert seen == ref.fooling_eval and len(seen) == 2
    assert torch.equal(got.transitions, ref.transitions)
    assert got.params["n_eval"] == ref.params["n_eval"] == 70


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.mark.slow
def test_torchrun_two_processes_identical_to_one(tmp_path):
    args = ["universal", "--model", "zoo:mlp-digits", "--data", "digits", "--limit", "40", "--eval-limit", "70",
            "--xi", "0.6", "--max-passes", "2", "--delta", "0", "--mode", "batched", "--chunk", "20",
            "--shard-size", "16"]
    runs = {1: [sys.executable, "-m", "georobust"],
            2: [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "georobust"]}
    for nproc, cmd in runs.items():
        p = subprocess.run([*cmd, *args, "--out", str(tmp_path / f"n{nproc}")], capture_output=True, text=True,
                           env=_env(), timeout=300, cwd=tmp_path)
        assert p.returncode == 0, f"{nproc} process(es): exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    a, b = (tmp_path / "n1" / "universal", tmp_path / "n2" / "universal")
    ta, tb = load_file(f"{a}.safetensors"), load_file(f"{b}.safetensors")
    assert set(ta) == set(tb) and "v" in ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    fa = json.loads(Path(f"{a}.json").read_text())["fields"]
    fb = json.loads(Path(f"{b}.json").read_text())["fields"]
    for k in ("fooling_train", "fooling_eval", "attempts", "updates", "converged", "params"):
        assert fa[k] == fb[k], k
    assert len(fa["fooling_eval"]) == 2 and all(isinstance(f, float) for f in fa["fooling_eval"])
    assert (tmp_path / "n2" / "logs" / "rank1.log").exists()  # rank 1 logged to a file, rank 0 wrote the files
