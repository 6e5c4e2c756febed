"""repro/obfuscated.py in --quick mode: the JSON has every field, its numbers are those of the models it ran
(recomputed here where cheap), the masking of the quantisers is reported, and --replot redraws from the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import fmnist_available, load_script

import georobust as gr
from georobust.defenses import Defended, Quantize
from georobust.defenses.adaptive import auc


@pytest.mark.slow
def test_obfuscated_quick(tmp_path):
    if not fmnist_available():
        pytest.skip("Fashion-MNIST not installed")
    mod = load_script("repro/obfuscated.py")
    res = mod.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "obfuscated.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    rows = {r["defence"]: r for r in saved["rows"]}
    kinds = {r["kind"] for r in rows.values()}
    assert {"none", "reference", "projection", "detector"} <= kinds
    assert sum(r["kind"] == "detector" for r in rows.values()) == 4
    assert any("MagNet" in k for k in rows) and any("Defense-GAN" in k for k in rows)
    for r in rows.values():
        assert set(mod.FIELDS) - {"tpr_pgd", "auc_pgd", "tpr_deepfool", "auc_deepfool"} <= set(r), r["defence"]
        robust = [v for v in (r["robust_nonadaptive"], r["robust_adaptive_pgd"], r["robust_spsa"]) if v is not None]
        assert r["robust_adaptive"] <= min(robust) <= r["clean_accuracy"] <= 1.0
        if r.get("scores"):  # the AUC is that of the saved score distributions
            assert r["auc_pgd"] == pytest.approx(auc(torch.tensor(r["scores"]["clean"]),
                                                     torch.tensor(r["scores"]["adversarial"])), abs=1e-5)
    # the quantiser masks every gradient: the non-adaptive number is flagged, and BPDA goes around it
    q = rows["bit depth (Quantize, 8 levels)"]
    assert q["masking_nonadaptive"] == 1.0 and q["masking_adaptive"] == 0.0 and q["surrogate"]["route"] == "bpda"
    assert q["robust_adaptive_pgd"] < q["robust_nonadaptive"] and q["verdict"].startswith("gradient masking")
    x, y = gr.data.load("fashion-mnist", "test", limit=saved["n"])
    pred = Defended(gr.pretrained("lenet-fmnist"), projection=Quantize(8)).predict(x)
    assert q["clean_accuracy"] == float((pred == y).double().mean())
    assert rows["undefended"]["masking_nonadaptive"] == 0.0
    assert len(res["figures"]) == 2 and all(Path(f).stat().st_size > 5000 for f in res["figures"])
    md = (tmp_path / "obfuscated.md").read_text()
    assert "PixelDefend" in md and "47%" in md and "bit depth" in md
    (tmp_path / "obfuscated.md").unlink()
    again = mod.main(["--replot", "--out", str(tmp_path)])
    assert (tmp_path / "obfuscated.md").read_text() == md and len(again["figures"]) == 2
