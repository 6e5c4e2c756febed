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


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


@needs_fmnist
def test_python_example_runs(tmp_path, monkeypatch):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own README
    assert ns["res"].success_rate == 1.0 and (tmp_path / "results/deepfool.json").exists()
    assert ns["ev"].clean_accuracy > 0.85


def _cli_lines() -> list[list[str]]:
    text = "\n".join(_blocks("bash")).replace("\\\n", " ")
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
