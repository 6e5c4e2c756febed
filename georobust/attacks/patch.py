"""The adversarial patch (Brown, Mané, Roy, Abadi & Gilmer, "Adversarial patch", NIPS 2017 workshop): one
universal, location-, scale- and rotation-invariant patch that makes a classifier output a target class (or,
untargeted, anything but the true one) wherever it is pasted.

Expectation over transformation (Athalye et al., ICML 2018) with Adam::

    patch ← mid-grey (or uniform noise), a (C, s, s) image in the model's bounds
    for step t = 1 … steps:
        B ← batch_size training images, drawn at random
        A ← random placements (core.placement.sample_placements: location, scale, rotation, optional perspective)
        loss ← mean over B of  CE(f(A(x, patch)), target)      (targeted)
                          or  −CE(f(A(x, patch)), y)            (untargeted)
        patch ← clamp(Adam step on patch, bounds)

The patch is one tensor for all inputs, so it is not a per-sample attack in its optimisation; its *evaluation*
is: every input of ``x`` carries the final patch at a random placement (seeded), the model is re-run on the
patched images (``results.make_result``), and success is that verified label. The result is therefore the
per-sample :class:`PatchResult` of the ``patch`` threat model (``size`` = the fraction of the image the patch
covers, measured from the placed mask), which the suite and ``AttackResult.robust_accuracy`` read like any
other per-sample result — with the patch image, the held-out mask and the training history added. That is why
this is not a ``universal``-threat result: the universal threat model is read as one fooling rate of an Lp
perturbation of norm ``xi``, whereas a patch has a size per placement and must be verified image by image.

Held-out: the patch is optimised on ``x_train`` when given (then every input of ``x`` is held out), else on a
seeded random ``1 − holdout`` share of ``x``; :attr:`PatchResult.held_out` marks the rest, and
``held_out_success_rate`` (in the summary) is the verified success rate on them alone.

Each step draws its batch and placements from a generator seeded by ``(seed, step)``, so with ``checkpoint=``
(saved every ``checkpoint_every`` steps and at the end: the patch, Adam's moments, the step) a stopped run
resumed with ``resume=True`` ends with exactly the patch of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checks import check_images, check_positive, predict, prepare
from ..core.placement import Placements, apply_patch, check_mask, check_scale, sample_placements
from ..engine.protocol import attack
from ..errors import CheckpointError, InputError, OptionError, OutputError, ResultFileError
from ..results import AttackResult, Saveable, make_result, result_paths
from ..storage import ensure_writable

log = logging.getLogger(__name__)

INITS = ("mid", "uniform")
#: parameters that must agree between a checkpoint and the run that resumes it
_RESUME_KEYS = ("patch_size", "mask", "scale", "rotation", "perspective", "batch_size", "lr", "init", "seed",
                "targeted", "target_class", "n_train", "x_sum")


@dataclass
class PatchResult(AttackResult):
    """An :class:`~georobust.results.AttackResult` (every input of ``x`` with the patch at a random placement,
    success verified by the model) plus the patch.

    Attributes:
        patch: the patch ``(C, s, s)`` in the model's input bounds.
        mask: its shape, ``"circle"`` or ``"square"``.
        held_out: ``(N,)`` bool, the inputs the patch was not optimised on.
        placement: ``(N, 4)`` float64: each input's placement ``(center x, center y, side, angle)`` (pixels from
            the top-left corner, pixels, radians); with perspective the corners are not stored.
        loss_history: the training loss of every step (on its batch and placements).
        random_patch_success: ``(N,)`` bool, verified success of a uniform-noise patch at the *same*
            placements (the baseline that tells an adversarial patch from an occluder).
    """

    patch: torch.Tensor | None = None
    mask: str = "circle"
    held_out: torch.Tensor | None = None
    placement: torch.Tensor | None = None
    loss_history: list = field(default_factory=list)
    random_patch_success: torch.Tensor | None = None

    def _held(self) -> torch.Tensor:
        return self.held_out if self.held_out is not None else torch.ones_like(self.success)

    @property
    def held_out_success_rate(self) -> float:
        """The verified success rate on the held-out inputs (the headline figure)."""
        h = self._held()
        return float(self.success[h].double().mean()) if bool(h.any()) else float("nan")

    def summary(self) -> dict:
        out = super().summary()
        h = self._held()
        nh = int(h.sum())
        if self.target is not None:
            already = self.label_clean == self.target
        else:
            already = self.label_clean != self.y
        out.update({
            "n_held_out": nh,
            "held_out_success_rate": self.held_out_success_rate,
            "held_out_success_without_patch": float(already[h].double().mean()) if nh else float("nan"),
            "held_out_success_random_patch": (float(self.random_patch_success[h].double().mean())
                                              if nh and self.random_patch_success is not None else float("nan")),
            "mean_patch_area": float(self.size.double().mean()) if self.size is not None else float("nan"),
            "final_loss": self.loss_history[-1] if self.loss_history else float("nan"),
        })
        return out

    def __repr__(self) -> str:
        s = self.summary()
        return (f"PatchResult({self.attack}: n={s['n']}, held-out success={s['held_out_success_rate']:.3f} "
                f"(no patch {s['held_out_success_without_patch']:.3f}, random patch "
                f"{s['held_out_success_random_patch']:.3f}), area={s['mean_patch_area']:.3f}, {self.elapsed:.1f}s)")


@dataclass
class PatchCheckpoint(Saveable):
    """The state of a patch optimisation after ``step`` steps: the patch, Adam's moments, the loss history."""

    patch: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int
    params: dict = field(default_factory=dict)
    loss_history: list = field(default_factory=list)


