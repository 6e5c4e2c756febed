"""Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi & Frossard, "Universal adversarial
perturbations", CVPR 2017, Algorithm 1), their transfer across models, and the random-noise baseline.

One image-agnostic vector ``v`` with ``‖v‖_p ≤ ξ`` that changes the prediction of most inputs::

    v ← 0
    repeat (passes over the training set X, shuffled with a seeded generator)
        for x_i in X:
            if k̂(x_i + v) = k̂(x_i):
                Δv_i ← DeepFool at x_i + v (minimal L2 step leaving k̂(x_i); inner max_iter 10, overshoot 0.02)
                if DeepFool converged:  v ← P_{p,ξ}(v + Δv_i)
    until fooling rate on X ≥ 1 − δ   or   max_passes passes

``P_{p,ξ}`` projects onto the L_p ball of radius ξ (p = 2: rescale to ξ when longer; p = ∞: clip each
coordinate to ``[−ξ, ξ]``). The inner DeepFool step is the *L2* one whatever ``p`` is (``step_norm="2"``), as
in the authors' reference code and in ART: the L∞-minimal step ``dist·sign(w)`` moves every pixel, so a few
samples' steps saturate the whole L∞ ball and each new one overwrites the last (``step_norm="inf"`` offers it;
on ``lenet-fmnist`` at ξ = 0.1 it fools ~5% of the held-out images where L2 steps fool far more). Fooling is measured against the clean *prediction* ``k̂(x)``, never the labels.
With ``clip=True`` (default) the perturbed inputs ``x + v`` are clamped into the model's input bounds wherever
the model sees them (the check, DeepFool's start point and iterates, the fooling rates); ``v`` itself is not
clamped. ``clip=False`` is the paper's unconstrained setting.

Two modes, both batched where it does not change the answer:

* ``mode="sequential"`` (default) computes exactly Algorithm 1: each accepted update changes ``v`` before the
  next sample is looked at. The "is x_i still unfooled" tests for the rest of a chunk are one batched forward
  pass (recomputed only after ``v`` has changed), and DeepFool runs on the single next unfooled sample. The
  result equals a one-sample-at-a-time loop (ART's ``UniversalPerturbation``) for the same order.
* ``mode="batched"`` is a documented variant: for each chunk of ``chunk`` samples, DeepFool runs at ``x_i + v``
  for all unfooled samples of the chunk at once with the ``v`` of the chunk's start, and their steps are then
  applied in order, ``v ← P(v + Δv_i)`` for each converged ``i``. The steps after the first are computed at a
  slightly stale ``v``, so the iterates differ from Algorithm 1 (``chunk=1`` is Algorithm 1 again); it is many
  times faster, and ``repro/results/universal.md`` shows both modes' fooling rates side by side.

Each pass records the fooling rate on X and on a held-out set, the accepted updates and the time; with
``checkpoint=`` the :class:`~georobust.results.UniversalResult` is saved after every pass, and ``resume=True``
continues from it: the permutation of pass ``p`` is the ``p``-th draw of a generator seeded with ``seed``, so
an interrupted and resumed run gives the same ``v`` as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import registry
from ..checks import check_candidates, check_norm, check_positive, predict, prepare
from ..core.ops import flat_norm, project, steepest_direction
from ..errors import CheckpointError, InputError, OptionError, OutputError, ResultFileError
from ..evaluation.metrics import fooling_rate, perturbed_labels
from ..results import Saveable, UniversalResult, result_paths
from ..storage import ensure_writable
from .deepfool import deepfool_batch

log = logging.getLogger(__name__)

MODES = ("sequential", "batched")

#: parameters that must agree between a checkpoint and the run that resumes it
_RESUME_KEYS = ("norm", "step_norm", "xi", "delta", "mode", "chunk", "seed", "overshoot", "max_iter", "candidates", "clip",
                "n_train", "x_sum")

Progress = Callable[[int, int, int, dict], None]  # (pass, done, total, info)


def project_ball(v: torch.Tensor, xi: float, norm: str) -> torch.Tensor:
    """``P_{p,ξ}(v)``: the projection of one perturbation onto the L_p ball of radius ``ξ``.

    p = 2 rescales ``v`` to norm ``ξ`` when it is longer (and leaves it alone otherwise); p = ∞ clips every
    coordinate into ``[−ξ, ξ]``. Both are the exact Euclidean projections onto their balls (PGD's
    :func:`~georobust.core.ops.project`, for a single vector).
    """
    return project(v[None], xi, norm)[0]


def _perturb(x: torch.Tensor, v: torch.Tensor, bounds, clip: bool) -> torch.Tensor:
    xa = x + v
    return xa.clamp(*bounds) if clip else xa


def random_like(v: torch.Tensor, norm: str, size: float, *, n: int | None = None,
                generator: torch.Generator) -> torch.Tensor:
    """Random perturbation(s) of the shape of ``v`` with norm ``size``: a Gaussian direction rescaled to L2 norm
    ``size`` (p = 2), or random signs times ``size`` (p = ∞: the same L∞ and L2 norms as a saturated UAP).
    ``n`` draws ``(n, *v.shape)``; otherwise one."""
    shape = (1 if n is None else n, *v.shape)
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(v.device, v.dtype)
    r = steepest_direction(z, norm) * size  # sign(z) for L∞, z/‖z‖₂ for L2
    return r[0] if n is None else r


def _permutation(n: int, seed: int, pass_idx: int) -> torch.Tensor:
    """The order of pass ``pass_idx``: the ``pass_idx``-th permutation drawn from a generator seeded ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(pass_idx):
        torch.randperm(n, generator=g)
    return torch.randperm(n, generator=g)


