"""The command line's structure (issue 11): one bundle of shared options on every command, every command through
the one start-up, dispatch on registry concepts (threat model, chunking), and ``georobust analyse NAME`` built
from ``registry.analyses``."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import run_cli
from typer.main import get_command
from typer.testing import CliRunner

import georobust as gr
from georobust import cli, registry
from georobust.results import AttackResult

#: the options every command that loads data and a model takes (the bundle ``cli.SHARED``)
SHARED = ("--model", "--data", "--split", "--limit", "--device", "--seed", "--verbose")
#: commands that leave some shared options out, and why: train builds its model (--arch / --init) and trains
#: on the train split; universal takes X from the train split and its held-out images from the test split;
#: the listings load nothing but log; report reads result folders (no data, no model)
LEAVES_OUT = {("train",): ("--model", "--split"), ("universal",): ("--split",),
              ("data", "list"): SHARED[:-1], ("zoo", "list"): SHARED[:-1], ("report",): SHARED[:-1]}


def leaves(cmd=None, path=()):
    """Every runnable command of ``georobust``, as (path, click command)."""
    cmd = cmd if cmd is not None else get_command(cli.app)
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from leaves(sub, (*path, name))
    else:
        yield path, cmd


LEAVES = list(leaves())


def help_text(*args) -> str:
    res = CliRunner().invoke(cli.app, [*args, "--help"], env={"COLUMNS": "250"}, terminal_width=250)
    assert res.exit_code == 0, res.output
    return res.output


def test_the_tree_has_every_command():
    names = {" ".join(p) for p, _ in LEAVES}
    want = {"train", "evaluate", "universal", "data list", "zoo list"}
    want |= {f"attack {n}" for n in registry.attacks.names() if registry.attacks.get(n).threat_model.per_sample}
    want |= {f"analyse {n}" for n in registry.analyses.names()}
    assert want <= names, want - names


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=lambda p: " ".join(p))
def test_every_help_lists_the_shared_options(path):
    text = help_text(*path)
    want = [o for o in SHARED if o not in LEAVES_OUT.get(path, ())]
    assert "--verbose" in want
    for opt in want:
        assert opt in text, f"georobust {' '.join(path)} --help does not list {opt}"


def test_the_shared_options_are_defined_once():
    """Each shared option is one entry of cli.SHARED, with one standard default; a command's own default is
    an override, and every command's option objects for it come from that one factory."""
    assert set(cli.SHARED) == set(cli.STANDARD)
    for path, cmd in LEAVES:
        opts = {o: p for p in cmd.params for o in p.opts}
        if "--data" in opts:
            assert opts["--data"].metavar == "[" + "|".join(cli.DATA_NAMES) + "]", path
        if "--seed" in opts:
            assert opts["--seed"].default == 0, path
    for bad in ({"omit": ("modle",)}, {"limit": 3, "omit": ("limit",)}):
        with pytest.raises(gr.errors.OptionError, match="shared"):
            cli.shared(**bad)


def test_one_option_parser():
    from georobust.core import options

    assert not hasattr(cli, "_parse_value") and not hasattr(cli, "_parse_options")
    assert cli.parse_assignments is options.parse_assignments
    entry = registry.attacks.get("deepfool")
    # attack options go through the registry entry: names checked, values converted to the option's type
    opts = cli.attack_options(entry, option=["overshoot=0.05", "max_iter=7", "norm=inf"])
    assert opts == {"overshoot": 0.05, "max_iter": 7, "norm": "inf"} and isinstance(opts["max_iter"], int)
    with pytest.raises(gr.errors.OptionError, match="Did you mean 'overshoot'"):
        cli.attack_options(entry, option=["overshot=0.05"])


class _Stop(gr.errors.GeorobustError):
    pass


