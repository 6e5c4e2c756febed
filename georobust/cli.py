"""The ``georobust`` command: a thin layer over the library (typer + rich).

Every command validates its inputs through the library; a georobust error is shown as one line and the
command exits with status 2 (never a traceback).
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import data as gdata
from . import registry
from .errors import GeorobustError, OptionError

app = typer.Typer(help="georobust: attack, analyse and defend PyTorch classifiers — geometrically.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Data sets.", no_args_is_help=True)
zoo_app = typer.Typer(help="Architectures and shipped models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(zoo_app, name="zoo")
analyse_app = typer.Typer(help="Decision-boundary geometry: curvature, cross-sections, subspaces, normals.",
                          no_args_is_help=True)
app.add_typer(analyse_app, name="analyse")
# a wide table when piped (CI logs, files); the terminal's width otherwise
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except GeorobustError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=False)


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise OptionError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for, but no CUDA device is available here")
    return dev


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        low = v.lower()
        if low in ("none", "null"):
            return None
        if low in ("true", "false"):
            return low == "true"
        return v


def _parse_options(opts: list[str] | None) -> dict[str, Any]:
    out = {}
    for o in opts or []:
        if "=" not in o:
            raise OptionError(f"option {o!r} must look like key=value")
        k, v = o.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


def _floats(s: str | None) -> list[float] | None:
    if s is None:
        return None
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise OptionError(f"expected comma-separated numbers, got {s!r}") from None


def _load_data(name: str, split: str, limit: int | None, root: str | None):
    opts = {"root": root} if root else {}
    return gdata.load(name, split=split, limit=limit, **opts)


def _setup(seed: int, verbose: bool) -> None:
    torch.manual_seed(seed)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


def _start(model: str, device: str, seed: int, verbose: bool):
    """Seed, logging, device and the model, as every command that evaluates a model begins: ``(clf, device)``."""
    from .models import load_model

    _setup(seed, verbose)
    dev = _device(device)
    return load_model(model, dev), dev


def _classes(data: str) -> list[str] | None:
    """Class names of a named data set, for figure labels (``folder`` data has none)."""
    return gdata.info(data).classes if data != "folder" else None


def _print_table(title: str, rows: list[list[str]]) -> None:
    t = Table(title=title)
    for h in rows[0]:
        t.add_column(h)
    for r in rows[1:]:
        t.add_row(*r)
    console.print(t)


# ---------------------------------------------------------------------------------------------- data
@data_app.command("list")
@_handle_errors
def data_list():
    """Each data set, whether it is available here, and its shape."""
    rows = [["name", "available", "shape", "classes", "train/test", "description"]]
    for d in gdata.datasets():
        rows.append([d.name, "yes" if d.available else "no", "×".join(map(str, d.shape)) or "any",
                     str(d.num_classes or "any"), "/".join(str(d.sizes.get(s, "-")) for s in ("train", "test")),
                     d.description])
    _print_table("data sets", rows)
    if not gdata.info("fashion-mnist").available:
        console.print("fashion-mnist: apt-get install -y dataset-fashion-mnist, or set $GEOROBUST_DATA")


# ----------------------------------------------------------------------------------------------- zoo
@zoo_app.command("list")
@_handle_errors
def zoo_list():
    """Architectures that can be built by name, and the shipped pretrained models."""
    from .models import ARCHITECTURES, manifest

    console.print("architectures: " + ", ".join(ARCHITECTURES))
    rows = [["model", "arch", "data", "test accuracy", "robust accuracy (PGD L∞)", "seed", "command"]]
    for name, e in manifest().items():
        rob = e.get("robust_accuracy")
        rob_s = f"{rob['value']:.4f} at ε={rob['eps']:g} (n={rob['n']})" if rob else "—"
        rows.append([f"zoo:{name}", e["arch"], e["data"], f"{e['test_accuracy']:.4f}", rob_s, str(e["seed"]),
                     e["command"]])
    _print_table("shipped models", rows)


# --------------------------------------------------------------------------------------------- train
@app.command()
@_handle_errors
def train(
    arch: str = typer.Option(..., help="architecture name (georobust zoo list)"),
    data: str = typer.Option("digits", help="data set name"),
    out: Path = typer.Option(..., help="output .safetensors file (a .json with metadata goes beside it)"),
    epochs: int = typer.Option(10), seed: int = typer.Option(0), lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(128), optimizer: str = typer.Option("adam"),
    schedule: str = typer.Option("cosine"), weight_decay: float = typer.Option(0.0),
    objective: str = typer.Option("standard", help="training objective (registered name)"),
    objective_option: Optional[list[str]] = typer.Option(None, "--objective-option", "-O", help="key=value"),
    init: Optional[str] = typer.Option(None, help="start from this model (zoo:NAME or .safetensors): fine-tune"),
    limit: Optional[int] = typer.Option(None, help="use only the first N training samples"),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="checkpoint each epoch here"),
    resume: bool = typer.Option(False, help="resume from --checkpoint-dir"),
    robust_eps: Optional[float] = typer.Option(None, help="report PGD-10 L∞ robust accuracy at this eps per epoch"),
    device: str = typer.Option("cpu"), verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Train a zoo architecture on a data set; write safetensors weights and a metadata JSON."""
    from .defenses import fit
    from .models import Classifier, build, load_model, save_weights

    _setup(seed, verbose)
    dev = _device(device)
    x, y = _load_data(data, "train", limit, None)
    xt, yt = _load_data(data, "test", None, None)
    info = gdata.info(data)
    if init:
        model = load_model(init, dev)
        arch = model.metadata["arch"] if hasattr(model, "metadata") else arch
    else:
        model = Classifier(build(arch, tuple(x.shape[1:]), info.num_classes, seed=seed), name=out.stem).to(dev)
    opts = _parse_options(objective_option)
    steps = (x.shape[0] + batch_size - 1) // batch_size
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("epoch 1", total=steps, info="")

        def on_step(epoch, step, total, terms):
            prog.update(task, completed=step + 1, description=f"epoch {epoch + 1}/{epochs}",
                        info=" ".join(f"{k}={v:.3f}" for k, v in terms.items()))
        hist = fit(model, (x.to(dev), y.to(dev)), objective, epochs=epochs, optimizer=optimizer, lr=lr,
                   schedule=schedule, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                   checkpoint_dir=checkpoint_dir, resume=resume, eval_data=(xt.to(dev), yt.to(dev)),
                   robust_eps=robust_eps, objective_options=opts, on_step=on_step)
    seconds = time.perf_counter() - t0
    command = "georobust " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = {"arch": arch, "data": data, "seed": seed, "epochs": epochs, "objective": objective,
            "objective_options": opts, **({"init": init} if init else {}), "command": command,
            "test_accuracy": hist.last.get("test_accuracy"),
            "train_seconds": seconds, "history": hist.epochs, "torch": torch.__version__}
    model.name = out.stem
    save_weights(model, out, arch=arch, input_shape=tuple(x.shape[1:]), num_classes=info.num_classes,
                 extra={"data": data, "test_accuracy": json.dumps(meta["test_accuracy"])})
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    console.print(f"test accuracy {meta['test_accuracy']:.4f} after {epochs} epochs ({seconds:.1f}s); "
                  f"wrote {out} and {out.with_suffix('.json')}")


