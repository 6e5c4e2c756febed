"""No lost or overwritten work (issue 10, section 3): atomic writes, checksummed checkpoints verified on resume,
refusal to overwrite a checkpoint without resume/overwrite, saved results whose two files must belong together,
the cumulative training time across a resume, and weights paths that can be loaded back."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_affine, run_cli

import georobust.storage as storage
from georobust import Classifier, build, data, deepfool, fit, load_model, pgd
from georobust.attacks.universal import universal_perturbation
from georobust.defenses.train import checkpoint_files, load_checkpoint
from georobust.errors import CheckpointError, OptionError, OutputError, ResultFileError
from georobust.models import check_weights_path, save_weights
from georobust.results import AttackResult, UniversalResult


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _truncate(p: Path, keep: float = 0.5) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: int(len(b) * keep)])


def _zero(p: Path, start: int, n: int) -> None:
    b = bytearray(p.read_bytes())
    assert len(b) >= start + n, f"{p} has only {len(b)} bytes"
    b[start:start + n] = bytes(n)
    p.write_bytes(bytes(b))


# ============================================================================================ saved results
@pytest.fixture(scope="module")
def two_results():
    clf = make_affine()
    x = 0.3 + 0.4 * torch.rand(16, 20, generator=torch.Generator().manual_seed(0))
    return pgd(clf, x, None, eps=0.1, norm="inf", steps=5), deepfool(clf, x)


def test_result_roundtrip_keeps_dots_in_names(tmp_path, two_results):
    r, _ = two_results
    j = r.save(tmp_path / "eps0.1")
    assert j == tmp_path / "eps0.1.json" and (tmp_path / "eps0.1.safetensors").exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["eps0.1.json", "eps0.1.safetensors"]  # no temp files
    back = AttackResult.load(tmp_path / "eps0.1")
    assert back.attack == "pgd" and torch.equal(back.x_adv, r.x_adv) and torch.equal(back.success, r.success)
    meta = json.loads(j.read_text())
    assert meta["tensors_sha256"] == _sha(tmp_path / "eps0.1.safetensors")


@pytest.mark.parametrize("damage", ["truncate-json", "truncate-tensors", "zero-tensors", "edit-json"])
def test_damaged_result_is_refused_naming_the_file(tmp_path, two_results, damage):
    r, _ = two_results
    r.save(tmp_path / "r")
    j, t = tmp_path / "r.json", tmp_path / "r.safetensors"
    if damage == "truncate-json":
        _truncate(j)
        bad = j
    elif damage == "truncate-tensors":
        _truncate(t)
        bad = t
    elif damage == "zero-tensors":
        _zero(t, len(t.read_bytes()) // 2, 64)
        bad = t
    else:  # a number changed by hand: the JSON no longer matches its own checksum
        meta = json.loads(j.read_text())
        meta["fields"]["elapsed"] = 123.0
        j.write_text(json.dumps(meta, indent=2))
        bad = j
    with pytest.raises(ResultFileError, match=str(bad)):
        AttackResult.load(tmp_path / "r")


def test_missing_or_absent_result_files(tmp_path, two_results):
    r, _ = two_results
    with pytest.raises(ResultFileError, match="neither"):
        AttackResult.load(tmp_path / "nothing")
    r.save(tmp_path / "a")
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(ResultFileError, match=r"a\.safetensors is missing"):
        AttackResult.load(tmp_path / "a.json")
    r.save(tmp_path / "b")
    (tmp_path / "b.json").unlink()
    with pytest.raises(ResultFileError, match=r"b\.json is missing"):
        AttackResult.load(tmp_path / "b")
    assert issubclass(ResultFileError, OSError)


def test_pgd_json_with_deepfool_tensors_is_refused(tmp_path, two_results):
    """The issue's case: PGD's JSON beside DeepFool's tensors used to load silently as a "pgd" result."""
    r_pgd, r_df = two_results
    r_pgd.save(tmp_path / "pgd")
    r_df.save(tmp_path / "df")
    shutil.copy(tmp_path / "df.safetensors", tmp_path / "pgd.safetensors")
    with pytest.raises(ResultFileError, match="does not belong"):
        AttackResult.load(tmp_path / "pgd")


