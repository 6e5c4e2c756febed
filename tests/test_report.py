"""The HTML report (issue 17, item 1): every number in its tables comes from the result files (change a result,
the report changes), the commands are recorded as typed, the file is self-contained (no script, no URL), a fired
alarm is shown red with its explanation, and bad input is refused with a clear error."""

from __future__ import annotations

import json
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import georobust as gr
from georobust import cli
from georobust.errors import InputError, OptionError
from georobust.evaluation import alarms as galarms
from georobust.evaluation.cascade import CascadeResult
from georobust.report import build, model_key, render, write_report
from georobust.report.build import FORMATS

EVAL_ARGS = ["evaluate", "--limit", "24", "--attacks", "fgsm,deepfool", "--eps", "0,0.05,0.1"]


def invoke(*args):
    """The real command, in-process (its output is in ``.output``)."""
    return CliRunner().invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


def make_results(folder: Path, *, model: str = "zoo:mlp-digits", fired: bool = True) -> Path:
    """A results folder as the commands write it: ``georobust evaluate`` (recorded in commands.json) and a
    cascade result carrying its alarms (one fired, for the red box), saved as ``evaluate --preset`` saves it."""
    res = invoke(*EVAL_ARGS, "--model", model, "--out", folder)
    assert res.exit_code == 0, res.output
    x, y = gr.data.load("digits", limit=8)
    robust = torch.tensor([True, False, True, True, False, False, True, True])
    alarm = [galarms.Alarm("randomized", False, "outputs differ by up to 0", 0.0, 1e-4).to_dict(),
             galarms.Alarm("gradients", fired, "vanished input gradients on 37.5% of the inputs", 0.375,
                           0.02).to_dict()]
    casc = CascadeResult(model=model, eps=0.1, norm="inf", attacks=["apgd-ce", "square"], x=x, y=y,
                         x_adv=(x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1), robust=robust,
                         broken_by=["", "apgd-ce", "", "", "square", "clean", "", ""], clean_accuracy=0.875,
                         per_attack=[{"attack": "apgd-ce", "ran_on": 7, "broke": 1, "robust_after": 0.75,
                                      "seconds": 0.25},
                                     {"attack": "square", "ran_on": 6, "broke": 1, "robust_after": 0.625,
                                      "seconds": 1.5}],
                         seed=0, seconds=1.9, alarms=alarm)
    casc.save(folder / "cascade_result")
    return folder


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("report") / "run")


class Cells(HTMLParser):
    """Every ``<td>`` of the page: its attributes and text, with the ``data-folder`` of its run."""

    def __init__(self):
        super().__init__()
        self.cells, self.imgs, self.scripts, self.links = [], [], 0, []
        self._td = None
        self._folder = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-folder" in a:
            self._folder = a["data-folder"]
        if tag == "td" or (self._td is None and "data-path" in a):  # a table cell, or a headline number
            self._td = {**a, "folder": self._folder, "text": "", "tag": tag}
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        for k in ("href", "src", "action", "data"):
            if k in a and k != "src":
                self.links.append(a[k])

    def handle_data(self, data):
        if self._td is not None:
            self._td["text"] += data

    def handle_endtag(self, tag):
        if self._td is not None and tag == self._td["tag"]:
            self._td["text"] = self._td["text"].strip()
            self.cells.append(self._td)
            self._td = None


def parse(page: str) -> Cells:
    p = Cells()
    p.feed(page)
    return p


def lookup(folder: Path, src: str, path: str):
    """The value at the dot-separated ``path`` of the JSON file ``folder/src``."""
    v = json.loads((folder / src).read_text())
    for k in path.split("."):
        v = v[int(k)] if isinstance(v, list) else v[k]
    return v


def decimals_tolerance(text: str) -> float:
    """Half a unit of the last printed digit (the rounding of the shown number)."""
    mant = text.split("e")[0]
    d = len(mant.split(".")[1]) if "." in mant else 0
    exp = int(text.split("e")[1]) if "e" in text else 0
    return 0.5 * 10.0 ** (exp - d)


def check_cells(cells: list[dict], default_folder: Path) -> int:
    """Each cell that names its source: its exact value is the file's, its text that value as printed."""
    checked = 0
    for c in cells:
        if not c.get("data-path"):
            continue
        folder = Path(c["folder"]) if c.get("folder") else default_folder
        want = lookup(folder, c["data-src"], c["data-path"])
        assert float(c["data-value"]) == pytest.approx(float(want), rel=1e-12, abs=1e-300), c
        assert abs(float(c["text"]) - float(want)) <= decimals_tolerance(c["text"]) * (1 + 1e-9), c
        checked += 1
    return checked