def _chunk_sequential(clf, xc, pc, v, *, xi, norm, clip, df, window: int = 16):
    """Algorithm 1 on one chunk, exactly; returns ``(v, attempts, updates)``. The "still unfooled?" tests run
    batched on the next ``window`` samples, and are redone only after ``v`` has changed."""
    b = xc.shape[0]
    attempts = updates = 0
    start = 0
    lab = None  # predictions of xc[start:start + len(lab)] + v, valid while v is unchanged
    while start < b:
        if lab is None or lab.numel() == 0:
            lab = predict(clf, _perturb(xc[start : start + window], v, clf.bounds, clip))
        unf = (lab == pc[start : start + lab.numel()]).nonzero()
        if unf.numel() == 0:
            start += lab.numel()
            lab = None
            continue
        j = int(unf[0, 0])
        i = start + j
        xa = _perturb(xc[i : i + 1], v, clf.bounds, clip)
        out = deepfool_batch(clf, xa, classes=None, **df)
        attempts += 1
        start = i + 1
        if bool(out.converged[0]):
            v = project_ball(v + (out.x_adv[0] - xa[0]), xi, norm)
            updates += 1
            lab = None
        else:
            lab = lab[j + 1 :]
    return v, attempts, updates


def _chunk_batched(clf, xc, pc, v, *, xi, norm, clip, df):
    """The batched variant on one chunk: DeepFool for all unfooled samples at the chunk's ``v``, steps applied
    in order with a projection after each; returns ``(v, attempts, updates)``."""
    xa = _perturb(xc, v, clf.bounds, clip)
    with torch.inference_mode():
        logits = clf(xa)
    active = logits.argmax(1) == pc
    n_act = int(active.sum())
    if n_act == 0:
        return v, 0, 0
    out = deepfool_batch(clf, xa, active=active, **df)
    acc = (out.converged & active).nonzero().squeeze(1)
    dv = out.x_adv[acc] - xa[acc]
    for i in range(dv.shape[0]):
        v = project_ball(v + dv[i], xi, norm)
    return v, n_act, int(acc.numel())


def _save_checkpoint(res: UniversalResult, path) -> None:
    """Save ``res`` to ``path`` (``.json`` + ``.safetensors``). :meth:`UniversalResult.save` writes each file
    atomically, the tensors first, and the JSON last with the sha256 of the tensors and of itself, so a damaged
    file or a pair torn by a kill between the two renames is refused on resume (:func:`_load_checkpoint`)."""
    res.save(path)


