"""repro/manifool_invariance.py in --quick mode: the invariance table is ManiFool's invariance score (recomputed
independently for one cell), the fine-tuning runs and reports accuracies, and the figure and table are written."""

import math

import pytest
from conftest import load_script, needs_fmnist

from georobust import data, pretrained
from georobust.attacks.manifool import invariance_score, manifool


@needs_fmnist
@pytest.mark.slow
def test_manifool_invariance_repro_quick(tmp_path):
    out = load_script("repro/manifool_invariance.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    table = out["table"]
    assert set(table) == {"mlp-digits", "lenet-fmnist"}
    for rows in table.values():
        assert set(rows) == {"translation", "rotation-translation"}
        for row in rows.values():
            assert 0.0 <= row["fooled"] <= 1.0
            assert row["fooled"] == 0.0 or (math.isfinite(row["score"]) and row["score"] > 0)
    # one cell recomputed outside the script: ManiFool is deterministic, so the score is the same number
    x, y = data.load("digits", "test", limit=4)
    r = manifool(pretrained("mlp-digits"), x, y, transform="translation", candidates=2)
    assert math.isclose(table["mlp-digits"]["translation"]["score"], invariance_score(r), rel_tol=1e-9)
    ft = out["finetune"]
    assert 0.0 <= ft["accuracy_before"] <= 1.0 and 0.0 <= ft["accuracy_after"] <= 1.0
    assert math.isclose(ft["accuracy_before"], 0.935, abs_tol=1e-9)   # lenet-fmnist on the first 200 test images
    assert set(ft["scores"]) == {"translation", "rotation-translation"}
    assert (tmp_path / "manifool_invariance.md").read_text().count("| lenet-fmnist |") == 1
    assert (tmp_path / "manifool_examples.png").stat().st_size > 10_000
