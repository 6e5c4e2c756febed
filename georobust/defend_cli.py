"""The ``georobust defend`` commands and ``georobust evaluate --adaptive`` (issue 13): build and save a
detection or projection defence, and run the adaptive attacks on a defended model.

Composition (layer 6, like ``cli.py``). :func:`register_cli` is called by ``cli.py`` with the ``cli`` module
itself, so these commands share its options bundle (``shared``), its start-up (``_start``), its output checks
and its console without this module importing ``cli`` (no import cycle).

A saved defence is a folder with ``defence.json`` (:data:`FORMAT`): the base classifier's model spec, the
projection (a class of :data:`PROJECTIONS` and its options, or the ``defended.safetensors`` a generative
projection is saved in by :func:`georobust.defenses.projections.save_defended`), the detector (``detector.safetensors``
written by the detector's ``save``) and the reject rule. :func:`load_defence` rebuilds the
:class:`~georobust.defenses.Defended`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from .core.options import parse_assignments
from .errors import InputError, OptionError, WeightsError, unknown_name
from .storage import atomic_write_text

log = logging.getLogger(__name__)

#: the ``format`` field of ``defence.json``
FORMAT = "georobust-defence/1"

#: ``defend project --projection NAME``: the input transformations built without training (class in
#: ``georobust.defenses`` or ``georobust.defenses.projections``, default options) and the generative ones
#: trained on the loaded data (``magnet``: a denoising autoencoder, reformer + reconstruction detector;
#: ``defensegan``: a VAE and the projection onto its decoder's range)
PROJECTIONS = {"quantize": ("Quantize", {"levels": 8}), "jpeg": ("JPEGQuantize", {"quality": 75}),
               "noise": ("RandomNoise", {"sigma": 0.1})}
GENERATIVE = ("magnet", "defensegan")

#: ``defend detect --detector NAME`` -> class of ``georobust.defenses.detectors``; whether ``fit`` takes
#: adversarial examples (``adv``), labels (``labels``) or nothing
DETECTORS = {"subnetwork": ("DetectorSubnetwork", "adv"), "squeezing": ("FeatureSqueezing", "none"),
             "mahalanobis": ("Mahalanobis", "labels"), "lid": ("LID", "adv")}

#: ``evaluate --adaptive -o KEY=VALUE``: the options of :func:`georobust.defenses.adaptive.adaptive_evaluation`
ADAPTIVE_OPTIONS = {"steps": int, "restarts": int, "eot": int, "route": str, "penalty": float, "spsa": bool,
                    "spsa_steps": int, "spsa_samples": int, "spsa_lr": float, "batch_size": int}


def _projection_class(name: str):
    from . import defenses

    cls = getattr(defenses, name, None)
    if cls is None:
        from .defenses import projections
        cls = getattr(projections, name)
    return cls


def _options(items, what: str, allowed: dict[str, Any] | None = None) -> dict[str, Any]:
    opts = parse_assignments(items, what)
    if allowed is not None:
        for k, v in opts.items():
            if k not in allowed:
                raise unknown_name(what, k, allowed)
            want = allowed[k]
            if want is bool and not isinstance(v, bool):
                raise OptionError(f"{what} {k}={v!r}: give true or false")
            if want is int and (isinstance(v, bool) or not isinstance(v, int)):
                raise OptionError(f"{what} {k}={v!r}: give an integer")
            if want is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise OptionError(f"{what} {k}={v!r}: give a number")
            if want is float:
                opts[k] = float(v)
    return opts


def _json_default(v):
    if isinstance(v, (tuple, set)):
        return list(v)
    return str(v)


def load_defence(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the :class:`~georobust.defenses.Defended` saved by ``georobust defend`` in folder ``path`` (or its
    ``defence.json``), on ``device``."""
    from .defenses import Defended
    from .models import load_model

    p = Path(path)
    spec_path = p / "defence.json" if p.is_dir() else p
    if not spec_path.is_file():
        raise InputError(f"no defence at {path}: give the folder `georobust defend ... --out` wrote (it holds "
                         "defence.json)")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{spec_path} is not a readable defence.json ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise WeightsError(f"{spec_path} was not written by `georobust defend` (format {FORMAT!r} expected)")
    folder = spec_path.parent
    if spec.get("defended_file"):
        model = load_model(str(folder / spec["defended_file"]), device)
        if not isinstance(model, Defended):
            raise WeightsError(f"{folder / spec['defended_file']} does not hold a defended model")
        return model.eval()
    clf = load_model(spec["base"], device)
    proj = None
    if spec.get("projection"):
        cls = _projection_class(spec["projection"]["class"])
        proj = cls(**spec["projection"]["options"], bounds=clf.bounds)
    det = None
    if spec.get("detector"):
        from .defenses.detectors import load_detector
        det = load_detector(folder / spec["detector"]["file"], clf)
    return Defended(clf, proj, det, reject=spec.get("reject", "abstain")).to(device).eval()