@pytest.mark.slow  # the first test: the module's results folder (a real evaluate run) is built for it
def test_every_table_number_comes_from_the_result_files(results):
    page = render(build([results]))
    p = parse(page)
    n = check_cells(p.cells, results)
    ev = json.loads((results / "evaluation.json").read_text())
    # every robust accuracy of the evaluation (2 attacks x 3 eps + worst case) and the cascade's per-attack rows
    paths = {c.get("data-path") for c in p.cells}
    for a, accs in ev["robust"].items():
        assert {f"robust.{a}.{j}" for j in range(len(accs))} <= paths
    assert {f"worst_case.{j}" for j in range(3)} <= paths
    assert {"fields.per_attack.0.robust_after", "fields.per_attack.1.seconds", "summary.robust_accuracy"} <= paths
    assert n >= 30
    # the numbers without a file path are derived from a named file, or are labels
    for c in p.cells:
        if c.get("data-value") is not None and not c.get("data-path"):
            assert c.get("data-derived") == "1" and c.get("data-src") or c.get("data-src") is None


def test_change_a_result_and_the_report_changes(results, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(results, d)
    ev = json.loads((d / "evaluation.json").read_text())
    before = parse(render(build([d])))
    old = next(c for c in before.cells if c.get("data-path") == "robust.fgsm.1")
    ev["robust"]["fgsm"][1] = 0.123456
    ev["details"]["fgsm"]["seconds"] = 98.7654
    (d / "evaluation.json").write_text(json.dumps(ev))
    casc = CascadeResult.load(d / "cascade_result")
    casc.robust = torch.zeros_like(casc.robust)
    casc.save(d / "cascade_result")
    after = parse(render(build([d])))
    new = {c.get("data-path"): c for c in after.cells if c.get("data-src") == "evaluation.json"}
    assert new["robust.fgsm.1"]["text"] == FORMATS["acc"].format(0.123456) != old["text"]
    assert new["details.fgsm.seconds"]["text"] == "98.77"
    rob = next(c for c in after.cells if c.get("data-path") == "summary.robust_accuracy")
    assert float(rob["data-value"]) == 0.0 and rob["text"] == "0.000"
    check_cells(after.cells, d)


def test_commands_are_recorded_as_typed_and_shown(results):
    runs = json.loads((results / "commands.json").read_text())["runs"]
    (run,) = runs
    words = shlex.split(run["command"])
    assert words[:2] == ["georobust", "evaluate"]
    for flag, val in (("--limit", "24"), ("--attacks", "fgsm,deepfool"), ("--eps", "0,0.05,0.1"),
                      ("--out", str(results))):
        assert words[words.index(flag) + 1] == val
    assert "--seed" not in words  # a default is not typed: it is in the options
    assert run["options"]["model"] == "zoo:mlp-digits" and run["options"]["seed"] == 0
    assert {"evaluation.json", "result_fgsm.json", "result_deepfool.safetensors"} <= set(run["files"])
    page = render(build([results]))
    assert re.search(r'<pre class="cmd"[^>]*><code>' + re.escape(run["command"].replace("'", "&#39;")) + "</code>",
                     page)
    # the recorded command runs again as written (same parser)
    assert invoke(*words[1:], "--help").exit_code == 0


def test_report_is_self_contained(results):
    page = render(build([results]))
    p = parse(page)
    assert p.scripts == 0
    assert p.imgs and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    assert not re.search(r"(?i)\b(?:https?|ftp|wss?)://", page)  # no URL anywhere, not even in a text
    assert not re.search(r'(?i)(?<![\w-])(?:src|href)\s*=\s*"(?!data:|#)', page)
    assert all(h.startswith("#") for h in p.links)
    assert "@import" not in page and "url(" not in page


def test_fired_alarm_is_red_with_its_explanation(results):
    page = render(build([results]))
    m = re.search(r'<div class="alarm fired" id="alarm-0-gradients"[^>]*data-fired="true">(.*?)</div>', page, re.S)
    assert m, "the fired gradients alarm is not shown as fired"
    assert "vanished input gradients on 37.5%" in m.group(1)
    first_words = " ".join(galarms.gradients.__doc__.split())[:60].replace("``", "")
    assert first_words in m.group(1)  # the explanation: what the check looks for (alarms.py)
    assert 'class="banner"' in page and 'href="#alarm-0-gradients"' in page
    assert re.search(r'<div class="alarm" id="alarm-0-randomized"[^>]*data-fired="false">', page)


def test_bad_input_is_refused(results, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no georobust results"):
        build([empty])
    with pytest.raises(InputError, match="does not exist"):
        build([tmp_path / "nowhere"])
    with pytest.raises(OptionError):
        build([])
    # a folder with the results of two models, and two folders of different models
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(results, mixed)
    other = json.loads((mixed / "evaluation.json").read_text())
    other["model"] = "zoo:lenet-fmnist"
    (mixed / "evaluation.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="different models.*--compare"):
        build([mixed])
    two = build([mixed], compare=True)
    assert sorted(r["model"] for r in two["runs"]) == ["zoo:lenet-fmnist", "zoo:mlp-digits"]
    b = tmp_path / "b"
    b.mkdir()
    (b / "evaluation.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="different models.*--compare"):
        build([results, b])
    view = build([results, b], compare=True)
    assert len(view["runs"]) == 2 and view["comparison"] is not None
    check_cells(parse(render(view)).cells, results)
    assert model_key("zoo:x") == model_key("weights/x.safetensors") == "x" and model_key(None) is None


@pytest.mark.slow  # the command in-process, several times
def test_cli_report_and_evaluate_report(results, tmp_path):
    out = tmp_path / "r.html"
    res = invoke("report", results, "-o", out)
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, msg in (([empty], "holds no georobust results"), ([results, results], "needs -o"),
                      ([results, "-o", tmp_path / "r.txt"], "HTML file")):
        res = invoke("report", *args)
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, res.output
    res = invoke(*EVAL_ARGS, "--report")
    assert res.exit_code == 2 and "--report writes OUT/report.html: give --out" in res.output
    # evaluate --report writes the report at the end of the run (and records its command first)
    d = tmp_path / "ev"
    res = invoke("evaluate", "--limit", "6", "--attacks", "fgsm", "--eps", "0,0.1", "--out", d, "--report")
    assert res.exit_code == 0, res.output
    page = (d / "report.html").read_text()
    assert "georobust evaluate --limit 6" in page.replace("&#39;", "'") or "--report" in page
    check_cells(parse(page).cells, d)


def test_write_report_file(results, tmp_path):
    p = write_report([results], tmp_path / "report.html")
    assert p == tmp_path / "report.html" and p.stat().st_size > 10_000
    assert not [q for q in tmp_path.iterdir() if q.name != "report.html"]  # written atomically, no temp file left
    with pytest.raises(gr.errors.OutputError, match="folder"):
        write_report([results], tmp_path)


def test_universal_analysis_and_training_records(tmp_path):
    """The other result kinds, written as their commands write them: a universal perturbation, an analysis
    (any other Saveable: its summary), a training record; every number again from the files."""
    from georobust.results import UniversalResult

    d = tmp_path / "other"
    d.mkdir()
    u = UniversalResult(v=torch.full((1, 8, 8), 0.1), norm="inf", xi=0.1, delta=0.2, num_classes=10)
    u.record_pass(fooling_train=0.25, fooling_eval=0.2, attempts=30, updates=12, seconds=1.25)
    u.record_pass(fooling_train=0.5, fooling_eval=0.375, attempts=28, updates=9, seconds=1.5)
    u.save(d / "universal")
    prof = gr.geometry.curvature_profile(gr.pretrained("mlp-digits"), gr.data.load("digits", limit=2)[0], k=2)
    prof.save(d / "curvature_profile")
    history = [{"epoch": 1, "loss": 1.5, "test_accuracy": 0.5}, {"epoch": 2, "loss": 0.75, "test_accuracy": 0.625}]
    (d / "m.json").write_text(json.dumps({"arch": "mlp", "data": "digits", "objective": "standard", "epochs": 2,
                                          "command": "georobust train --arch mlp --out m.safetensors",
                                          "test_accuracy": 0.625, "train_seconds": 3.5, "history": history}))
    page = render(build([d]))
    p = parse(page)
    assert check_cells(p.cells, d) >= 18
    paths = {c.get("data-path") for c in p.cells if c.get("data-src") == "universal.json"}
    assert {"fields.fooling_eval.1", "fields.updates.0", "fields.pass_seconds.1"} <= paths
    assert any(c.get("data-src") == "curvature_profile.json" and c.get("data-path", "").startswith("summary.")
               for c in p.cells)
    assert "georobust train --arch mlp --out m.safetensors" in page
    assert len(p.imgs) == 1  # the training curve (the others wrote no figure)


def test_text_from_the_files_is_escaped(results, tmp_path):
    """A result's text (a warning, a model name) is shown as text, never as markup."""
    import shutil

    d = tmp_path / "esc"
    shutil.copytree(results, d)
    ev = json.loads((d / "evaluation.json").read_text())
    ev["warnings"] = ['<img src="https://example.org/x.png"> & <script>alert(1)</script>']
    (d / "evaluation.json").write_text(json.dumps(ev))
    page = render(build([d]))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert parse(page).scripts == 0 and all(s.startswith("data:") for s in parse(page).imgs)


def test_segmentation_result_in_the_report(tmp_path):
    """A segmentation attack's result (task dense: label maps) gets its row and its scene/segmentation figure;
    its robust accuracy is read per scene (a scene whose clean map already meets the goal is not counted)."""
    import georobust as gr
    from georobust import data

    if not gr.models.manifest().get("unet-small-scenes"):
        pytest.skip("no shipped segmenter")
    seg = gr.pretrained("unet-small-scenes")
    x, y = data.load("scenes-seg", "test", n=2)
    r = gr.houdini(seg, x, y, eps=0.02, steps=2)
    ra = r.robust_accuracy([0.02], "inf")
    assert len(ra) == 1 and 0.0 <= ra[0] <= 1.0
    assert ra[0] == pytest.approx(float((~r.success).double().mean()), abs=1e-12)  # clean maps: goal unmet
    r.save(tmp_path / "result_houdini")
    page = render(build([tmp_path]))
    assert "houdini" in page and page.count("data:image/png;base64,") >= 1
