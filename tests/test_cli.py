"""The CLI, run as the real command in a subprocess on the embedded data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file


def run(*args, check=True):
    return run_cli(*args, check=check, threads=2)


def test_help_everywhere():
    for cmd in ([], ["data", "list"], ["zoo", "list"], ["train"], ["attack"], ["attack", "deepfool"], ["evaluate"],
                ["universal"], ["analyse", "curvature"], ["analyse", "cross-section"], ["analyse", "subspace"],
                ["analyse", "normals"]):
        p = run(*cmd, "--help")
        assert "Usage" in p.stdout and "Traceback" not in p.stderr


def test_data_and_zoo_list():
    out = run("data", "list").stdout
    assert "digits" in out and "1×8×8" in out and "spheres" in out
    out = run("zoo", "list").stdout
    assert "zoo:lenet-fmnist" in out and "zoo:mlp-digits" in out and "resnet-small" in out


def test_evaluate_digits(tmp_path):
    p = run("evaluate", "--model", "zoo:mlp-digits", "--data", "digits", "--limit", "200", "--attacks", "fgsm",
            "--out", str(tmp_path))
    assert "clean accuracy" in p.stdout
    ev = json.loads((tmp_path / "evaluation.json").read_text())
    assert ev["n"] == 200 and ev["clean_accuracy"] > 0.95
    acc = ev["robust"]["fgsm"]
    assert acc[0] == ev["clean_accuracy"] and all(a >= b for a, b in zip(acc, acc[1:]))
    assert acc[-1] < 0.2  # FGSM at eps 0.2 fools nearly everything on digits
    assert (tmp_path / "robust_accuracy.png").stat().st_size > 5000
    assert (tmp_path / "examples_fgsm.png").exists()


def test_attack_fgsm_minimal_saves(tmp_path):
    p = run("attack", "fgsm", "--limit", "50", "--out", str(tmp_path))
    assert "success_rate" in p.stdout
    res = json.loads((tmp_path / "result_fgsm.json").read_text())
    assert res["summary"]["success_rate"] == 1.0 and res["summary"]["n"] == 50


@pytest.mark.parametrize("args,msg", [
    (["attack", "fgsmm"], "Did you mean 'fgsm'"),
    (["attack", "fgsm", "--data", "digitz"], "unknown data set 'digitz'"),
    (["attack", "fgsm", "-o", "stepz=3"], "unknown option of fgsm 'stepz'"),
    (["attack", "fgsm", "--eps", "-1"], "eps must be"),
    (["attack", "fgsm", "--model", "zoo:nope"], "unknown shipped model"),
    (["attack", "fgsm", "--device", "cuda:7"], "device"),
    (["evaluate", "--norm", "3"], "norm"),
    (["attack", "universal"], "georobust universal"),
    (["evaluate", "--attacks", "universal"], "not a per-sample attack"),
])
def test_errors_are_one_line_no_traceback(args, msg):
    p = run(*args, check=False)
    assert p.returncode == 2
    assert msg in p.stderr.replace("\n", " ")
    assert "Traceback" not in p.stderr


def test_train_deterministic_for_a_seed(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"m{i}.safetensors"
        run("train", "--arch", "mlp", "--data", "digits", "--epochs", "2", "--seed", "5", "--out", str(out))
        outs.append(out)
    a, b = load_file(str(outs[0])), load_file(str(outs[1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads(Path(outs[0]).with_suffix(".json").read_text())
    assert meta["seed"] == 5 and meta["command"].startswith("georobust train") and meta["test_accuracy"] > 0.8
    p = run("evaluate", "--model", str(outs[0]), "--limit", "50", "--attacks", "fgsm")
    assert "clean accuracy" in p.stdout