def _write_spec(out: Path, spec: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "defence.json", json.dumps({"format": FORMAT, **spec}, indent=2,
                                                              default=_json_default))


def _accuracy(model, x, y) -> tuple[float, float]:
    """Clean accuracy of a defended model and the fraction of inputs it rejects."""
    pred = model.predict(x)
    rej = model.reject_class if model.rejects else None
    return float((pred == y).double().mean()), 0.0 if rej is None else float((pred == rej).double().mean())


def register_cli(app: typer.Typer, cli) -> None:
    """Add ``georobust defend detect|project`` to ``app``; ``cli`` is the ``georobust.cli`` module."""
    defend_app = typer.Typer(help="Build and save a detection or projection defence (issue 13); evaluate it with "
                             "`georobust evaluate --adaptive --defence DIR`.", no_args_is_help=True)
    app.add_typer(defend_app, name="defend")

    @defend_app.command("project")
    @cli.shared(split="train", limit=2000)
    def project(
        s,
        projection: str = typer.Option(..., "--projection", metavar="[" + "|".join([*PROJECTIONS, *GENERATIVE]) + "]",
                                       help="quantize (bit depth), jpeg, noise (randomized), magnet (denoising "
                                       "autoencoder: reformer + reconstruction detector), defensegan (VAE "
                                       "projection); the generative ones train on --split/--limit"),
        option: Optional[list[str]] = typer.Option(None, "--option", "-O", metavar="KEY=VALUE",
                                                   help="an option of the projection (quantize: levels=; jpeg: "
                                                   "quality=; noise: sigma=; magnet/defensegan: epochs=, ...)"),
        fpr: float = typer.Option(0.05, "--fpr", help="magnet: the reconstruction detector's false-positive rate"),
        out: Path = typer.Option(..., "--out", help="folder for defence.json (and the trained weights)"),
    ):
        """Build an input-transformation (projection) defence around --model and save it to --out."""
        if projection not in PROJECTIONS and projection not in GENERATIVE:
            raise unknown_name("projection", projection, [*PROJECTIONS, *GENERATIVE])
        opts = _options(option, "projection option (-O)")
        if not 0.0 < fpr < 1.0:
            raise OptionError(f"--fpr is a false-positive rate strictly between 0 and 1, got {fpr}")
        files = ("defence.json",) + (("defended.safetensors",) if projection in GENERATIVE else ())
        run = cli._start(s, check_outputs=lambda: cli._check_out_dir(out, files))
        from .defenses import Defended

        clf, x, y = run.clf, run.x, run.y
        if projection in PROJECTIONS:
            name, defaults = PROJECTIONS[projection]
            options = {**defaults, **opts}
            try:
                proj = _projection_class(name)(**options, bounds=clf.bounds)
            except TypeError as e:
                raise OptionError(f"--projection {projection}: {e}") from None
            model = Defended(clf, proj)
            spec = {"base": s.model, "projection": {"class": name, "options": options}, "detector": None,
                    "reject": "abstain"}
        else:
            model, spec = _generative(s, clf, x, projection, opts, fpr, out)
        acc, rej = _accuracy(model, x, y)
        spec.update(data=s.data, split=s.split, limit=s.limit, seed=s.seed)
        written = _write_spec(out, spec)
        cli.console.print(f"{projection} defence of {s.model}: clean accuracy {acc:.4f} on {s.data} ({s.split}, "
                          f"n={x.shape[0]}), rejected {rej:.4f}; wrote {written}")

    @defend_app.command("detect")
    @cli.shared(split="train", limit=2000)
    def detect(
        s,
        detector: str = typer.Option(..., "--detector", metavar="[" + "|".join(DETECTORS) + "]",
                                     help="subnetwork (Metzen), squeezing (feature squeezing, Xu), mahalanobis "
                                     "(Lee), lid (Ma)"),
        option: Optional[list[str]] = typer.Option(None, "--option", "-O", metavar="KEY=VALUE",
                                                   help="a constructor option of the detector (e.g. bits=1, k=20)"),
        fpr: float = typer.Option(0.05, "--fpr", help="false-positive rate of the threshold (held-out clean data)"),
        held_out: float = typer.Option(0.2, "--held-out", help="fraction of the loaded data kept out of fitting, "
                                       "for the threshold"),
        attack: str = typer.Option("pgd", "--attack", metavar="[pgd|deepfool]",
                                   help="adversarial examples the detector is fitted on (subnetwork, lid)"),
        eps: float = typer.Option(0.1, "--eps", help="L∞ radius of the PGD fitting examples"),
        steps: int = typer.Option(20, "--steps", help="PGD steps of the fitting examples"),
        out: Path = typer.Option(..., "--out", help="folder for defence.json and detector.safetensors"),
    ):
        """Fit a detector on --model's activations (--split/--limit: fitting part and held-out threshold part)
        and save the defended model (--model + detector, rejecting flagged inputs) to --out."""
        if detector not in DETECTORS:
            raise unknown_name("detector", detector, DETECTORS)
        if attack not in ("pgd", "deepfool"):
            raise unknown_name("attack", attack, ("pgd", "deepfool"))
        opts = _options(option, "detector option (-O)")
        if not 0.0 < fpr < 1.0:
            raise OptionError(f"--fpr is a false-positive rate strictly between 0 and 1, got {fpr}")
        if not 0.0 < held_out < 1.0:
            raise OptionError(f"--held-out is a fraction strictly between 0 and 1, got {held_out}")
        run = cli._start(s, check_outputs=lambda: cli._check_out_dir(out, ("defence.json", "detector.safetensors")))
        from .defenses import Defended
        from .defenses import detectors as dets

        clf, x, y = run.clf, run.x, run.y
        m = int(round(held_out * x.shape[0]))
        if m * fpr < 1 or x.shape[0] - m < 2:
            raise InputError(f"{x.shape[0]} inputs with --held-out {held_out} leave {m} for the threshold and "
                             f"{x.shape[0] - m} for fitting: the threshold needs at least {int(1 / fpr) + 1} held-out "
                             "inputs at this --fpr; raise --limit")
        xf, yf, xh = x[:-m], y[:-m], x[-m:]
        name, needs = DETECTORS[detector]
        try:
            det = getattr(dets, name)(clf, **opts)
        except TypeError as e:
            raise OptionError(f"--detector {detector}: {e}") from None
        if needs == "adv":
            xa = dets.make_adversarial(clf, xf, yf, attack, eps=eps, steps=steps, seed=s.seed)
            det.fit(xf, xa)
        elif needs == "labels":
            det.fit(xf, yf)
        else:
            det.fit()
        det.fit_threshold(xh, fpr=fpr)
        out.mkdir(parents=True, exist_ok=True)
        det.save(out / "detector.safetensors")
        model = Defended(clf, detector=det)
        acc, rej = _accuracy(model, xh, y[-m:])
        written = _write_spec(out, {"base": s.model, "projection": None,
                                    "detector": {"file": "detector.safetensors", "class": name, "options": opts,
                                                 "fpr": fpr, "threshold": det.threshold, "fit_attack": attack},
                                    "reject": "abstain", "data": s.data, "split": s.split, "limit": s.limit,
                                    "seed": s.seed})
        cli.console.print(f"{detector} detector on {s.model}: threshold {det.threshold:.6g} at FPR {fpr:g}; on the "
                          f"{m} held-out inputs clean accuracy {acc:.4f}, rejected {rej:.4f}; wrote {written}")