def test_a_save_interrupted_between_the_two_files_is_refused_not_mixed(tmp_path, two_results, monkeypatch):
    """The tensors are renamed first and the JSON last; a crash in between leaves the old JSON beside the new
    tensors, which load refuses, and no temporary file behind."""
    r_pgd, r_df = two_results
    r_pgd.save(tmp_path / "r")
    old_json = (tmp_path / "r.json").read_bytes()
    real_replace = storage.os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", crash_on_json)
    with pytest.raises(OutputError, match="No space left"):
        r_df.save(tmp_path / "r")
    monkeypatch.undo()
    assert (tmp_path / "r.json").read_bytes() == old_json
    assert sorted(q.name for q in tmp_path.iterdir()) == ["r.json", "r.safetensors"]
    with pytest.raises(ResultFileError, match="does not belong"):
        AttackResult.load(tmp_path / "r")


def test_result_saved_before_checksums_still_loads_with_a_warning(tmp_path, two_results, caplog):
    r, _ = two_results
    r.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old.json").read_text())
    for k in ("tensors_sha256", "json_sha256", "format"):
        meta.pop(k)
    (tmp_path / "old.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="georobust.results"):
        back = AttackResult.load(tmp_path / "old")
    assert torch.equal(back.x_adv, r.x_adv)
    assert "without checksums" in caplog.text


def test_result_wrong_type_and_unwritable_location(tmp_path, two_results):
    r, _ = two_results
    r.save(tmp_path / "r")
    with pytest.raises(ResultFileError, match="holds a AttackResult, not a UniversalResult"):
        UniversalResult.load(tmp_path / "r")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        r.save(blocker / "r")


# ========================================================================================= training checkpoints
@pytest.fixture(scope="module")
def digits_train():
    x, y = data.load("digits", "train")
    return x[:256], y[:256]


def _model():
    return Classifier(build("mlp", (1, 8, 8), 10, seed=0))


_KW = dict(epochs=3, lr=3e-3, seed=5, batch_size=64)


def _state_file(d: Path) -> Path:
    return d / json.loads((d / "checkpoint.json").read_text())["file"]


@pytest.fixture
def one_epoch(tmp_path, digits_train):
    """A run killed after epoch 1 of 3: its checkpoint folder and history."""
    d = tmp_path / "ck"
    h = fit(_model(), digits_train, "standard", checkpoint_dir=d, stop_after_epoch=1, **_KW)
    return d, h


def test_checkpoint_layout_and_manifest(one_epoch):
    d, h = one_epoch
    assert sorted(q.name for q in d.iterdir()) == ["checkpoint-epoch0001.pt", "checkpoint.json", "log.jsonl"]
    man = json.loads((d / "checkpoint.json").read_text())
    assert man["epoch"] == 1 and man["sha256"] == _sha(d / "checkpoint-epoch0001.pt")
    assert man["bytes"] == (d / "checkpoint-epoch0001.pt").stat().st_size
    assert load_checkpoint(d)["epoch"] == 1


def _assert_clean_error(excinfo, name: str) -> None:
    msg = str(excinfo.value)
    assert name in msg
    assert "weights_only" not in msg and "weights_only=False" not in msg
    e = excinfo.value  # no chained zip/pickle error shown under it
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


@pytest.mark.parametrize("damage", ["truncate", "zero-40k", "delete-state", "delete-manifest", "torn",
                                    "bad-manifest"])
def test_corrupt_or_incomplete_checkpoint_is_a_clear_error(one_epoch, digits_train, tmp_path, damage):
    d, _ = one_epoch
    state = _state_file(d)
    before = _model()
    if damage == "truncate":
        _truncate(state)
        name, match = state.name, "corrupt"
    elif damage == "zero-40k":  # the issue's case: it used to resume silently into different weights
        _zero(state, 4096, 40 * 1024)
        name, match = state.name, "corrupt"
    elif damage == "delete-state":
        state.unlink()
        name, match = state.name, "missing"
    elif damage == "delete-manifest":
        (d / "checkpoint.json").unlink()
        name, match = state.name, "no manifest"
    elif damage == "torn":  # the manifest of this run beside the state file of another run's epoch 2
        other = tmp_path / "other"
        fit(_model(), digits_train, "standard", checkpoint_dir=other, stop_after_epoch=2, **_KW)
        shutil.copy(_state_file(other), state)
        name, match = state.name, "corrupt"
    else:
        _truncate(d / "checkpoint.json", 0.4)
        name, match = "checkpoint.json", "unreadable"
    model = _model()
    with pytest.raises(CheckpointError, match=match) as ei:
        fit(model, digits_train, "standard", checkpoint_dir=d, resume=True, **_KW)
    _assert_clean_error(ei, name)
    for a, b in zip(before.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)  # refused before any training


def test_checksum_ok_but_unreadable_state_never_suggests_weights_only_false(one_epoch, digits_train):
    """A file that matches its manifest but is not a weights-only checkpoint (here: a pickled object torch's
    weights-only loader rejects, whose own message suggests weights_only=False)."""
    d, _ = one_epoch
    state = _state_file(d)
    torch.save({"x": Path("a")}, state)  # a pathlib object: refused by weights_only=True
    man = json.loads((d / "checkpoint.json").read_text())
    man["sha256"] = _sha(state)
    (d / "checkpoint.json").write_text(json.dumps(man))
    with pytest.raises(Exception) as raw:
        torch.load(state, weights_only=True)
    assert "weights_only" in str(raw.value)  # what torch itself would have told the user
    with pytest.raises(CheckpointError, match="cannot be read") as ei:
        fit(_model(), digits_train, "standard", checkpoint_dir=d, resume=True, **_KW)
    _assert_clean_error(ei, state.name)


def test_rerun_without_resume_refuses_and_keeps_the_checkpoint(one_epoch, digits_train):
    d, _ = one_epoch
    before = {q.name: _sha(q) for q in d.iterdir()}
    with pytest.raises(OutputError, match="resume=True.*overwrite=True"):
        fit(_model(), digits_train, "standard", checkpoint_dir=d, **_KW)
    assert {q.name: _sha(q) for q in d.iterdir()} == before


def test_overwrite_replaces_checkpoint_and_log_not_mixed(one_epoch, digits_train):
    """The issue's case: a second run wrote epochs 1, 2, 1 into log.jsonl."""
    d, _ = one_epoch
    (d / "checkpoint.pt").write_bytes(b"an unverifiable checkpoint of an older georobust")
    h = fit(_model(), digits_train, "standard", checkpoint_dir=d, overwrite=True, stop_after_epoch=2, **_KW)
    log = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert log == json.loads(json.dumps(h.epochs))
    assert sorted(q.name for q in d.iterdir()) == ["checkpoint-epoch0002.pt", "checkpoint.json", "log.jsonl"]
    assert load_checkpoint(d)["epoch"] == 2


def test_legacy_checkpoint_without_manifest(tmp_path, digits_train):
    d = tmp_path / "old"
    d.mkdir()
    (d / "checkpoint.pt").write_bytes(b"PK\x03\x04 a checkpoint written before checksums")
    assert [q.name for q in checkpoint_files(d)] == ["checkpoint.pt"]
    with pytest.raises(CheckpointError, match="no manifest") as ei:
        fit(_model(), digits_train, "standard", checkpoint_dir=d, resume=True, **_KW)
    _assert_clean_error(ei, "checkpoint.pt")
    with pytest.raises(OutputError, match="overwrite=True"):
        fit(_model(), digits_train, "standard", checkpoint_dir=d, **_KW)


def test_log_line_written_after_the_checkpoint_is_not_duplicated(one_epoch, digits_train):
    """A kill after an epoch was logged but before its checkpoint committed: the resumed run redoes that epoch;
    log.jsonl must hold each epoch once."""
    d, _ = one_epoch
    with open(d / "log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "seconds": 0.0, "stale": True}) + "\n")
    h = fit(_model(), digits_train, "standard", checkpoint_dir=d, resume=True, **_KW)
    log = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3] and not any("stale" in e for e in log)
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3]
    assert [q.name for q in d.glob("*.pt")] == ["checkpoint-epoch0003.pt"]  # older state files removed