def step_generator(seed: int, step: int, device) -> torch.Generator:
    """The generator of step ``step``: a function of ``(seed, step)`` only, so a resumed run draws the same."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def _load_checkpoint(path) -> PatchCheckpoint | None:
    jpath, tpath = result_paths(path)
    present = [q for q in (jpath, tpath) if q.exists()]
    if not present:
        return None
    fix = "; restore it, or pass overwrite=True (CLI: -o overwrite=true) to start from step 0"
    if len(present) == 1:
        raise CheckpointError(f"patch checkpoint {path} is incomplete: only {present[0]} exists{fix}")
    try:
        return PatchCheckpoint.load(path)
    except ResultFileError as e:
        raise CheckpointError(f"cannot resume from patch checkpoint {jpath}: {e}{fix}") from None


def placement_table(pl: Placements) -> torch.Tensor:
    """``(N, 4)`` float64 ``(center x, center y, side, angle)`` of placements (the perspective is not kept)."""
    return torch.stack([pl.center[:, 0], pl.center[:, 1], pl.side, pl.angle], 1).double().cpu()


@attack("patch", threat="patch", chunking=None,
        summary="adversarial patch: one image-agnostic patch, Adam over EOT placements (Brown et al. 2017)")
def adversarial_patch(model, x, y=None, *, target: int | None = None, x_train=None, holdout: float = 0.5,
                      patch_size: int | None = None, mask: str = "circle", scale=(0.1, 0.4), rotation: float = 22.5,
                      perspective: float = 0.0, steps: int = 500, batch_size: int = 16, lr: float = 0.05,
                      init: str = "mid", seed: int = 0, log_every: int = 10, checkpoint: str | Path | None = None,
                      checkpoint_every: int = 100, resume: bool = False, overwrite: bool = False) -> PatchResult:
    """The adversarial patch (Brown et al., 2017): a universal patch optimised with Adam over EOT.

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier`, in eval mode; images
            ``(N, C, H, W)``.
        x: the inputs the result reports on: each carries the final patch at a random placement.
        y: labels (default: the model's predictions); an untargeted patch moves predictions off them.
        target: the target class (one class for the whole patch); ``None``: untargeted.
        x_train: the images to optimise the patch on (then all of ``x`` is held out; Python API only); else a
            random ``1 − holdout`` share of ``x``.
        holdout: the share of ``x`` held out when ``x_train`` is not given (``[0, 1)``).
        patch_size: the patch's resolution ``s`` in pixels (default: the image's shorter side, as ART); at most
            the image's shorter side. The placed size is set by ``scale``.
        mask: ``"circle"`` (the paper's) or ``"square"``.
        scale: the placed patch's side as a fraction of the image's shorter side, uniform in ``(min, max)``
            (one number: fixed), during training and evaluation.
        rotation: rotations uniform in ``± rotation`` degrees.
        perspective: each corner moves inwards by up to this fraction of the half-side (0: none).
        steps: Adam steps, one batch each.
        batch_size: training images per step.
        lr: Adam's learning rate (the patch lives in the model's bounds, e.g. [0, 1]).
        init: ``"mid"`` (the middle of the bounds, ART's) or ``"uniform"`` (uniform noise in the bounds).
        seed: seeds the split, every step's batch and placements, and the evaluation placements.
        log_every: log the mean loss every ``log_every`` steps (debug level).
        checkpoint: save the optimisation state here every ``checkpoint_every`` steps and at the end
            (``.json`` + ``.safetensors``, verified on load); an existing one needs ``resume`` or ``overwrite``.
        checkpoint_every: steps between checkpoints.
        resume: continue from ``checkpoint`` (same parameters and data); ``steps`` may be raised.
        overwrite: discard an existing checkpoint.

    Returns:
        A :class:`PatchResult` (verified by re-running the model on the patched inputs).
    """
    t0 = time.perf_counter()
    mask = check_mask(mask)
    scale = check_scale(scale)
    for name, v in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every),
                    ("checkpoint_every", checkpoint_every)):
        check_positive(v, name, integer=True)
    check_positive(lr, "lr")
    check_positive(seed, "seed", integer=True, allow_zero=True)
    if init not in INITS:
        raise OptionError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not (0 <= holdout < 1):
        raise OptionError(f"holdout must be a number in [0, 1) (the share of x not trained on), got {holdout!r}")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
        raise OptionError(f"target must be one class (an int) for a universal patch, got {target!r}")
    if resume and checkpoint is None:
        raise OptionError("resume=True needs checkpoint= (the file to resume from)")
    if resume and overwrite:
        raise OptionError("resume=True and overwrite=True contradict each other; pass one of them")
    # placements are checked by drawing none (scale, rotation, perspective) before any work
    sample_placements(0, (1, 1), scale=scale, rotation=rotation, perspective=perspective)
    saved = None
    if checkpoint is not None:
        jck, tck = result_paths(checkpoint)
        ensure_writable(jck, what="patch checkpoint")
        ensure_writable(tck, what="patch checkpoint")
        if resume:
            saved = _load_checkpoint(checkpoint)
        elif (jck.exists() or tck.exists()) and not overwrite:
            raise OutputError(f"a patch checkpoint exists at {jck if jck.exists() else tck}: pass resume=True (CLI: "
                              "-o resume=true) to continue it or overwrite=True (CLI: -o overwrite=true) to start over")
    check_images(x, "An adversarial patch", "is pasted onto images")
    p = prepare(model, x, y, target=target)
    clf, x = p.clf, p.x
    n, c, h, w = x.shape
    s = min(h, w) if patch_size is None else patch_size
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise OptionError(f"patch_size must be a positive integer (pixels), got {patch_size!r}")
    if s > min(h, w):
        raise InputError(f"the patch ({s}×{s} pixels) is larger than the images ({h}×{w}); use patch_size <= "
                         f"{min(h, w)} (it is scaled when placed)")
    lo, hi = clf.bounds
    gsplit = torch.Generator(device="cpu").manual_seed(seed)
    if x_train is not None:
        pt = prepare(clf, x_train)
        if pt.x.shape[1:] != x.shape[1:]:
            raise InputError(f"x_train must be images shaped like x {tuple(x.shape[1:])}, got {tuple(pt.x.shape)}")
        xt, yt = pt.x, pt.pred
        held = torch.ones(n, dtype=torch.bool)
    else:
        n_train = n - int(round(holdout * n))
        if n_train < 1:
            raise InputError(f"holdout={holdout} leaves no training image of {n}; lower it or give x_train")
        perm = torch.randperm(n, generator=gsplit)
        held = torch.ones(n, dtype=torch.bool)
        held[perm[:n_train]] = False
        tr = (~held).nonzero().squeeze(1).to(x.device)
        xt, yt = x[tr], p.y[tr]
        if holdout == 0:
            log.warning("patch: holdout=0 and no x_train: every input is trained on, none is held out (the "
                        "held-out success rate is undefined; give x_train or holdout > 0)")
    targeted = target is not None
    tgt_t = torch.full((xt.shape[0],), int(target), dtype=torch.long, device=x.device) if targeted else yt
    params = {"patch_size": int(s), "mask": mask, "scale": list(scale), "rotation": float(rotation),
              "perspective": float(perspective), "batch_size": int(batch_size), "lr": float(lr), "init": init,
              "seed": int(seed), "targeted": targeted, "target_class": None if target is None else int(target),
              "n_train": int(xt.shape[0]), "x_sum": round(float(xt.double().sum()), 3)}
    # ---- state: the patch and Adam's moments (Kingma & Ba, ICLR 2015; the update of torch.optim.Adam)
    dev, dt = x.device, x.dtype
    if saved is not None:
        diff = {k: (saved.params.get(k), params[k]) for k in _RESUME_KEYS if saved.params.get(k) != params[k]}
        if diff:
            raise OptionError(f"checkpoint {checkpoint} was made with other parameters or data: {diff}; use the same "
                              "settings, or pass overwrite=True (CLI: -o overwrite=true) to start over")
        patch = saved.patch.to(dev, dt)
        m1, m2, start = saved.exp_avg.to(dev, dt), saved.exp_avg_sq.to(dev, dt), int(saved.step)
        history = list(saved.loss_history)
        log.info("patch: resuming after step %d of %d", start, steps)
    else:
        g0 = step_generator(seed, 0, "cpu")
        if init == "mid":
            patch = torch.full((c, s, s), (lo + hi) / 2, dtype=dt, device=dev)
        else:
            patch = (lo + (hi - lo) * torch.rand(c, s, s, generator=g0)).to(dev, dt)
        m1, m2, start, history = torch.zeros_like(patch), torch.zeros_like(patch), 0, []
    beta1, beta2, eps_adam = 0.9, 0.999, 1e-8
    ntr = xt.shape[0]

    def save(step):
        if checkpoint is not None:
            PatchCheckpoint(patch.detach().cpu(), m1.cpu(), m2.cpu(), step, dict(params),
                            list(history)).save(checkpoint)

    for t in range(start, steps):
        g = step_generator(seed, t + 1, "cpu")
        idx = torch.randint(ntr, (min(batch_size, ntr),), generator=g).to(dev)
        pl = sample_placements(idx.numel(), (h, w), scale=scale, rotation=rotation, perspective=perspective,
                               generator=g, device=dev)
        pv = patch.detach().requires_grad_(True)
        xp, _ = apply_patch(xt[idx], pv, pl, mask=mask)
        logits = clf(xp)
        loss = F.cross_entropy(logits, tgt_t[idx])
        if not targeted:
            loss = -loss
        (grad,) = torch.autograd.grad(loss, pv)
        with torch.no_grad():
            k = t + 1
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (m2 / (1 - beta2**k)).sqrt().add_(eps_adam)
            patch = (patch - (lr / (1 - beta1**k)) * m1 / denom).clamp(lo, hi)
        history.append(float(loss.detach()))
        if (t + 1) % log_every == 0 or t + 1 == steps:
            log.debug("patch step %d/%d: mean loss of the last steps %.4f", t + 1, steps,
                      sum(history[-log_every:]) / len(history[-log_every:]))
        if (t + 1) % checkpoint_every == 0 and t + 1 < steps:
            save(t + 1)
    save(max(steps, start))
    # ---- evaluation: every input carries the final patch at a random placement; the model is re-run
    ge = step_generator(seed, -1, "cpu")
    pl = sample_placements(n, (h, w), scale=scale, rotation=rotation, perspective=perspective, generator=ge,
                           device=dev)
    with torch.no_grad():
        x_adv, cover = apply_patch(x, patch, pl, mask=mask)
        noise = (lo + (hi - lo) * torch.rand(c, s, s, generator=ge)).to(dev, dt)
        x_rand, _ = apply_patch(x, noise, pl, mask=mask)
    size = cover.flatten(1).double().mean(1)  # on the inputs' device, like success
    params_all = dict(params, steps=int(steps), holdout=float(holdout), log_every=int(log_every),
                      checkpoint=None if checkpoint is None else str(checkpoint),
                      checkpoint_every=int(checkpoint_every), x_train_given=x_train is not None,
                      model=getattr(clf, "name", type(clf).__name__))
    res = make_result("patch", clf, x, x_adv, p.y, p.pred, target=p.target, elapsed=time.perf_counter() - t0,
                      params=params_all, threat="patch", size=size)
    rnd = make_result("patch", clf, x, x_rand, p.y, p.pred, target=p.target, threat="patch")
    out = PatchResult(**{f: getattr(res, f) for f in res.__dataclass_fields__}, patch=patch.detach().cpu(),
                      mask=mask, held_out=held.to(x.device), placement=placement_table(pl), loss_history=history,
                      random_patch_success=rnd.success)
    out.elapsed = time.perf_counter() - t0
    if not math.isfinite(out.held_out_success_rate):
        log.warning("patch: no held-out input to report on")
    return out



def evaluate_patch(model, x, patch, y=None, *, target: int | None = None, mask: str = "circle", scale=(0.1, 0.4),
                   rotation: float = 22.5, perspective: float = 0.0, draws: int = 1, seed: int = 0) -> dict:
    """The verified success rate of a given ``patch`` ``(C, s, s)`` on ``x`` at ``draws`` random placements per
    input (the model re-run on every patched input): the fraction of (input, placement) pairs predicted as
    ``target`` (targeted) or off ``y`` (untargeted; default labels: the model's predictions). Any patch can be
    scored with it, e.g. one made by another library, under the same placements.

    Returns ``{"success_rate", "success_without_patch", "mean_area", "n", "draws"}``.
    """
    check_mask(mask)
    check_positive(draws, "draws", integer=True)
    check_positive(seed, "seed", integer=True, allow_zero=True)
    sample_placements(0, (1, 1), scale=scale, rotation=rotation, perspective=perspective)
    check_images(x, "An adversarial patch", "is pasted onto images")
    p = prepare(model, x, y, target=target)
    if not isinstance(patch, torch.Tensor):
        raise InputError(f"patch must be a tensor (C, s, s), got {type(patch).__name__}")
    patch = patch.to(p.x.device, p.x.dtype)
    lo, hi = p.clf.bounds
    if bool((patch < lo).any() or (patch > hi).any()):
        raise InputError(f"the patch has values outside the model's bounds [{lo:g}, {hi:g}]; clamp it first")
    n, _, h, w = p.x.shape
    g = step_generator(seed, -2, "cpu")
    hits = 0
    area = 0.0
    goal = p.target if p.target is not None else p.y
    for _ in range(draws):
        pl = sample_placements(n, (h, w), scale=scale, rotation=rotation, perspective=perspective, generator=g,
                               device=p.x.device)
        with torch.no_grad():
            xa, cover = apply_patch(p.x, patch, pl, mask=mask)
        lab = predict(p.clf, xa)
        ok = (lab == goal) if p.target is not None else (lab != goal)
        hits += int(ok.sum())
        area += float(cover.flatten(1).double().mean(1).sum())
    already = (p.pred == goal) if p.target is not None else (p.pred != goal)
    return {"success_rate": hits / (n * draws), "success_without_patch": float(already.double().mean()),
            "mean_area": area / (n * draws), "n": int(n), "draws": int(draws)}
