"""README is the front door: its Python example runs as written, and every `georobust ...` line in its
command-line section names a real command with real options."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import ROOT, needs_fmnist
from typer.main import get_command

from georobust.cli import app

README = (ROOT / "README.md").read_text()
#: the longer chapters README links to; their command lines are checked like README's
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@needs_fmnist
def test_python_example_runs(tmp_path, monkeypatch):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own README
    assert ns["res"].success_rate == 1.0 and (tmp_path / "results/deepfool.json").exists()
    assert ns["ev"].clean_accuracy > 0.85


def _cli_lines() -> list[list[str]]:
    text = "\n".join(b for t in (README, *DOCS.values()) for b in _blocks("bash", t)).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("georobust "):
            out.append(shlex.split(line)[1:])
    return out


@pytest.mark.parametrize("argv", _cli_lines(), ids=lambda a: " ".join(a[:2]))
def test_cli_lines_name_real_commands_and_options(argv):
    cmd = get_command(app)
    args = list(argv)
    while hasattr(cmd, "commands"):  # a group (typer vendors its own click)
        name = args.pop(0)
        assert name in cmd.commands, f"no command {name!r}"
        cmd = cmd.commands[name]
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for a in args:
        if a.startswith("-"):
            assert a in known, f"{' '.join(argv)}: unknown option {a}"


def _links(text: str) -> list[str]:
    return [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t and t[:1] != "#"]


@pytest.mark.parametrize("name", ["README.md", *(f"docs/{n}" for n in DOCS)])
def test_relative_links_point_to_files(name):
    page = ROOT / name
    missing = [t for t in _links(page.read_text()) if t and not (page.parent / t).exists()]
    assert not missing, f"{name} links to missing files: {missing}"