def _generative(s, clf, x, kind: str, opts: dict, fpr: float, out: Path):
    """Train MagNet's autoencoder or the VAE on ``x`` and save the defended model (``defended.safetensors``)."""
    from .defenses import Defended
    from .defenses import generative as gen
    from .defenses import projections as pj

    epochs = opts.pop("epochs", 5)
    n = x.shape[0]
    m = max(int(round(0.2 * n)), 1)
    if kind == "magnet":
        try:
            ae = gen.fit_autoencoder(x[:-m], epochs=epochs, seed=s.seed, **opts)
        except TypeError as e:
            raise OptionError(f"--projection magnet: {e}") from None
        det = pj.ReconstructionDetector(ae).fit_threshold(x[-m:], fpr=fpr)
        model = Defended(clf, pj.MagNetReformer(ae, clf.bounds), det)
    else:
        proj_opts = {k: opts.pop(k) for k in ("restarts", "steps", "lr") if k in opts}
        try:
            vae = gen.fit_vae(x, epochs=epochs, seed=s.seed, **opts)
        except TypeError as e:
            raise OptionError(f"--projection defensegan: {e}") from None
        model = Defended(clf, pj.GenerativeProjection.from_vae(vae, bounds=clf.bounds, **proj_opts))
    out.mkdir(parents=True, exist_ok=True)
    pj.save_defended(model, out / "defended.safetensors", base=s.model)
    return model, {"base": s.model, "defended_file": "defended.safetensors", "projection": {"class": kind},
                   "options": {"epochs": epochs, **opts}, "reject": model.reject}