def _load_checkpoint(path) -> UniversalResult | None:
    """The checkpoint at ``path``, verified; ``None`` when neither of its files exists.

    Raises :class:`~georobust.errors.CheckpointError` naming the file when one of the two files is missing,
    either is truncated or damaged, or they do not belong together — never restarting silently."""
    jpath, tpath = result_paths(path)
    present = [q for q in (jpath, tpath) if q.exists()]
    if not present:
        return None
    fix = ("; restore it, or pass overwrite=True (CLI: --overwrite) to discard it and start from pass 1")
    if len(present) == 1:
        missing = tpath if present[0] == jpath else jpath
        raise CheckpointError(f"universal checkpoint {path} is incomplete: {present[0]} exists but "
                              f"{missing} does not, so it cannot be resumed{fix}")
    try:
        res = UniversalResult.load(path)
    except ResultFileError as e:
        raise CheckpointError(f"cannot resume from universal checkpoint {jpath}: {e}{fix}") from None
    legacy = res.params.pop("v_check", None)  # saved before the sha256 pair check: its old sum check
    if legacy is not None and legacy != round(float(res.v.double().abs().sum()), 6):
        raise CheckpointError(f"universal checkpoint {jpath} and {tpath} do not belong together (interrupted "
                              f"while saving?){fix}")
    return res