@pytest.mark.parametrize("args", [
    ["train", "--arch", "mlp", "--out", "{tmp}/m.safetensors"], ["attack", "deepfool"], ["attack", "pgd", "--eps", "0.1"],
    ["evaluate"], ["universal", "--out", "{tmp}/u"], ["data", "list"], ["zoo", "list"],
    *[["analyse", n] for n in registry.analyses.names()],
], ids=lambda a: " ".join(a[:2]))
def test_every_command_goes_through_the_one_start(monkeypatch, tmp_path, args):
    """Replace the start-up by one that records its call and stops: every command reaches it, and nothing of
    the command's work runs before it (the command ends with the start-up's error, exit 2)."""
    seen = []

    def start(s, **kw):
        seen.append(s)
        raise _Stop("stopped at the start-up")

    monkeypatch.setattr(cli, "_start", start)
    res = CliRunner().invoke(cli.app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.exit_code == 2 and "stopped at the start-up" in res.output, res.output
    assert len(seen) == 1 and isinstance(seen[0], cli.Shared)


def test_chunking_dispatches_on_the_entry_not_the_name(mlp_digits, digits_test):
    x = digits_test[0][:10]

    def fn(model, x, y=None, *, batch_size: int = 4):
        raise AssertionError("not called")

    for chunking, want in (("position", [(0, 4), (4, 8), (8, 10)]), (None, None)):
        e = registry.Entry("not-an-attack-name", fn, threat="minimal-lp", chunking=chunking)
        got = cli._chunks(e, mlp_digits, x, None, {})
        assert (got if got is None else [(c.start, c.stop) for c in got]) == want
    assert not hasattr(cli, "_CHUNK_BY_POSITION") and not hasattr(cli, "_CHUNK_BY_REMAINING")
    assert not hasattr(cli, "_PAPERS")


def test_chunked_deepfool_equals_the_unchunked_run(tmp_path, mlp_digits, digits_test):
    n, bs = 120, 60
    p = run_cli("attack", "deepfool", "--limit", n, "-o", f"batch_size={bs}", "--out", tmp_path)
    assert f"deepfool: {bs}/{n} samples" in p.stderr  # two chunks, progress after the first
    chunked = AttackResult.load(tmp_path / "result_deepfool")
    entry = registry.attacks.get("deepfool")
    x = digits_test[0][:n]
    assert len(cli._chunks(entry, mlp_digits, x, None, {"batch_size": bs})) == 2
    whole = gr.deepfool(mlp_digits, x, batch_size=bs)  # one call
    assert torch.equal(chunked.success, whole.success) and torch.equal(chunked.label_adv, whole.label_adv)
    assert torch.allclose(chunked.norms("2"), whole.norms("2"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("args,msg", [
    (["attack", "deepfool", "-o", "overshot=0.1"], "Did you mean 'overshoot'"),
    (["analyse", "random-noise", "-o", "gird=3"], "Did you mean 'grid'"),
    (["analyse", "curvatur"], "Did you mean 'curvature'"),
])
def test_unknown_option_or_name_is_exit_2_with_a_suggestion(args, msg):
    p = run_cli(*args, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert msg in p.stderr.replace("\n", " ")


def test_attack_list_shows_each_threat_model():
    res = CliRunner().invoke(cli.app, ["attack", "--list"])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.output.splitlines() if " attack " in line)
    assert "threat model" in header and "kind" not in header
    for name in registry.attacks.names():
        e = registry.attacks.get(name)
        row = next(line for line in res.output.splitlines() if f" {name} " in line)
        assert e.threat in row, (name, row)


def test_analyse_help_lists_every_registered_analysis():
    text = help_text("analyse")
    group = get_command(cli.app).commands["analyse"]
    for name in registry.analyses.names():
        assert name in group.commands and f" {name} " in text, name


def test_generic_analysis_command(tmp_path):
    """An analysis without a command of its own: options from its signature (-o), its table, its result saved
    and the figure its entry names."""
    entry = registry.analyses.get("curvature-profile")
    assert "k" in entry.options() and "--option" in help_text("analyse", "curvature-profile")
    p = run_cli("analyse", "curvature-profile", "--limit", "4", "-o", "k=2", "--seed", "1", "--out", tmp_path)
    got = gr.geometry.curvature.CurvatureProfile.load(tmp_path / "curvature-profile")
    want = entry.fn(gr.pretrained("mlp-digits"), gr.data.load("digits", "test", limit=4)[0], k=2, seed=1)
    assert got.values.shape == (4, 4) and torch.allclose(got.values, want.values, rtol=1e-4, atol=1e-6)
    for row in cli.result_rows(want, "curvature-profile")[1:]:
        assert row[0] in p.stdout
    if entry.extra.get("plot"):  # the figure its entry names, drawn from result.plot_data
        png = entry.extra.get("plot_file") or "curvature-profile.png"
        assert (tmp_path / png).stat().st_size > 1000 and png in p.stdout


def test_result_rows_contract():
    class Table:
        def table(self):
            return [["a"], ["1"]]

    class Summary:
        def summary(self):
            return {"x": 0.5, "y": float("nan")}

    assert cli.result_rows(Table(), "t") == [["a"], ["1"]]
    assert cli.result_rows(Summary(), "s") == [["metric", "value"], ["x", "0.5"], ["y", "—"]]
    with pytest.raises(gr.errors.GeorobustError, match="neither table"):
        cli.result_rows(object(), "o")


def test_analysis_options_need_required_ones_and_take_the_seed():
    def fn(model, x, *, xi: float, seed: int = 0, steps: int = 3):
        """An analysis."""

    e = registry.Entry("toy", fn)
    with pytest.raises(gr.errors.OptionError, match="needs -o xi=VALUE"):
        cli.analysis_options(e, [], seed=4)
    assert cli.analysis_options(e, ["xi=0.5"], seed=4) == {"xi": 0.5, "seed": 4}
    assert cli.analysis_options(e, ["xi=0.5", "seed=9"], seed=4)["seed"] == 9
    assert inspect.signature(cli.analysis_options).parameters["seed"].kind is inspect.Parameter.KEYWORD_ONLY