def test_train_seconds_accumulate_across_resume(one_epoch, digits_train):
    d, h1 = one_epoch
    # one run: train_seconds covers each epoch's training ("seconds") and its evaluation
    assert h1.train_seconds >= h1.epochs[0]["seconds"] > 0
    assert load_checkpoint(d)["train_seconds"] == h1.train_seconds
    assert json.loads((d / "checkpoint.json").read_text())["train_seconds"] == h1.train_seconds
    h2 = fit(_model(), digits_train, "standard", checkpoint_dir=d, resume=True, **_KW)
    # the resumed history counts epoch 1 (from the checkpoint) plus epochs 2 and 3
    assert h2.train_seconds >= h1.train_seconds + sum(e["seconds"] for e in h2.epochs[1:])
    assert h2.epochs[0] == h1.epochs[0]


def test_fit_argument_errors_before_any_work(tmp_path, digits_train):
    with pytest.raises(OptionError, match="checkpoint_dir"):
        fit(_model(), digits_train, "standard", resume=True, **_KW)
    with pytest.raises(OptionError, match="contradict"):
        fit(_model(), digits_train, "standard", checkpoint_dir=tmp_path, resume=True, overwrite=True, **_KW)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="a-file"):
        fit(_model(), digits_train, "standard", checkpoint_dir=blocker, **_KW)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(_model(), digits_train, "standard", checkpoint_dir=tmp_path / "empty", resume=True, **_KW)