@registry.attacks.register("universal", threat="universal", norms=("2", "inf"))
def universal_perturbation(model, x, y=None, *, xi: float = 0.2, norm="inf", delta: float = 0.2,
                           max_passes: int = 10, x_eval=None, mode: str = "sequential", chunk: int = 256,
                           step_norm="2", overshoot: float = 0.02, max_iter: int = 10, candidates: int = 10,
                           clip: bool = True,
                           seed: int = 0, checkpoint: str | Path | None = None, resume: bool = False,
                           overwrite: bool = False, on_progress: Progress | None = None,
                           on_pass: Callable[[UniversalResult], None] | None = None) -> UniversalResult:
    """A universal adversarial perturbation (Moosavi-Dezfooli et al., CVPR 2017, Algorithm 1).

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier`, in eval mode.
        x: the training set X the perturbation is computed on (shuffled each pass with ``seed``).
        y: ignored except for validation — fooling is measured against the model's clean predictions.
        xi: ``ξ``, the radius of the L_p ball (paper: 10 in L∞ on the 0–255 scale, i.e. 0.04 on [0, 1];
            2000 in L2 on ImageNet).
        norm: ``2`` or ``"inf"``.
        delta: stop once the fooling rate on X reaches ``1 − δ`` (paper: 0.2).
        max_passes: at most this many passes over X.
        x_eval: held-out inputs; their fooling rate is recorded after every pass (and is the headline figure).
        mode: ``"sequential"`` (exactly Algorithm 1) or ``"batched"`` (the faster variant; see the module
            docstring).
        chunk: samples per chunk: the batch of the "still unfooled?" tests (sequential) or of the batched
            DeepFool call (batched — larger chunks make the steps staler).
        step_norm: the norm of the inner DeepFool step (default 2, the reference code's, whatever ``norm`` is).
        overshoot, max_iter, candidates: the inner DeepFool's (paper: 0.02, 10, 10); a step is accepted only when
            DeepFool converged.
        clip: clamp ``x + v`` into the model's bounds wherever the model sees it (default).
        seed: seeds the order of every pass.
        checkpoint: save the result after every pass to this path (``.json`` + ``.safetensors``, each written
            atomically, the JSON last with the sha256 of both; verified on resume). Its folder is checked to be
            writable before any work. An existing checkpoint there is never replaced silently: pass ``resume``
            or ``overwrite``.
        resume: continue from ``checkpoint`` (its parameters and X must match). Starts from pass 1 when neither
            file exists; a checkpoint with one file missing, a damaged file, or a torn pair is a
            :class:`~georobust.errors.CheckpointError`.
        overwrite: discard an existing ``checkpoint`` and start from pass 1 (without ``resume`` or
            ``overwrite`` an existing checkpoint is an :class:`~georobust.errors.OutputError`).
        on_progress: ``on_progress(pass, done, total, info)`` after every chunk.
        on_pass: called with the result after every pass.

    Returns:
        A :class:`~georobust.results.UniversalResult`.
    """
    norm = check_norm(norm)
    step_norm = check_norm(step_norm)
    check_positive(xi, "xi")
    check_positive(delta, "delta", allow_zero=True)
    if delta > 1:
        raise OptionError(f"delta must lie in [0, 1] (the target fooling rate is 1 − δ), got {delta}")
    check_positive(max_passes, "max_passes", integer=True)
    check_positive(chunk, "chunk", integer=True)
    check_positive(overshoot, "overshoot", allow_zero=True)
    check_positive(max_iter, "max_iter", integer=True)
    check_candidates(candidates)
    check_positive(seed, "seed", integer=True, allow_zero=True)
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(clip, bool):
        raise OptionError(f"clip must be True or False, got {clip!r}")
    if resume and checkpoint is None:
        raise OptionError("resume=True needs checkpoint= (the file to resume from)")
    if resume and overwrite:
        raise OptionError("resume=True and overwrite=True contradict each other: resume continues the checkpoint, "
                          "overwrite discards it; pass one of them")
    saved: UniversalResult | None = None
    if checkpoint is not None:
        jck, tck = result_paths(checkpoint)
        ensure_writable(jck, what="universal checkpoint")
        ensure_writable(tck, what="universal checkpoint")
        if resume:
            saved = _load_checkpoint(checkpoint)  # verified before any work
        elif (jck.exists() or tck.exists()) and not overwrite:
            raise OutputError(f"a universal checkpoint exists at {jck if jck.exists() else tck}: pass resume=True "
                              "(CLI: --resume) to continue it or overwrite=True (CLI: --overwrite) to start over")
    p = prepare(model, x, y)
    clf, x, k, pred = p.clf, p.x, p.num_classes, p.pred
    if x_eval is not None:
        if not isinstance(x_eval, torch.Tensor) or x_eval.shape[1:] != x.shape[1:]:
            got = tuple(x_eval.shape) if isinstance(x_eval, torch.Tensor) else type(x_eval).__name__
            raise InputError(f"x_eval must be a tensor of inputs shaped like x (…, {tuple(x.shape[1:])}), got {got}")
        pe = prepare(clf, x_eval)
        x_eval, pred_eval = pe.x, pe.pred
    n = x.shape[0]
    params = {"norm": norm, "step_norm": step_norm, "xi": float(xi), "delta": float(delta), "mode": mode, "chunk": int(chunk),
              "seed": int(seed), "overshoot": float(overshoot), "max_iter": int(max_iter),
              "candidates": int(min(candidates, k)), "clip": clip, "max_passes": int(max_passes), "n_train": n,
              "n_eval": 0 if x_eval is None else int(x_eval.shape[0]), "x_sum": round(float(x.double().sum()), 3),
              "model": getattr(clf, "name", type(clf).__name__)}
    df = {"norm": step_norm, "overshoot": float(overshoot), "max_iter": int(max_iter), "candidates": int(candidates),
          "clip": clip}
    res = UniversalResult(v=torch.zeros_like(x[0]), norm=norm, xi=float(xi), delta=float(delta), params=params,
                          num_classes=k)
    if saved is not None:
        res = saved
        diff = {key: (res.params.get(key), params[key]) for key in _RESUME_KEYS if res.params.get(key) != params[key]}
        if diff:
            raise OptionError(f"checkpoint {checkpoint} was made with other parameters or data: {diff}; "
                              "use the same settings, or pass overwrite=True (CLI: --overwrite) to start over")
        res.params["max_passes"] = int(max_passes)
        res.v = res.v.to(x.device, x.dtype)
        log.info("universal: resuming after pass %d (fooling rate %.3f)", res.passes, res.fooling_rate_train)
    elif resume:
        log.info("universal: no checkpoint at %s yet; starting from pass 1", checkpoint)
    elif overwrite and checkpoint is not None:
        for q in result_paths(checkpoint):
            if q.exists():
                log.warning("universal: overwrite=True: discarding the earlier checkpoint file %s", q)
                q.unlink()
    v = res.v.to(x.device, x.dtype)
    step = _chunk_sequential if mode == "sequential" else _chunk_batched
    while res.passes < max_passes and not res.converged:
        p = res.passes
        t0 = time.perf_counter()
        order = _permutation(n, seed, p).to(x.device)
        attempts = updates = 0
        for c0 in range(0, n, chunk):
            idx = order[c0 : c0 + chunk]
            v, a, u = step(clf, x[idx], pred[idx], v, xi=float(xi), norm=norm, clip=clip, df=df)
            attempts += a
            updates += u
            if on_progress is not None:
                on_progress(p, min(c0 + chunk, n), n, {"updates": updates, "norm": float(flat_norm(v[None], norm))})
        fr = fooling_rate(clf, x, v, pred=pred, clip=clip)
        fe = None
        if x_eval is not None:
            fe = fooling_rate(clf, x_eval, v, pred=pred_eval, clip=clip)
        seconds = time.perf_counter() - t0
        res.v = v.detach().clone()
        res.record_pass(fooling_train=fr, fooling_eval=fe, attempts=attempts, updates=updates, seconds=seconds)
        res.converged = fr >= 1.0 - delta
        xs, ps = (x, pred) if x_eval is None else (x_eval, pred_eval)
        _, adv = perturbed_labels(clf, xs, v, pred=ps, clip=clip)
        res.transitions = torch.bincount(ps * k + adv, minlength=k * k).reshape(k, k).cpu()
        log.info("universal pass %d: fooling %.3f (held-out %s), %d/%d steps accepted, %.1fs", p + 1, fr,
                 "—" if fe is None else f"{fe:.3f}", updates, attempts, seconds)
        if checkpoint is not None:
            _save_checkpoint(res, checkpoint)
        if on_pass is not None:
            on_pass(res)
    if res.transitions is None:  # resumed from a finished run, or max_passes already reached
        xs, ps = (x, pred) if x_eval is None else (x_eval, pred_eval)
        _, adv = perturbed_labels(clf, xs, v, pred=ps, clip=clip)
        res.transitions = torch.bincount(ps * k + adv, minlength=k * k).reshape(k, k).cpu()
    return res