# -------------------------------------------------------------------------------------------- attack
@app.command()
@_handle_errors
def attack(
    name: str = typer.Argument(..., help="attack name: " + ", ".join(registry.attacks.names())),
    model: str = typer.Option("zoo:mlp-digits", help="zoo:NAME, a .safetensors/.pt file, or pkg.mod:factory"),
    data: str = typer.Option("digits"), split: str = typer.Option("test"),
    limit: Optional[int] = typer.Option(100, help="attack the first N samples"),
    root: Optional[str] = typer.Option(None, help="root folder for --data folder"),
    eps: Optional[float] = typer.Option(None, help="budget for bounded attacks (omit for minimal mode)"),
    norm: Optional[str] = typer.Option(None, help="2 or inf (default: the attack's first)"),
    target: Optional[int] = typer.Option(None, help="targeted attack towards this class"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="extra attack option key=value"),
    use_labels: bool = typer.Option(False, "--use-labels",
                                    help="attack the true labels (default: the model's predictions)"),
    out: Optional[Path] = typer.Option(None, help="write the result and a figure here"),
    device: str = typer.Option("cpu"), seed: int = typer.Option(0),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Run one attack; print success rate, norms and ρ; save the result and a figure."""
    from . import plots
    from .models import load_model

    _setup(seed, verbose)
    dev = _device(device)
    entry = registry.attacks.get(name)
    if entry.kind == "universal":
        raise OptionError(f"{name!r} computes one perturbation for a whole data set: run `georobust universal` "
                          "(checkpointed passes, fooling rates, figures)")
    opts = _parse_options(option)
    if eps is not None:
        opts["eps"] = eps
    if norm is not None:
        opts["norm"] = norm
    if target is not None:
        opts["target"] = target
    entry.check_options(opts)
    clf = load_model(model, dev)
    x, y = _load_data(data, split, limit, root)
    x, y = x.to(dev), y.to(dev)
    with console.status(f"{name} on {x.shape[0]} samples…"):
        res = entry.fn(clf, x, y if use_labels else None, **opts)
    s = res.summary()
    rows = [["metric", "value"]] + [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in s.items()]
    _print_table(f"{name} on {model} / {data} ({split})", rows)
    if out is not None:
        res.save(out / f"result_{name}")
        classes = _classes(data)
        plots.adversarial_examples(res, out / f"examples_{name}.png", classes=classes)
        console.print(f"wrote {out}/result_{name}.json/.safetensors and {out}/examples_{name}.png")


# ------------------------------------------------------------------------------------------ evaluate
@app.command()
@_handle_errors
def evaluate(
    model: str = typer.Option("zoo:mlp-digits", help="zoo:NAME, a .safetensors/.pt file, or pkg.mod:factory"),
    data: str = typer.Option("digits"), split: str = typer.Option("test"),
    limit: Optional[int] = typer.Option(500), root: Optional[str] = typer.Option(None),
    attacks: Optional[str] = typer.Option(None, help="comma-separated attack names (default: all suited)"),
    eps: Optional[str] = typer.Option(None, help="comma-separated eps values"),
    norm: str = typer.Option("inf"),
    out: Optional[Path] = typer.Option(None, help="write evaluation.json, results and figures here"),
    device: str = typer.Option("cpu"), seed: int = typer.Option(0),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Clean accuracy and robust accuracy versus ε under several attacks (a whole evaluation)."""
    from .evaluation import evaluate as run_eval
    from .evaluation import save_evaluation

    clf, dev = _start(model, device, seed, verbose)
    x, y = _load_data(data, split, limit, root)
    names = [a.strip() for a in attacks.split(",")] if attacks else None
    with _progress() as prog:
        task = prog.add_task("evaluating", total=None, info="")

        def on_attack(name, j, total):
            prog.update(task, description=name, completed=j, total=total, info="")
        ev, results = run_eval(clf, x.to(dev), y.to(dev), attacks=names, eps=_floats(eps), norm=norm,
                               model_name=model, data_name=data, on_attack=on_attack)
        prog.update(task, description="done", completed=1, total=1)
    console.print(f"{model} on {data} ({split}, n={ev.n}): clean accuracy {ev.clean_accuracy:.4f}")
    _print_table(f"robust accuracy (L{'∞' if ev.norm == 'inf' else ev.norm})", ev.table())
    if out is not None:
        classes = _classes(data)
        written = save_evaluation(ev, results, out, classes=classes)
        console.print("wrote " + ", ".join(str(p) for p in written))


# ------------------------------------------------------------------------------------------- analyse
_MODEL_HELP = "zoo:NAME, a .safetensors/.pt file, or pkg.mod:factory"


def _analysis_inputs(model: str, data: str, split: str, limit: Optional[int], device: str, seed: int,
                     verbose: bool):
    clf, dev = _start(model, device, seed, verbose)
    x, y = _load_data(data, split, limit, None)
    return clf, x.to(dev), y.to(dev)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@analyse_app.command("curvature")
@_handle_errors
def analyse_curvature(
    model: str = typer.Option("zoo:mlp-digits", help=_MODEL_HELP), data: str = typer.Option("digits"),
    split: str = typer.Option("test"), limit: Optional[int] = typer.Option(50),
    k: int = typer.Option(5, help="eigenvalues per end of the spectrum"),
    softplus_beta: Optional[float] = typer.Option(None, help="measure the boundary of a Softplus(β) copy"),
    out: Optional[Path] = typer.Option(None, help="write curvature.png and the results here"),
    device: str = typer.Option("cpu"), seed: int = typer.Option(0), verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Curvature profile of the loss and principal curvatures of the boundary at the DeepFool point."""
    from . import plots
    from .geometry.curvature import boundary_curvature, curvature_profile

    clf, x, _ = _analysis_inputs(model, data, split, limit, device, seed, verbose)
    with console.status("curvature…"):
        prof = curvature_profile(clf, x, k=k, seed=seed)
        bc = boundary_curvature(clf, x, k=k, seed=seed, softplus_beta=softplus_beta)
    rows = [["metric", "value"]] + [[f"loss Hessian: {a}", _fmt(b)] for a, b in prof.summary().items()]
    rows += [[f"boundary: {a}", _fmt(b)] for a, b in bc.summary().items()]
    _print_table(f"curvature of {model} on {data} ({split})", rows)
    if out is not None:
        prof.save(out / "curvature_profile")
        bc.save(out / "boundary_curvature")
        plots.loss_curvature_profiles({model: prof}, out / "curvature_profile.png")
        console.print(f"wrote {out}/curvature_profile.png and the results")


@analyse_app.command("cross-section")
@_handle_errors
def analyse_cross_section(
    model: str = typer.Option("zoo:mlp-digits", help=_MODEL_HELP), data: str = typer.Option("digits"),
    split: str = typer.Option("test"), limit: Optional[int] = typer.Option(6),
    second: str = typer.Option("random", help="random or curvature"),
    resolution: int = typer.Option(101), scale_normal: float = typer.Option(2.0, help="half-width along the normal, × ‖r*‖"),
    scale_second: float = typer.Option(2.0, help="half-width along the second direction, × ‖r*‖"),
    softplus_beta: Optional[float] = typer.Option(None, help="for --second curvature on a ReLU model"),
    out: Path = typer.Option(Path("."), help="write cross_sections.png here"),
    device: str = typer.Option("cpu"), seed: int = typer.Option(0), verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Normal cross-sections of the decision boundary (normal × random or × top-curvature direction)."""
    from . import plots
    from .geometry.cross_section import cross_section

    clf, x, _ = _analysis_inputs(model, data, split, limit, device, seed, verbose)
    with console.status("cross-sections…"):
        cs = cross_section(clf, x, second=second, resolution=resolution, scale=(scale_normal, scale_second),
                           seed=seed, softplus_beta=softplus_beta)
    rows = [["sample", "class", "‖r*‖", "classes in the section"]]
    for i in range(cs.labels.shape[0]):
        rows.append([str(i), str(int(cs.orig[i])), f"{float(cs.r_norm[i]):.4g}",
                     ",".join(str(c) for c in cs.labels[i].unique().tolist())])
    _print_table(f"normal × {cs.second_kind} cross-sections of {model}", rows)
    classes = _classes(data)
    path = plots.cross_sections(cs, out / "cross_sections.png", n=cs.labels.shape[0], classes=classes)
    console.print(f"wrote {path}")


@analyse_app.command("subspace")
@_handle_errors
def analyse_subspace(
    model: str = typer.Option("zoo:mlp-digits", help=_MODEL_HELP), data: str = typer.Option("digits"),
    split: str = typer.Option("test"), limit: Optional[int] = typer.Option(100),
    ratios: str = typer.Option("0.25,0.0625,0.0204,0.01", help="comma-separated m/d"),
    noise_directions: int = typer.Option(1, help="random directions per sample for random-noise robustness"),
    out: Optional[Path] = typer.Option(None, help="write subspace.png here"),
    device: str = typer.Option("cpu"), seed: int = typer.Option(0), verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """β = √(m/d)·‖r*_S‖/‖r*‖ in random subspaces, and robustness to random noise (m = 1)."""
    import math

    from . import plots
    from .geometry.subspace import noise_robustness, subspace_robustness

    clf, x, _ = _analysis_inputs(model, data, split, limit, device, seed, verbose)
    with console.status("subspace DeepFool…"):
        res = subspace_robustness(clf, x, ratios=tuple(_floats(ratios) or ()), seed=seed)
        nb = noise_robustness(clf, x, directions=noise_directions, seed=seed, bounded=True)
        nu = noise_robustness(clf, x, directions=noise_directions, seed=seed, bounded=False)
    _print_table(f"random-subspace robustness of {model} (d={res.d})", res.table())
    med = float(res.r_norm[res.converged_full].median())
    rows = [["random noise", "never crosses", "median ‖r_noise‖", "√d·median ‖r*‖"]]
    for name, r in (("inside the box", nb), ("unbounded", nu)):
        m = float(r.r_noise[r.crossed].median()) if bool(r.crossed.any()) else float("nan")
        rows.append([name, f"{r.never_crossed:.3f}", f"{m:.4g}", f"{math.sqrt(res.d) * med:.4g}"])
    _print_table("random noise (m = 1)", rows)
    if out is not None:
        console.print(f"wrote {plots.subspace_ratios({model: res}, out / 'subspace.png')}")


@analyse_app.command("normals")
@_handle_errors
def analyse_normals(
    model: str = typer.Option("zoo:mlp-digits", help=_MODEL_HELP), data: str = typer.Option("digits"),
    split: str = typer.Option("test"), limit: Optional[int] = typer.Option(200, help="points whose normals are used"),
    dims: str = typer.Option("1,5,10,25,50", help="comma-separated subspace dimensions m"),
    eps: Optional[float] = typer.Option(None, help="L2 norm of the random vectors (default 2 × median ‖r*‖)"),
    out: Optional[Path] = typer.Option(None, help="write normals.png here"),
    device: str = typer.Option("cpu"), seed: int = typer.Option(0), verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Singular values of boundary normals vs random vectors; flat-model fooling rates (evaluated on the other
    half of the samples)."""
    from . import plots
    from .geometry.normals import normal_spectrum

    clf, x, _ = _analysis_inputs(model, data, split, limit, device, seed, verbose)
    half = x.shape[0] // 2
    with console.status("boundary normals…"):
        ns = normal_spectrum(clf, x[:half], x_eval=x[half:], dims=[int(v) for v in _floats(dims) or ()], eps=eps,
                             seed=seed)
    s, sr = ns.singular_values, ns.random_singular_values
    rows = [["index", "σ normals / σ₁", "σ random / σ₁"]]
    for i in [0, 1, 4, 9, 24, 49]:
        if i < s.numel():
            rows.append([str(i + 1), f"{float(s[i] / s[0]):.3f}", f"{float(sr[i] / sr[0]):.3f}"])
    _print_table(f"singular values of {ns.n_normals} boundary normals of {model}", rows)
    rows = [["m", "fooling (span of top m)", "fooling (isotropic)"]]
    rows += [[str(m), f"{f:.3f}", f"{ns.fooling_isotropic:.3f}"] for m, f in zip(ns.dims, ns.fooling_subspace)]
    _print_table(f"flat model, ‖v‖₂ = {ns.eps:.4g}, {ns.n_eval} points", rows)
    if out is not None:
        console.print(f"wrote {plots.normal_spectrum({model: ns}, out / 'normals.png')}")


# ----------------------------------------------------------------------------------------- universal
@app.command()
@_handle_errors
def universal(
    model: str = typer.Option("zoo:mlp-digits", help=_MODEL_HELP), data: str = typer.Option("digits"),
    limit: Optional[int] = typer.Option(1000, help="training images X (the first N of the train split)"),
    eval_limit: Optional[int] = typer.Option(1000, help="held-out images (the first N of the test split)"),
    norm: str = typer.Option("inf", help="2 or inf"), xi: float = typer.Option(0.2, help="radius ξ of the ball"),
    delta: float = typer.Option(0.2, help="stop at fooling rate 1 − δ on X"),
    max_passes: int = typer.Option(10), mode: str = typer.Option("sequential", help="sequential or batched"),
    chunk: int = typer.Option(256, help="chunk size (batched mode: the DeepFool batch)"),
    clip: bool = typer.Option(True, help="clamp x + v into the model's bounds"),
    resume: bool = typer.Option(False, help="resume from OUT/universal.json if it exists"),
    out: Path = typer.Option(Path("universal_out"), help="write the result (checkpointed each pass) and figures"),
    device: str = typer.Option("cpu"), seed: int = typer.Option(0), verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """A universal adversarial perturbation (CVPR 2017), checkpointed after every pass; fooling rates per pass."""
    from . import plots
    from .attacks.universal import fooling, universal_perturbation

    clf, dev = _start(model, device, seed, verbose)
    x, _ = _load_data(data, "train", limit, None)
    xe, _ = _load_data(data, "test", eval_limit, None)
    x, xe = x.to(dev), xe.to(dev)
    with _progress() as prog:
        task = prog.add_task("pass 1", total=x.shape[0], info="")

        def on_progress(p, done, total, info):
            prog.update(task, description=f"pass {p + 1}/{max_passes}", completed=done, total=total,
                        info=f"steps {info['updates']}  ‖v‖ {info['norm']:.3g}")

        def on_pass(r):
            fe = r.fooling_eval[-1]
            prog.console.print(f"pass {r.passes}: fooling rate X {r.fooling_train[-1]:.3f}, held-out "
                               f"{'—' if fe is None else f'{fe:.3f}'}, {r.updates[-1]} steps, {r.pass_seconds[-1]:.1f}s")
            prog.reset(task, total=x.shape[0])

        res = universal_perturbation(clf, x, xi=xi, norm=norm, delta=delta, max_passes=max_passes, x_eval=xe,
                                     mode=mode, chunk=chunk, clip=clip, seed=seed, checkpoint=out / "universal",
                                     resume=resume, on_progress=on_progress, on_pass=on_pass)
    rows = [["metric", "value"]] + [[k, _fmt(v)] for k, v in res.summary().items()]
    _print_table(f"universal perturbation of {model} on {data}", rows)
    _, lc, la = fooling(clf, xe[:64], res.v, clip=clip)
    plots.universal_perturbation(res.v, out / "perturbation.png", title=f"{model}: L{norm} ξ={xi:g}")
    plots.universal_examples(xe[:64], res.v, lc, la, out / "examples.png", classes=_classes(data),
                             bounds=clf.bounds)
    console.print(f"wrote {out}/universal.json/.safetensors, {out}/perturbation.png, {out}/examples.png")


def main():  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