# ======================================================================================= universal checkpoints
_UKW = dict(xi=0.2, norm="inf", delta=0.0, mode="batched", chunk=16, seed=1)


@pytest.fixture(scope="module")
def uap_x():
    return data.load("digits", "test")[0][:64]


@pytest.fixture
def uap_ck(tmp_path, mlp_digits, uap_x):
    ck = tmp_path / "uap"
    universal_perturbation(mlp_digits, uap_x, max_passes=1, checkpoint=ck, **_UKW)
    return ck


def test_universal_rerun_without_resume_refuses_overwrite_starts_over(uap_ck, mlp_digits, uap_x):
    j, t = uap_ck.with_suffix(".json"), uap_ck.with_suffix(".safetensors")
    before = (_sha(j), _sha(t))
    with pytest.raises(OutputError, match="resume=True.*overwrite=True"):
        universal_perturbation(mlp_digits, uap_x, max_passes=2, checkpoint=uap_ck, **_UKW)
    assert (_sha(j), _sha(t)) == before
    with pytest.raises(OptionError, match="contradict"):
        universal_perturbation(mlp_digits, uap_x, max_passes=2, checkpoint=uap_ck, resume=True, overwrite=True,
                               **_UKW)
    r = universal_perturbation(mlp_digits, uap_x, max_passes=2, checkpoint=uap_ck, overwrite=True, **_UKW)
    assert r.passes == 2 and UniversalResult.load(uap_ck).passes == 2


@pytest.mark.parametrize("damage", ["no-json", "no-tensors", "truncate-json", "truncate-tensors", "torn"])
def test_universal_corrupt_or_incomplete_checkpoint(uap_ck, mlp_digits, uap_x, tmp_path, damage):
    j, t = uap_ck.with_suffix(".json"), uap_ck.with_suffix(".safetensors")
    if damage == "no-json":
        j.unlink()
        name, match = j.name, "incomplete"
    elif damage == "no-tensors":  # used to restart silently from pass 1
        t.unlink()
        name, match = t.name, "incomplete"
    elif damage == "truncate-json":
        _truncate(j)
        name, match = j.name, "truncated or corrupt"
    elif damage == "truncate-tensors":
        _truncate(t)
        name, match = t.name, "does not belong"
    else:  # tensors of a 2-pass run beside the JSON of this 1-pass run
        other = tmp_path / "other"
        universal_perturbation(mlp_digits, uap_x, max_passes=2, checkpoint=other, **_UKW)
        shutil.copy(other.with_suffix(".safetensors"), t)
        name, match = t.name, "does not belong"
    with pytest.raises(CheckpointError, match=match) as ei:
        universal_perturbation(mlp_digits, uap_x, max_passes=3, checkpoint=uap_ck, resume=True, **_UKW)
    assert name in str(ei.value) and "overwrite=True" in str(ei.value)


