"""Issue 10, the command line: errors before any work, options, output locations, checkpoints that are never
destroyed by surprise, data options, --logits and warnings, progress, help. Each CLI item runs the real
command in a subprocess (digits data and zoo:mlp-digits, so it stays fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli

import georobust as gr
from georobust import registry
from georobust.results import AttackResult


def run(*args, check=True):
    return run_cli(*args, check=check, threads=1)


def run_in(cwd: Path, *args, check=True, script=False):
    """The command run in folder ``cwd``; ``script=True`` runs the installed ``georobust`` console script (whose
    search path, unlike ``python -m``'s, does not start with the current folder)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    exe = [str(Path(sys.executable).with_name("georobust"))] if script else [sys.executable, "-m", "georobust.cli"]
    p = subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def assert_one_line_error(p, msg: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert msg in lines[0], p.stderr


# ------------------------------------------------------------------------------------ errors, before work
@pytest.mark.parametrize("args,msg", [
    # 1. shapes: the zoo knows the model's input shape; checked before any work
    (["attack", "deepfool", "--model", "zoo:lenet-fmnist", "--data", "digits"],
     "expects inputs of shape (1, 28, 28), the data are (1, 8, 8)"),
    (["train", "--init", "zoo:mlp-digits", "--arch", "lenet", "--out", "{tmp}/a.safetensors"],
     "--arch lenet and --init zoo:mlp-digits (a mlp) conflict"),
    # 2. options
    (["attack", "pgd"], "pgd needs --eps"),
    (["attack", "pgd", "--eps", "0.1", "-o", "eps=0.3"], "--eps 0.1 and -o eps=0.3 both given"),
    (["attack", "pgd", "--eps", "0.1", "--norm", "2", "-o", "norm=inf"], "--norm 2 and -o norm=inf both given"),
    (["attack", "fgsm", "--target", "1", "-o", "target=2"], "--target 1 and -o target=2 both given"),
    (["attack", "deepfool", "--norm", "1"], "deepfool supports --norm 2 or inf, not 1"),
    (["attack", "deepfool", "--device", "mps"], "--device mps"),
    (["attack", "deepfool", "--device", "xla"], "--device xla"),
    (["attack", "deepfool", "--logits", "exp"], "--logits 'exp'"),
    (["attack", "fgsm", "-D", "size=3"], "unknown option of data set 'digits'"),
    # 3. output locations, checked before the attack or the training runs
    (["attack", "deepfool", "--out", "{tmp}/a_file"], "is not a folder"),
    (["attack", "deepfool", "--out", "/proc/georobust-test"], "cannot write in /proc"),
    (["attack", "deepfool", "--out", "/dev/null/x"], "/dev/null is not a folder"),
    (["train", "--arch", "mlp", "--out", "/proc/x.safetensors"], "cannot write in /proc"),
    (["train", "--arch", "mlp", "--out", "{tmp}/noext"], "noext.safetensors"),
    # 4. resume
    (["train", "--arch", "mlp", "--resume", "--out", "{tmp}/b.safetensors"], "--resume needs --checkpoint-dir"),
    (["universal", "--resume"], "--resume needs --out"),
    (["universal", "--resume", "--overwrite", "--out", "{tmp}/u"], "contradict"),
    # 9. options for an attack that is not run
    (["evaluate", "--attacks", "fgsm", "-o", "pgd.steps=3"], "which this evaluation does not run"),
    (["evaluate", "--attacks", "pgd", "-o", "pgd.stepz=3"], "unknown option of pgd 'stepz'"),
    (["evaluate", "--attacks", "pgd", "-o", "pgd.eps=0.3"], "evaluate sets eps itself"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v[:3]))
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, args, msg):
    (tmp_path / "a_file").write_text("precious")
    p = run(*[a.replace("{tmp}", str(tmp_path)) for a in args], check=False)
    assert_one_line_error(p, msg)
    # nothing ran: no progress line, nothing written beside the file that was in the way
    assert "samples" not in p.stderr and "epoch" not in p.stderr
    assert (tmp_path / "a_file").read_text() == "precious"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a_file"]


def test_library_refuses_options_for_attacks_not_run(mlp_digits, digits_test):
    x, y = digits_test
    with pytest.raises(gr.errors.OptionError, match="does not run"):
        gr.evaluate(mlp_digits, x[:10], y[:10], attacks=["fgsm"], options={"pgd": {"steps": 3}})


# ---------------------------------------------------------------------------- 4. nothing lost by surprise
@pytest.mark.slow  # several runs of the command (make test runs it)
def test_train_refuses_to_replace_a_checkpoint_unless_asked(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "m.safetensors"
    base = ["train", "--arch", "mlp", "--epochs", "2", "--limit", "300", "--checkpoint-dir", ck]
    run(*base, "--out", out)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    assert "log.jsonl" in before and any(name.endswith(".pt") for name in before)
    p = run(*base, "--out", tmp_path / "m2.safetensors", check=False)
    assert_one_line_error(p, "already holds a checkpoint of an earlier run")
    assert {q.name: q.read_bytes() for q in ck.iterdir()} == before  # untouched
    assert not (tmp_path / "m2.safetensors").exists()
    p = run(*base, "--out", out, check=False)  # the weights file of the first run is not replaced either
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert_one_line_error(run(*base, "--out", out, "--resume", "--overwrite", check=False), "contradict")
    run(*base, "--out", tmp_path / "m3.safetensors", "--overwrite")
    epochs = [json.loads(line)["epoch"] for line in (ck / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # one run's log, not two runs mixed (1, 2, 1, 2)


@pytest.mark.slow  # several runs of the command (make test runs it)
def test_resumed_training_reports_the_total_train_time(tmp_path):
    ck = tmp_path / "ck"
    base = ["train", "--arch", "mlp", "--limit", "300", "--checkpoint-dir", ck]
    run(*base, "--epochs", "2", "--out", tmp_path / "a.safetensors")
    first = json.loads((tmp_path / "a.json").read_text())
    run(*base, "--epochs", "2", "--resume", "--out", tmp_path / "b.safetensors")
    second = json.loads((tmp_path / "b.json").read_text())
    # nothing was left to train: the resumed run's total is the first run's per-epoch time, not ~0
    per_epoch = sum(e["seconds"] for e in first["history"])
    assert second["train_seconds"] >= per_epoch * (1 - 1e-9)


@pytest.mark.slow  # several runs of the command (make test runs it)
def test_universal_default_folder_per_run_and_no_silent_restart(tmp_path):
    args = ["universal", "--limit", "60", "--eval-limit", "30", "--max-passes", "1"]
    p = run_in(tmp_path, *args)
    (folder,) = (tmp_path / "results").iterdir()
    assert folder.name.startswith("universal-mlp-digits-") and (folder / "universal.json").exists()
    assert str(folder.relative_to(tmp_path)) in p.stdout.replace("\n", "")
    saved = (folder / "universal.json").read_bytes()
    p = run_in(tmp_path, *args, "--out", folder.relative_to(tmp_path), check=False)
    assert_one_line_error(p, "already holds a universal perturbation")
    assert (folder / "universal.json").read_bytes() == saved
    (folder / "universal.safetensors").unlink()  # one of the two files missing: never a silent restart
    p = run_in(tmp_path, *args, "--max-passes", "2", "--out", folder.relative_to(tmp_path), "--resume", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "universal.safetensors" in p.stderr
    run_in(tmp_path, *args, "--out", folder.relative_to(tmp_path), "--overwrite")
    assert json.loads((folder / "universal.json").read_text())["fields"]["xi"] == 0.2


def test_cross_section_default_folder_per_run(tmp_path):
    run_in(tmp_path, "analyse", "cross-section", "--limit", "1", "--resolution", "11")
    (folder,) = (tmp_path / "results").iterdir()
    assert folder.name.startswith("cross-section-mlp-digits-")
    assert (folder / "cross_sections.png").stat().st_size > 1000
    assert not (tmp_path / "cross_sections.png").exists()


# ------------------------------------------------------------------ 5, 6. data options, factories, --logits
@pytest.fixture
def workdir(tmp_path):
    """A folder with a factory module and grayscale PNGs in one sub-folder per class."""
    from PIL import Image

    (tmp_path / "mymodels.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n\n"
        "def make_softmax():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))\n\n"
        "def make64():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()\n")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c, scale in (("dark", 80), ("bright", 255)):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(6):
                arr = (torch.rand(12, 12, generator=g) * scale).to(torch.uint8).numpy()
                Image.fromarray(arr, mode="L").save(d / f"{i}.png")
    return tmp_path


@pytest.mark.slow  # several runs of the command (make test runs it)
def test_factory_model_from_the_current_folder_and_softmax_warning(workdir):
    p = run_in(workdir, "attack", "deepfool", "--model", "mymodels:make", "--limit", "20", script=True)
    assert "success_rate" in p.stdout and "warning" not in p.stderr
    p = run_in(workdir, "attack", "deepfool", "--model", "mymodels:make_softmax", "--limit", "20", script=True)
    assert "warning:" in p.stderr and "probabilities" in p.stderr and "--logits log" in p.stderr
    assert p.stderr.count("look like probabilities") == 1  # once, not once per source
    p = run_in(workdir, "evaluate", "--model", "mymodels:make_softmax", "--limit", "20", "--attacks", "deepfool",
               script=True)
    assert "probabilities" in p.stderr
    p = run_in(workdir, "attack", "deepfool", "--model", "mymodels:make_softmax", "--limit", "20",
               "--logits", "log", script=True)
    assert "probabilities" not in p.stderr
    # a float64 model takes the float32 data (converted before any work, as the library does)
    p = run_in(workdir, "attack", "deepfool", "--model", "mymodels:make64", "--limit", "20", script=True)
    assert "success_rate" in p.stdout


@pytest.mark.slow  # several runs of the command (make test runs it)
def test_folder_of_grayscale_pngs_on_every_command(workdir):
    run_in(workdir, "train", "--arch", "mlp", "--data", "folder", "--root", "imgs", "--epochs", "1",
           "--out", "f.safetensors")
    meta = json.loads((workdir / "f.json").read_text())
    assert meta["data"] == "folder"
    p = run_in(workdir, "attack", "deepfool", "--model", "f.safetensors", "--data", "folder", "-D", "root=imgs",
               "--limit", "12")
    assert "success_rate" in p.stdout
    p = run_in(workdir, "attack", "deepfool", "--model", "f.safetensors", "--data", "folder", "--root", "imgs",
               "-D", "size=8", check=False)
    assert_one_line_error(p, "the model expects inputs of shape (1, 12, 12), the data are (1, 8, 8)")
    p = run_in(workdir, "attack", "deepfool", "--model", "f.safetensors", "--data", "folder", "--root", "imgs",
               "-D", "channels=3", check=False)
    assert_one_line_error(p, "the data are (3, 12, 12)")


# ---------------------------------------------------------------------------------------- 7. progress
CHUNK_CASES = [("deepfool", {"batch_size": 64}, False), ("fgsm", {"batch_size": 50}, True),
               ("sparsefool", {"batch_size": 64, "max_iter": 5}, False),
               ("pgd", {"batch_size": 32, "eps": 0.05, "steps": 10}, True),
               ("lbfgs", {"batch_size": 32, "search_steps": 2, "max_iter": 5}, True)]


@pytest.mark.parametrize("name,opts,labels", CHUNK_CASES, ids=[c[0] for c in CHUNK_CASES])
def test_chunked_run_is_the_same_computation(mlp_digits, digits_test, name, opts, labels):
    from georobust.cli import _chunks, run_attack

    x, y = digits_test[0][:200], digits_test[1][:200]
    entry = registry.attacks.get(name)
    yy = y if labels else None
    assert len(_chunks(entry, mlp_digits, x, yy, opts)) > 1  # really chunked
    a = run_attack(entry, mlp_digits, x, yy, opts, seed=3)
    b = entry.fn(mlp_digits, x, yy, **opts, **({"seed": 3} if "seed" in entry.options() else {}))
    for f in ("x_adv", "label_clean", "label_adv", "success", "iterations"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.params == b.params and a.minimal == b.minimal and a.attack == b.attack


@pytest.mark.parametrize("fn_name", ["curvature_profile", "boundary_curvature"])
def test_chunked_analysis_is_the_same_computation(mlp_digits, digits_test, fn_name):
    from dataclasses import fields

    from georobust.cli import per_sample_chunks
    from georobust.geometry import curvature

    fn = getattr(curvature, fn_name)
    x = digits_test[0][:40]
    a = per_sample_chunks(fn, mlp_digits, x, batch_size=16, k=3, seed=1)  # three chunks
    b = fn(mlp_digits, x, batch_size=16, k=3, seed=1)
    for f in fields(b):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        assert torch.equal(va, vb) if isinstance(vb, torch.Tensor) else va == vb, f.name


def test_cli_result_equals_the_library_call(tmp_path, mlp_digits, digits_test):
    run("attack", "deepfool", "--limit", "150", "-o", "batch_size=64", "--out", tmp_path)
    got = AttackResult.load(tmp_path / "result_deepfool")
    want = gr.deepfool(mlp_digits, digits_test[0][:150], batch_size=64)
    assert torch.equal(got.success, want.success) and torch.equal(got.label_adv, want.label_adv)
    # another process may use other BLAS kernels: equal to float32 rounding, amplified by ≤ 50 steps
    assert torch.allclose(got.x_adv, want.x_adv, atol=1e-4, rtol=0)


def test_concat_merges_chunks():
    def part(n, attack="x", c=None, w=()):
        z = torch.zeros(n, 3)
        return AttackResult(attack, z, z + 1, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                            torch.ones(n, dtype=torch.long), torch.ones(n, dtype=torch.bool),
                            iterations=torch.full((n,), n), elapsed=0.5 * n,
                            params={"eps": 0.1, **({"c": c} if c is not None else {})}, warnings=list(w))
    r = AttackResult.concat([part(2, c=[1.0, 2.0], w=["a"]), part(3, c=[3.0, 4.0, 5.0], w=["a", "b"])])
    assert r.x.shape == (5, 3) and r.iterations.tolist() == [2, 2, 3, 3, 3] and r.elapsed == 2.5
    assert r.params == {"eps": 0.1, "c": [1.0, 2.0, 3.0, 4.0, 5.0]} and r.warnings == ["a", "b"]
    with pytest.raises(gr.errors.InputError, match="attack"):
        AttackResult.concat([part(2), part(2, attack="y")])
    p2 = part(2)
    p2.params["eps"] = 0.2
    with pytest.raises(gr.errors.InputError, match="eps"):
        AttackResult.concat([part(2), p2])


def test_progress_lines_when_piped():
    p = run("attack", "deepfool", "--limit", "300", "-o", "batch_size=64")
    assert "deepfool: 64/300 samples (21%)" in p.stderr and "left" in p.stderr
    assert "done deepfool: 300/300 samples (100%)" in p.stderr
    p = run("evaluate", "--limit", "40", "--attacks", "fgsm,deepfool", "--eps", "0.05,0.1")
    assert "done evaluated: 120/120 attack-samples" in p.stderr  # fgsm twice (one per eps), deepfool once
    # decision-based: the label queries spent out of the per-sample budget, counted at the model
    p = run("attack", "qfool", "--limit", "3", "-o", "max_queries=400")
    assert "/1200 queries (" in p.stderr and "done qfool: 1200/1200 queries (100%)" in p.stderr


# -------------------------------------------------------------------------------------------- 8. help
def test_per_attack_help_list_and_version():
    general = run("attack", "--help").stdout
    df = run("attack", "deepfool", "--help").stdout
    assert df != general
    for text in ("overshoot (default 0.02)", "max_iter (default 50)", "Moosavi-Dezfooli et al., CVPR 2016",
                 "threat model: minimal-lp", "--use-labels", "--data-option"):
        assert text in df, text
    assert "eps (required)" in run("attack", "pgd", "--help").stdout
    lst = run("attack", "--list").stdout
    for name in registry.attacks.names():
        e = registry.attacks.get(name)
        row = next(line for line in lst.splitlines() if f" {name} " in line)
        assert e.threat in row and ", ".join(e.norms) in row
    assert "Goodfellow et al., ICLR 2015" in lst and "Madry et al., ICLR 2018" in lst
    assert run("--version").stdout.strip().startswith(f"georobust {gr.__version__}")


@pytest.mark.parametrize("cmd", [["attack", "fgsm"], ["evaluate"], ["train"], ["universal"],
                                 ["analyse", "subspace"]])
def test_help_texts_choices_and_flags(cmd):
    out = run(*cmd, "--help").stdout
    assert "<bool>" not in out  # flags print as flags
    assert "digits|fashion-mnist|folder|spheres" in out and "--data-option" in out and "--root" in out
    if cmd != ["train"]:
        assert "[train|test]" in out or cmd == ["universal"]
    if cmd == ["evaluate"]:
        assert "0,0.01,0.02,0.05,0.1,0.2" in out and "[2|inf]" in out


# --------------------------------------------------------------------------------------- 9. small ones
def test_noise_table_prints_a_dash_when_no_sample_crosses():
    from georobust.cli import noise_rows

    never = SimpleNamespace(crossed=torch.zeros(4, dtype=torch.bool), r_noise=torch.full((4,), float("inf")),
                            never_crossed=1.0)
    some = SimpleNamespace(crossed=torch.tensor([True, False, True, True]), r_noise=torch.tensor([1.0, 9, 2, 3]),
                           never_crossed=0.25)
    rows, none = noise_rows((("box", never), ("free", some)), 64, 0.5)
    assert none and rows[1][2] == "— (no sample crossed)" and rows[2][2] == "2" and rows[1][3] == "4"
    assert not any("nan" in c for r in rows for c in r)
    p = run("analyse", "subspace", "--limit", "10", "--ratios", "0.25")
    assert "nan" not in p.stdout