# --------------------------------------------------------------------------------------------- transfer
@dataclass
class TransferResult(Saveable):
    """Fooling rates of the perturbation computed on each source model (rows) applied to every target model
    (columns), and in every cell the fooling rate of random noise of the same norm (CVPR 2017, Table 2)."""

    sources: list
    targets: list
    fooling: torch.Tensor
    random: torch.Tensor
    norms: list
    n_eval: int

    def table(self) -> list[list[str]]:
        rows = [["UAP of \\ on"] + list(self.targets)]
        for i, s in enumerate(self.sources):
            rows.append([s] + [f"{float(self.fooling[i, j]):.3f} (rand {float(self.random[i, j]):.3f})"
                               for j in range(len(self.targets))])
        return rows


def transfer_matrix(models: dict, perturbations: dict, x, *, clip: bool = True, seed: int = 0,
                    random_draws: int = 1) -> TransferResult:
    """The cross-model table: ``fooling[i, j]`` is the fooling rate on ``x`` of the perturbation computed on
    model ``i`` (a tensor or a :class:`UniversalResult`, keyed by name) when added to the inputs of model ``j``;
    ``random[i, j]`` that of random noise with the same norm as perturbation ``i`` (:func:`random_like`, one
    draw per sample, ``random_draws`` draws averaged), the baseline that tells transfer from plain noise."""
    check_positive(random_draws, "random_draws", integer=True)
    if not models or not perturbations:
        raise OptionError("transfer_matrix needs at least one model and one perturbation")
    clfs = {}
    for name, m in models.items():
        p = prepare(m, x)
        clfs[name] = p.clf
    x = p.x
    preds = {name: predict(c, x) for name, c in clfs.items()}
    fool = torch.zeros(len(perturbations), len(clfs))
    rand = torch.zeros_like(fool)
    norms = []
    g = torch.Generator(device="cpu").manual_seed(seed)
    for i, (src, pv) in enumerate(perturbations.items()):
        if isinstance(pv, UniversalResult):
            v, nrm = pv.v, pv.norm
        else:
            v, nrm = pv, "inf"
        v = v.to(x.device, x.dtype)
        if v.shape != x.shape[1:]:
            raise InputError(f"perturbation {src!r} has shape {tuple(v.shape)}, inputs {tuple(x.shape[1:])}")
        size = float(flat_norm(v[None], nrm))
        norms.append(nrm)
        for j, (tgt, c) in enumerate(clfs.items()):
            fool[i, j] = fooling_rate(c, x, v, pred=preds[tgt], clip=clip)
            draws = [random_like(v, nrm, size, n=x.shape[0], generator=g) for _ in range(random_draws)]
            rand[i, j] = sum(fooling_rate(c, x, r, pred=preds[tgt], clip=clip) for r in draws) / random_draws
    return TransferResult(sources=list(perturbations), targets=list(clfs), fooling=fool, random=rand, norms=norms,
                          n_eval=int(x.shape[0]))