def test_universal_resume_without_checkpoint_starts_from_pass_one(tmp_path, mlp_digits, uap_x):
    r = universal_perturbation(mlp_digits, uap_x, max_passes=2, checkpoint=tmp_path / "new", resume=True, **_UKW)
    assert r.passes == 2 and UniversalResult.load(tmp_path / "new").passes == 2
    assert "v_check" not in r.params  # the old sum check is replaced by the sha256 pair check


def test_universal_checkpoint_location_checked_before_work(tmp_path, mlp_digits, uap_x):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="universal checkpoint"):
        universal_perturbation(mlp_digits, uap_x, max_passes=1, checkpoint=blocker / "uap", **_UKW)


# ================================================================================================== weights
def test_weights_path_needs_the_safetensors_suffix(tmp_path):
    clf = _model().eval()
    with pytest.raises(OutputError, match=r"noext\.safetensors"):
        check_weights_path(tmp_path / "noext")
    with pytest.raises(OutputError, match=r"model\.safetensors"):
        save_weights(clf, tmp_path / "model.pt", arch="mlp", input_shape=(1, 8, 8), num_classes=10)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(OutputError, match="folder"):
        check_weights_path(tmp_path / "dir.safetensors")
    (tmp_path / "keep.safetensors").write_text("x")
    with pytest.raises(OutputError, match="exists"):
        check_weights_path(tmp_path / "keep.safetensors", overwrite=False)


def test_save_weights_atomic_with_sidecar_and_loads_back(tmp_path, monkeypatch):
    clf = _model().eval()
    p = save_weights(clf, tmp_path / "m.safetensors", arch="mlp", input_shape=(1, 8, 8), num_classes=10,
                     sidecar={"epochs": 3})
    assert json.loads((tmp_path / "m.json").read_text()) == {"epochs": 3}
    back = load_model(str(p))
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(back(x), clf(x))
    # a crash while writing never leaves half a file: the earlier weights stay intact, no temp file remains
    before = _sha(p)

    def boom(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "fsync", boom)
    with pytest.raises(OutputError, match="Input/output error"):
        save_weights(build_other(), p, arch="mlp", input_shape=(1, 8, 8), num_classes=10)
    assert _sha(p) == before and sorted(q.name for q in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def build_other():
    return Classifier(build("mlp", (1, 8, 8), 10, seed=1)).eval()


def test_cli_train_out_without_suffix_is_refused(tmp_path):
    """The issue's case: `train --out noext` wrote a file that `--model noext` refused."""
    p = run_cli("train", "--arch", "mlp", "--data", "digits", "--epochs", "1", "--limit", "64", "--out",
                tmp_path / "noext", check=False, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and ".safetensors" in p.stdout + p.stderr
    assert not (tmp_path / "noext").exists() and not (tmp_path / "noext.json").exists()


# ============================================================================================ evaluation.json
def test_save_evaluation_is_atomic(tmp_path, monkeypatch):
    from georobust.evaluation.suite import Evaluation, save_evaluation

    ev = Evaluation("m", "d", 4, "inf", [0.1], 1.0, robust={"pgd": [0.5]}, worst_case=[0.5])
    save_evaluation(ev, {}, tmp_path)
    first = (tmp_path / "evaluation.json").read_text()
    assert json.loads(first)["robust"] == {"pgd": [0.5]}
    assert (tmp_path / "robust_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # figures: atomic too
    ev.robust = {"pgd": [0.25]}
    monkeypatch.setattr(storage.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(OSError):
        save_evaluation(ev, {}, tmp_path)
    assert (tmp_path / "evaluation.json").read_text() == first
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # no temporary file left behind
