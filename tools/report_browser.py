"""Open a georobust HTML report in headless Chromium and read back what a person would see.

    python tools/report_browser.py RESULTS_DIR [RESULTS_DIR_B] [--compare] --screenshot docs/report.png

writes the report of RESULTS_DIR (``georobust report``) beside a screenshot of its first screen. The browser test
(``tests/test_report_browser.py``) calls :func:`inspect_report`, the same code path: the tables' cells with their
source (file, JSON path, exact value) and shown text, every image's natural size, every request the page made,
the console messages and page errors.

The browser is Debian's ``chromium`` (``apt-get install chromium``; ``make browser``) driven by Playwright's Python
package with ``executable_path`` (no browser download). The page is opened with every request that is not the
report file itself or a ``data:`` URI aborted and logged: a request in the log is a network access.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

#: where Debian installs Chromium (``$GEOROBUST_CHROMIUM`` overrides)
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium() -> str | None:
    """The Chromium executable, or ``None`` when it is not installed."""
    env = os.environ.get("GEOROBUST_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for p in CHROMIUM_PATHS:
        if Path(p).exists():
            return p
    return shutil.which("chromium")


def missing() -> str | None:
    """Why the browser check cannot run here (``None``: it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install -e '.[test]', or make install-test)"
    if chromium() is None:
        return ("Chromium is not installed: apt-get install chromium (Debian package 'chromium'; make browser "
                "installs it as root)")
    return None


_CELLS = """els => els.map(e => ({
  run: e.closest('[data-run]') ? e.closest('[data-run]').dataset.run : null,
  folder: e.closest('[data-folder]') ? e.closest('[data-folder]').dataset.folder : null,
  table: e.closest('table') ? e.closest('table').dataset.table : null,
  src: e.dataset.src || null, path: e.dataset.path || null, value: e.dataset.value || null,
  derived: e.dataset.derived === '1', text: e.textContent.trim(),
  visible: e.getBoundingClientRect().width > 0 && e.getBoundingClientRect().height > 0}))"""
_IMAGES = """els => els.map(e => ({complete: e.complete, width: e.naturalWidth, height: e.naturalHeight,
  scheme: e.src.split(':')[0], alt: e.alt}))"""
_ALARMS = """els => els.map(e => ({name: e.dataset.alarm, fired: e.dataset.fired === 'true',
  color: getComputedStyle(e).borderLeftColor, text: e.textContent.trim()}))"""


def inspect_report(path: str | Path, *, screenshot: str | Path | None = None, width: int = 1280,
                   height: int = 1000, full_page: bool = False) -> dict:
    """Open ``path`` in headless Chromium; return ``{"cells", "images", "alarms", "requests", "blocked",
    "console", "errors", "title", "text"}`` (module docstring), and write a screenshot when asked."""
    from playwright.sync_api import sync_playwright

    path = Path(path).resolve()
    url = path.as_uri()
    requests, blocked, console, errors = [], [], [], []
    with sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox refuses to run as root (containers, CI)
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console.append({"type": m.type, "text": m.text}))
            page.on("pageerror", lambda e: errors.append(str(e)))

            def route(r):
                u = r.request.url
                if u == url or u.startswith("data:"):
                    r.continue_()
                else:
                    blocked.append(u)
                    r.abort()

            page.route("**/*", route)
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            out = {
                "title": page.title(),
                "cells": page.eval_on_selector_all("td", _CELLS),
                "images": page.eval_on_selector_all("img", _IMAGES),
                "alarms": page.eval_on_selector_all("[data-alarm]", _ALARMS),
                "text": page.inner_text("body"),
            }
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=full_page)
        finally:
            browser.close()
    out.update(requests=requests, blocked=blocked, console=console, errors=errors)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results folder(s) of georobust commands")
    ap.add_argument("--compare", action="store_true", help="allow results of different models")
    ap.add_argument("-o", "--out", help="the report to write (default: RESULTS_DIR/report.html)")
    ap.add_argument("--screenshot", default="docs/report.png", help="where to write the screenshot")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1000)
    a = ap.parse_args(argv)
    why = missing()
    if why:
        print(f"cannot take the screenshot: {why}", file=sys.stderr)
        return 2
    from georobust.report import write_report

    out = Path(a.out) if a.out else Path(a.results[0]) / "report.html"
    write_report(a.results, out, compare=a.compare)
    got = inspect_report(out, screenshot=a.screenshot, width=a.width, height=a.height)
    print(f"wrote {out} and {a.screenshot}: {len(got['cells'])} cells, {len(got['images'])} images, "
          f"{len(got['blocked'])} blocked requests, {len(got['errors'])} page errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
