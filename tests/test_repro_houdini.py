"""repro/houdini.py in --quick mode: the table's numbers are those of the results it ran (recomputed here from
the stored predictions), the figures exist, and the attacks did what they must on the shipped segmenter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script

import georobust as gr
from georobust.evaluation.metrics import segmentation_metrics

WEIGHTS = Path(gr.__file__).parent / "models" / "weights" / "unet-small-scenes.safetensors"


@pytest.mark.slow
def test_houdini_repro_quick(tmp_path):
    if not WEIGHTS.exists():
        pytest.skip("the shipped segmenter is missing")
    res = load_script("repro/houdini.py").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert res["n"] == 4 and res["eps"] == [0.02, 0.05]
    x, y = gr.data.load("scenes-seg", "test", n=4)
    for (kind, label, eps), r in res["examples"].items():
        assert torch.equal(r.x, x) and float(r.linf.max()) <= eps + 1e-6
        vals = res[kind][label][res["eps"].index(eps)]
        want = segmentation_metrics(r.label_adv, y, 5, target=r.target)
        if r.target is not None:
            must = r.target != r.label_clean
            want["target_agreement_moved"] = float(((r.label_adv == r.target) & must).sum() / must.sum().clamp_min(1))
        assert vals == want
        assert torch.equal(r.label_adv, gr.checks.predict(_model(), r.x_adv))
    for label, vals in res["untargeted"].items():  # every attack lowers the clean mIoU
        assert all(v["miou"] < res["clean"]["miou"] for v in vals), label
    for label, vals in res["targeted"].items():  # and moves pixels onto the target
        assert all(v["target_agreement"] > res["clean"]["target_agreement"] and v["target_agreement_moved"] > 0
                   for v in vals), label
    assert all(Path(p).stat().st_size > 5000 for p in res["figures"])
    assert "houdini (0/1)" in res["text"] and "cross-entropy" in res["text"]


_MODEL = []


def _model():
    if not _MODEL:
        from georobust.models.io import load_weights

        _MODEL.append(load_weights(WEIGHTS))
    return _MODEL[0]