def evaluate_adaptive(cli, s, *, defence: Path | None, attacks: str | None, eps: str | None, norm: str,
                      option, out: Path | None, preset: str | None, report: bool, resume: bool) -> None:
    """``georobust evaluate --adaptive``: :func:`georobust.defenses.adaptive.adaptive_evaluation` of the defended
    model (``--defence DIR`` from ``georobust defend``, or a ``--model`` that loads as a defended model, e.g.
    ``zoo:lenet-fmnist-magnet``; any other model is evaluated as a defence-free reference) at one ``--eps``."""
    for flag, given in (("--attacks", attacks), ("--preset", preset), ("--report", report), ("--resume", resume)):
        if given:
            raise OptionError(f"{flag} does not apply to --adaptive (it runs non-adaptive PGD, adaptive PGD and "
                              "SPSA); leave it out")
    eps_list = cli._floats(eps, "--eps") or [0.1 if norm == "inf" else 1.0]
    if len(eps_list) != 1:
        raise OptionError(f"--adaptive runs at one --eps, got {len(eps_list)} values")
    if eps_list[0] <= 0:
        raise OptionError(f"--eps must be positive, got {eps_list[0]}")
    opts = _options([o.split(".", 1)[1] if o.startswith("adaptive.") else o for o in (option or [])],
                    "adaptive option (-o)", ADAPTIVE_OPTIONS)
    run = cli._start(s, model=defence is None, check_outputs=lambda: cli._check_out_dir(
        out, ("adaptive.json", "adaptive_scores.png", "adaptive_projections.png")))
    from .defenses import Defended
    from .defenses.adaptive import adaptive_evaluation

    model = load_defence(defence, run.dev) if defence is not None else run.clf
    if defence is not None:
        run.check_fits(model.classifier)
    if not isinstance(model, Defended):
        model = Defended(model)
    ev = adaptive_evaluation(model, run.x, run.y, eps_list[0], norm=norm, seed=s.seed, **opts)
    name = str(defence) if defence is not None else s.model
    cli.console.print(f"{name} on {s.data} ({s.split}, n={ev.n}): clean accuracy {ev.clean_accuracy:.4f}, "
                      f"clean inputs rejected {ev.clean_rejected:.4f}; surrogate: route {ev.surrogate['route']}, "
                      f"EOT {ev.surrogate['eot']}, detector-aware {ev.surrogate['detector_aware']}")
    rows = [["attack", "robust accuracy", "adversarial rejected", "vanished gradients"]]
    for k, v in ev.robust.items():
        rows.append([k, f"{v:.4f}", f"{ev.detected[k]:.4f}",
                     f"{ev.masking[k]:.4f}" if k in ev.masking else "—"])
    rows.append(["worst case", f"{ev.robust_adaptive:.4f}", "", ""])
    cli._print_table(f"adaptive evaluation (L{'∞' if ev.norm == 'inf' else ev.norm}, ε = {ev.eps:g})", rows)
    cli._warn([ev.verdict] if ev.masked else [])
    cli.console.print(ev.verdict)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = atomic_write_text(out / "adaptive.json", json.dumps({"model": name, "data": s.data, "split": s.split,
                                                                    **ev.to_dict()}, indent=2,
                                                                   default=_json_default))
        cli.console.print(f"wrote {path}")
        for fig in _figures(model, ev, run.x, run.y, out, name):
            cli.console.print(f"wrote {fig}")


def _figures(model, ev, x, y, out: Path, name: str) -> list[Path]:
    """``adaptive_scores.png`` (a detector's scores: clean, non-adaptive PGD, adaptive PGD) and
    ``adaptive_projections.png`` (clean, projected, adaptive adversarial, its projection)."""
    from . import plots

    written = []
    correct = ev.results["adaptive-pgd"].label_clean == y
    if model.detector is not None:
        def scores(v):
            if v.shape[0] == 0:
                return []
            with torch.no_grad():
                return [float(s) for s in torch.cat([model.detector.score(v[i:i + 256])
                                                     for i in range(0, v.shape[0], 256)])]
        data = {"clean": scores(x), "adversarial": scores(ev.results["pgd"].x_adv[correct]),
                "adaptive": scores(ev.results["adaptive-pgd"].x_adv[correct]), "threshold": model.detector.threshold}
        written.append(plots.detector_scores({name: data}, out / "adaptive_scores.png"))
    if model.projection is not None and x.ndim == 4:
        k = min(4, x.shape[0])
        xa = ev.results["adaptive-pgd"].x_adv[:k]
        with torch.no_grad():
            rows = {name: {"clean": x[:k], "projected": model.projection(x[:k]), "adversarial": xa,
                           "adversarial projected": model.projection(xa)}}
        written.append(plots.projections(rows, out / "adaptive_projections.png"))
    return written
