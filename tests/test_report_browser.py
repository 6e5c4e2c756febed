"""The HTML report in a real browser (issue 17, item 2): headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``) opens the file; the numbers of the tables read back from the DOM equal the
JSON, every image loads, nothing is fetched from the network, the console stays clean, a fired alarm is red; a
screenshot is taken. Skipped, naming the package, where Chromium or Playwright is not installed (``make browser``
installs Chromium as root)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_report import decimals_tolerance, lookup, make_results

sys.path.insert(0, str(ROOT / "tools"))
import report_browser as rb  # noqa: E402

from georobust.evaluation.cascade import CascadeResult  # noqa: E402
from georobust.report import write_report  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(rb.missing() is not None, reason=str(rb.missing()))]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    a = make_results(base / "a")
    b = base / "b"  # a second run of the same model: its cascade with no alarm fired
    shutil.copytree(a, b)
    casc = CascadeResult.load(b / "cascade_result")
    casc.alarms = [dict(x, fired=False) for x in casc.alarms]
    casc.robust[:] = False
    casc.save(b / "cascade_result")
    return a, b


def _check(got: dict, report: Path, n_runs: int) -> None:
    # the tables' numbers, read back from the DOM, equal the JSON they name
    with_path = [c for c in got["cells"] if c["path"]]
    assert len(with_path) >= 30 * n_runs
    for c in with_path:
        want = float(lookup(Path(c["folder"]), c["src"], c["path"]))
        assert float(c["value"]) == pytest.approx(want, rel=1e-12, abs=1e-300), c
        assert abs(float(c["text"]) - want) <= decimals_tolerance(c["text"]) * (1 + 1e-9), c
        assert c["visible"], c
    ev = json.loads((Path(with_path[0]["folder"]) / "evaluation.json").read_text())
    shown = {c["path"]: float(c["text"]) for c in with_path if c["src"] == "evaluation.json" and c["run"] == "0"}
    for a, accs in ev["robust"].items():
        for j, v in enumerate(accs):
            assert shown[f"robust.{a}.{j}"] == pytest.approx(v, abs=5e-4)
    # every image loads; nothing left the page; a clean console
    assert got["images"] and all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in got["images"])
    assert all(i["scheme"] == "data" for i in got["images"])
    assert got["requests"] == [report.resolve().as_uri()], got["requests"]  # the page itself, nothing else
    assert got["blocked"] == []
    assert got["errors"] == []
    assert [m for m in got["console"] if m["type"] in ("error", "warning")] == []


def test_report_in_chromium(folders, tmp_path):
    a, _ = folders
    report = write_report([a], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    got = rb.inspect_report(report, screenshot=shot)
    _check(got, report, 1)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    fired = [x for x in got["alarms"] if x["fired"]]
    assert [x["name"] for x in fired] == ["gradients"]
    assert fired[0]["color"] == "rgb(179, 38, 30)"  # red, the others green
    assert {x["color"] for x in got["alarms"] if not x["fired"]} == {"rgb(30, 107, 58)"}
    assert "What it checks" in fired[0]["text"] and "alarm fired" in got["text"]


def test_comparison_in_chromium(folders, tmp_path):
    a, b = folders
    report = write_report([a, b], tmp_path / "compare.html")
    got = rb.inspect_report(report, width=1600)
    _check(got, report, 2)
    assert {c["run"] for c in got["cells"] if c["path"]} == {"0", "1", None}  # None: the side-by-side table
    assert all(c["folder"] in (str(a), str(b)) for c in got["cells"] if c["path"])
    assert "Side by side" in got["text"]
