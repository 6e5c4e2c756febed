"""Automatic gradient-masking alarms: named checks that fire when a robustness number cannot be believed.

They follow the checklist of Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry & Kurakin,
"On evaluating adversarial robustness" (arXiv:1902.06705, 2019), and the flags AutoAttack raises (Croce & Hein,
ICML 2020): a randomised model, probabilities instead of logits, vanishing or non-finite gradients, and attacks
that should be weaker beating the attack that is reported (gradient-free, single-step, transfer, random noise),
robust accuracy that does not fall to chance as the budget grows, an attack that has not converged.

Every check returns an :class:`Alarm` — ``name``, ``fired``, a ``message`` that says what was seen and what to
do, the measured ``value`` and the ``threshold`` it was compared with (as a rule ``fired`` iff
``value > threshold``, decided on counts of samples so that a value equal to its threshold never fires) —
which is JSON-able (:meth:`Alarm.to_dict`). :func:`run_alarms` runs every check whose inputs are available.

The checks that compare attacks take *results* (:class:`~georobust.results.AttackResult`), never attacks: this
module imports no attack. They compare **per sample on the same inputs** (a sample "broken" by an attack is one
that is misclassified clean or fooled within the budget, read by the result's threat model) and measure the
fraction of samples the weaker attack breaks while the stronger one does not — an honest evaluation has that
fraction near zero, whatever the robust accuracy. Several results may stand for one side (a list): a sample is
then broken when any of them breaks it (the per-sample worst case).

The default margins are one point of accuracy (``0.01``) for the attack comparisons, the size of the differences
between defences that papers report, and five points (``0.05``) for the convergence to chance: with ``n``
samples one sample is ``1/n``, so use ``n >= 200`` or widen the margins for smaller runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..checks import PROBABILITIES_WARNING, check_iterations, check_norm, check_positive, prepare
from ..core.losses import LOSSES, loss_grad
from ..errors import InputError, OptionError
from ..models.classifier import Classifier
from ..results import AttackResult

log = logging.getLogger(__name__)

#: the names of the alarms, in the order :func:`run_alarms` reports them
ALARMS = ("randomized", "probabilities", "gradients", "blackbox_beats_whitebox", "no_convergence_to_zero",
          "not_converged", "single_step_beats_iterative", "transfer_beats_whitebox", "noise_beats_attack")

#: the keys of :func:`run_alarms`' ``results``: the role each result plays in the comparisons
ROLES = {
    "white": "the white-box gradient attack(s) whose robust accuracy is reported (e.g. PGD, APGD)",
    "black": "gradient-free / score-based attack(s) on the same inputs (e.g. Square, SPSA)",
    "single_step": "a single-step attack (e.g. FGSM) at the same budget",
    "iterative": "the iterative attack it is compared with (default: 'white')",
    "short": "the reported attack with its usual iterations/restarts",
    "long": "the same attack with more iterations or restarts",
    "transfer": "adversarial examples crafted on a surrogate model (re-verified on this model)",
}

#: relative change of the (L2-normalised) outputs between two passes above which a model is randomised
RANDOMIZED_TOL = 1e-4
#: fraction of inputs with vanished gradients (on every loss) above which the gradients alarm fires
GRADIENT_FRACTION = 0.02
#: fraction of inputs with vanished gradients of one loss above which the gradients alarm fires
SINGLE_LOSS_FRACTION = 0.5
#: margin of the attack comparisons (a fraction of the samples)
MARGIN = 0.01
#: margin above chance of robust accuracy at the largest budget
CHANCE_MARGIN = 0.05


@dataclass
class Alarm:
    """The outcome of one check: as a rule ``fired`` iff ``value > threshold`` (each check's docstring says
    what its value is; ``None``: not measurable, or a yes/no check such as ``probabilities``)."""

    name: str
    fired: bool
    message: str
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite numbers become ``None``)."""
        d = asdict(self)
        for k in ("value", "threshold"):
            v = d[k]
            d[k] = None if v is None or not math.isfinite(v) else float(v)
        d["fired"] = bool(d["fired"])
        return d

    def __str__(self) -> str:
        return f"[{'FIRED' if self.fired else 'ok'}] {self.name}: {self.message}"


# ---- validation helpers -------------------------------------------------------------------------------

def _fraction(v: Any, name: str) -> float:
    check_positive(v, name, allow_zero=True)
    if v >= 1:
        raise OptionError(f"{name} is a fraction of the samples and must be in [0, 1), got {v!r}")
    return float(v)


def _as_list(res: Any, name: str) -> list[AttackResult]:
    items = list(res) if isinstance(res, (list, tuple)) else [res]
    if not items:
        raise InputError(f"{name}: give at least one AttackResult")
    for r in items:
        if not isinstance(r, AttackResult):
            raise InputError(f"{name} must be an AttackResult (or a list of them), got {type(r).__name__}")
    return items


def _same_inputs(groups: dict[str, list[AttackResult]], x: torch.Tensor | None = None) -> None:
    """Refuse results that were not computed on the same inputs and labels (per-sample comparison)."""
    ref_x = x
    ref_y = None
    ref_name = "x"
    for name, rs in groups.items():
        for r in rs:
            rx = r.x.to(ref_x.device, ref_x.dtype) if ref_x is not None else r.x
            if ref_x is None:
                ref_x, ref_y, ref_name = r.x, r.y, f"{name} ({r.attack})"
                continue
            if rx.shape != ref_x.shape or not torch.equal(rx, ref_x):
                raise InputError(f"{name} ({r.attack}) was computed on other inputs than {ref_name} (shapes "
                                 f"{tuple(r.x.shape)} and {tuple(ref_x.shape)}): the alarms compare per sample, so "
                                 "run every attack on the same inputs in the same order")
            if ref_y is not None and not torch.equal(r.y.cpu(), ref_y.cpu()):
                raise InputError(f"{name} ({r.attack}) has other labels than {ref_name}: run every attack with "
                                 "the same labels")
            if ref_y is None:
                ref_y = r.y


def _broken(results: list[AttackResult], eps: float | None, norm: str) -> torch.Tensor:
    """``(N,)`` bool: misclassified clean, or fooled within ``eps`` by any of ``results`` (its threat model
    reads the budget; ``eps=None``: fooled at all)."""
    out = None
    for r in results:
        if eps is None:
            b = ~((r.label_clean == r.y) & ~r.success.bool())
        else:
            b = ~r.threat_model.robust(r, [eps], norm)[:, 0]
        b = b.cpu()
        out = b if out is None else out | b
    return out


#: slack of comparisons of fractions, so that a value equal to its threshold (``0.52 − 0.51`` vs ``0.01``)
#: never fires by round-off
_TOL = 1e-9


def _more_than(count: int, margin: float, n: int) -> bool:
    """``count/n > margin``, decided on the count (exact for a count equal to ``margin·n``)."""
    return count > margin * n + _TOL


def _names(results: list[AttackResult]) -> str:
    return "+".join(dict.fromkeys(r.attack for r in results))


def _beats(name: str, weak: list[AttackResult] | str, strong: list[AttackResult], eps, norm, margin: float,
           what: str, fix: str, broken_weak: torch.Tensor | None = None) -> Alarm:
    """The comparison of the module docstring: the fraction of samples ``weak`` breaks and ``strong`` does
    not (``weak`` a name when ``broken_weak`` gives its per-sample outcome)."""
    bw = _broken(weak, eps, norm) if broken_weak is None else broken_weak
    bs = _broken(strong, eps, norm)
    only = bw & ~bs
    value = float(only.double().mean())
    n, k = int(only.numel()), int(only.sum())
    ra_w, ra_s = 1 - float(bw.double().mean()), 1 - float(bs.double().mean())
    fired = _more_than(k, margin, n)
    head = (f"{what}{'' if isinstance(weak, str) else f' ({_names(weak)})'} breaks {k}/{n} samples ({value:.1%}) that {_names(strong)} does not "
            f"(robust accuracy {ra_w:.1%} vs {ra_s:.1%}{'' if eps is None else f' at eps={eps:g}'}; "
            f"margin {margin:.1%})")
    return Alarm(name, fired, head + (f": {fix}" if fired else ""), value, margin)


# ---- checks on the model ------------------------------------------------------------------------------

def randomized(model, x, *, passes: int = 3, tolerance: float = RANDOMIZED_TOL, batch_size: int = 512) -> Alarm:
    """Fires when the model's outputs differ across repeated passes on the same inputs (Carlini et al. 2019,
    §4.4 "randomised defences"; AutoAttack's randomisation flag).

    The value is the largest, over samples and passes, of ``‖ẑ_a − ẑ_b‖_∞`` with ``ẑ = z/‖z‖₂`` the
    L2-normalised output row (so the check does not depend on the logits' scale). ``tolerance`` (``1e-4``, as
    AutoAttack): a deterministic model re-run on the same batch differs at most by the round-off of
    reordered reductions (non-deterministic GPU kernels), a few units of ``1e-7`` in float32 per output; any
    deliberate randomness (noise, random resizing) changes the outputs by orders of magnitude more.
    A randomised model must be evaluated with EOT (``defenses.EOT``), not by plain attacks.
    """
    check_iterations(passes, "passes")
    if passes < 2:
        raise OptionError(f"passes must be >= 2 (outputs are compared across passes), got {passes}")
    check_positive(tolerance, "tolerance")
    p = prepare(model, x)
    return _randomized(p.clf, p.x, passes, tolerance, batch_size)


def _outputs(clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([clf(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]).double()


def _randomized(clf, x, passes, tolerance, batch_size) -> Alarm:
    outs = []
    for _ in range(passes):
        z = _outputs(clf, x, batch_size)
        outs.append(z / z.norm(dim=1, keepdim=True).clamp_min(1e-30))
    value, flips = 0.0, 0
    preds = [o.argmax(1) for o in outs]
    for o, pr in zip(outs[1:], preds[1:]):
        value = max(value, float((o - outs[0]).abs().max()))
        flips = max(flips, int((pr != preds[0]).sum()))
    fired = value > tolerance
    msg = (f"outputs differ across {passes} passes on the same inputs by up to {value:.3g} (normalised; "
           f"tolerance {tolerance:g}); up to {flips}/{x.shape[0]} predictions change")
    if fired:
        msg += (": the model is randomised — plain attacks see a different model at every step and overstate "
                "robustness; attack it with EOT (georobust.defenses.EOT) and report accuracy over several passes")
    return Alarm("randomized", fired, msg, value, tolerance)


def probabilities(model, x) -> Alarm:
    """Fires when the model's outputs look like probabilities, not logits (AutoAttack's softmax flag): the
    detection is :mod:`georobust.checks`' (non-negative rows summing to 1 within ``8·K·eps``, on the probe
    batch), the one rule every attack applies. The value is the largest ``|Σ_k out_k − 1|`` over all inputs
    when every output is non-negative (``None`` otherwise), for the record."""
    p = prepare(model, x)
    return _probabilities(p.clf, p.x)


def _probabilities(clf, x, batch_size: int = 512) -> Alarm:
    fired = PROBABILITIES_WARNING in clf.output_warnings
    out = _outputs(clf, x, batch_size)
    value = float((out.sum(1) - 1).abs().max()) if bool((out >= 0).all()) else None
    if fired:
        msg = PROBABILITIES_WARNING
    else:
        msg = "the outputs are logits (" + ("some are negative" if value is None else
                                             f"rows sum to 1 only within {value:.3g}") + ")"
    return Alarm("probabilities", fired, msg, value, None)


def gradients(model, x, y=None, *, losses: Sequence[str] = ("ce", "cw"), max_fraction: float = GRADIENT_FRACTION,
              batch_size: int = 256) -> Alarm:
    """Fires when the input gradient of a loss an attack ascends has *vanished* on more than ``max_fraction``
    of the inputs (shattered or vanishing gradients, Athalye et al., ICML 2018; AutoAttack's zero-gradient flag;
    Carlini et al. 2019 §4.3).

    A sample's gradient ``g`` of loss ``L`` (per loss of ``losses``: ``"ce"`` cross-entropy, ``"cw"`` margin,
    ``"dlr"``) has vanished when it is not finite, or when
    ``‖g‖₁·(hi − lo) <= eps_dtype · max(|L|, 1)``: even a step across the whole box (the largest first-order
    change of ``L`` under an L∞ step of size ``hi − lo``) would change the loss by less than its round-off, so
    the gradient carries no usable information (this covers exact zeros, the quantised case, and the tiny
    gradients of a saturated softmax). It fires when (a) more than ``max_fraction`` of the inputs have vanished
    gradients for *every* loss of ``losses`` — no loss gives a gradient attack a direction, so these samples
    count as robust whatever the attack — or (b) one loss's gradients vanish on more than
    :data:`SINGLE_LOSS_FRACTION` (half) of the inputs — an attack on that loss is blind on most of them. A few
    confidently classified inputs whose cross-entropy alone saturates are normal, not masking: the shipped
    standard ``fc500-150-10-fmnist`` shows 6% of vanished CE gradients (none of the margin's) with a robust
    accuracy of 0.006; the margin and DLR losses still move those samples, which is why the standard cascade
    runs APGD-T with DLR after APGD-CE. ``max_fraction`` (``0.02``): the fraction is how much robust accuracy may
    be overstated; two points is below the differences papers report. The value is the largest fraction over
    the losses (compared with ``max_fraction`` when every loss vanishes with it, with half otherwise: the one
    alarm whose ``fired`` is not simply ``value > threshold``).
    """
    losses = tuple(losses)
    if not losses:
        raise OptionError(f"losses must name at least one of {', '.join(LOSSES)}")
    for loss in losses:
        if loss not in LOSSES:
            raise OptionError(f"unknown loss {loss!r}; choose among {', '.join(LOSSES)}")
    max_fraction = _fraction(max_fraction, "max_fraction")
    check_positive(batch_size, "batch_size", integer=True)
    p = prepare(model, x, y)
    return _gradients(p.clf, p.x, p.y, losses, max_fraction, batch_size)


def _gradients(clf, x, y, losses, max_fraction, batch_size) -> Alarm:
    lo, hi = clf.bounds
    fractions, counts = {}, {}
    details = []
    all_bad = torch.ones(x.shape[0], dtype=torch.bool)
    for loss in losses:
        bad = torch.zeros(x.shape[0], dtype=torch.bool)
        zero = nonfinite = 0
        for i in range(0, x.shape[0], batch_size):
            g, ell, _ = loss_grad(clf, x[i:i + batch_size], y[i:i + batch_size], None, loss)
            g = g.flatten(1).double()
            finite = torch.isfinite(g).all(1) & torch.isfinite(ell)
            eps = torch.finfo(x.dtype).eps  # the round-off of the loss, computed in the model's dtype
            g1 = g.abs().sum(1).nan_to_num(nan=math.inf)
            tiny = g1 * (hi - lo) <= eps * ell.double().abs().clamp_min(1.0)
            bad[i:i + batch_size] = (~finite | tiny).cpu()
            zero += int((finite & (g1 == 0)).sum())
            nonfinite += int((~finite).sum())
        all_bad &= bad
        fractions[loss] = float(bad.double().mean())
        counts[loss] = int(bad.sum())
        details.append(f"{loss}: {fractions[loss]:.1%} ({zero} exactly zero, {nonfinite} non-finite)")
    worst = max(fractions, key=fractions.get)
    n = x.shape[0]
    every = int(all_bad.sum())
    value = fractions[worst]
    fired = _more_than(every, max_fraction, n) or _more_than(counts[worst], SINGLE_LOSS_FRACTION, n)
    msg = (f"vanished input gradients on {'; '.join(details)}; on every loss: {every / n:.1%} of {n} inputs "
           f"(thresholds: {max_fraction:.1%} on every loss, {SINGLE_LOSS_FRACTION:.0%} on one)")
    if fired:
        msg += (f": gradient attacks cannot move these samples, so their robust accuracy ({worst}) is an "
                "overestimate (gradient masking) — use a gradient-free attack (Square, SPSA), BPDA for a "
                "non-differentiable layer, or a margin/DLR loss on the pre-softmax logits")
    return Alarm("gradients", fired, msg, value, max_fraction)


def noise_beats_attack(model, x, y, res_attack, *, eps: float, norm="inf", trials: int = 10,
                       margin: float = MARGIN, seed: int = 0, batch_size: int = 1024) -> Alarm:
    """Fires when random noise of the attack's size breaks more than ``margin`` of the samples that the attack
    does not (Carlini et al. 2019, §5.2: "an attack should beat random noise").

    For each sample, ``trials`` random perturbations of size exactly ``eps`` (L∞: uniform random signs, a
    random corner of the ball; L2: a uniformly random direction), clamped into the box; the sample is broken by
    noise when any trial is misclassified. ``res_attack`` (a result or a list, run at ``eps`` on the same
    ``x``, ``y``) is read by its threat model.
    """
    norm = check_norm(norm)
    check_positive(eps, "eps")
    check_iterations(trials, "trials")
    margin = _fraction(margin, "margin")
    attack = _as_list(res_attack, "res_attack")
    p = prepare(model, x, y)
    _same_inputs({"res_attack": attack}, p.x)
    gen = torch.Generator().manual_seed(int(seed))
    return _noise_beats_attack(p.clf, p.x, p.y, p.pred, attack, eps, norm, trials, margin, gen, batch_size)


def _noise_beats_attack(clf, x, y, pred, attack, eps, norm, trials, margin, gen, batch_size) -> Alarm:
    lo, hi = clf.bounds
    broken = (pred != y).cpu()
    for _ in range(trials):
        if norm == "inf":
            d = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype) * 2 - 1
        else:
            d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            d = (d / d.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (x.ndim - 1)))).to(x.dtype)
        xn = (x + eps * d.to(x.device)).clamp(lo, hi)
        with torch.inference_mode():
            pn = torch.cat([clf(xn[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])
        broken |= (pn != y).cpu()
    return _beats("noise_beats_attack", "noise", attack, eps, norm, margin,
                  f"random noise of size {eps:g} ({trials} trials, L{norm})",
                  "the attack is weaker than random noise — it is broken or the gradients are masked; check "
                  "its step size and loss, and use a gradient-free attack", broken_weak=broken)


_FIX_BLACK = ("gradient masking: the white-box robust accuracy is an overestimate — report the per-sample worst "
              "case over all attacks and find why the gradients fail (see the gradients alarm)")
_FIX_TRANSFER = ("the white-box attack is weaker than a black-box transfer: gradient masking — attack the model "
                 "adaptively (BPDA/EOT) or report the per-sample worst case including the transfer")


# ---- checks on results --------------------------------------------------------------------------------

def blackbox_beats_whitebox(res_white, res_black, *, eps: float | None = None, norm="inf",
                            margin: float = MARGIN) -> Alarm:
    """Fires when a gradient-free or score-based attack (``res_black``) breaks more than ``margin`` of the
    samples that the white-box gradient attack (``res_white``) leaves robust (Carlini et al. 2019, §5.2;
    AutoAttack flags Square lowering the robust accuracy of the gradient attacks). On a differentiable model a
    gradient attack with the same budget is the stronger one; the opposite means masked gradients.

    ``eps``/``norm``: the budget robust accuracy is read at (required for minimal-norm results; ``None``: any
    success counts)."""
    white, black = _as_list(res_white, "res_white"), _as_list(res_black, "res_black")
    norm, margin = _budget(eps, norm), _fraction(margin, "margin")
    _same_inputs({"res_white": white, "res_black": black})
    return _beats("blackbox_beats_whitebox", black, white, eps, norm, margin, "the gradient-free attack",
                  _FIX_BLACK)


def single_step_beats_iterative(res_single, res_iterative, *, eps: float | None = None, norm="inf",
                                margin: float = MARGIN) -> Alarm:
    """Fires when a single-step attack (FGSM) breaks more than ``margin`` of the samples an iterative attack
    (PGD) at the same budget leaves robust (Carlini et al. 2019, §5.2: iterative attacks must be strictly
    stronger; the symptom of gradient masking by a locally non-linear loss surface, Tramèr et al., ICLR 2018)."""
    single, it = _as_list(res_single, "res_single"), _as_list(res_iterative, "res_iterative")
    norm, margin = _budget(eps, norm), _fraction(margin, "margin")
    _same_inputs({"res_single": single, "res_iterative": it})
    return _beats("single_step_beats_iterative", single, it, eps, norm, margin, "the single-step attack",
                  "the iterative attack is failing (step size too small, too few steps, masked gradients near the "
                  "input); tune it or use APGD")


def transfer_beats_whitebox(res_transfer, res_white, *, model=None, eps: float | None = None, norm="inf",
                            margin: float = MARGIN, batch_size: int = 1024) -> Alarm:
    """Fires when adversarial examples transferred from a surrogate model break more than ``margin`` of the
    samples the white-box attack on this model leaves robust (Carlini et al. 2019, §5.2; Athalye et al. 2018).

    ``res_transfer`` was crafted on the surrogate: with ``model`` its ``x_adv`` is re-verified on this model
    (a sample is broken when this model misclassifies ``x`` or ``x_adv``, the perturbation within ``eps``);
    without ``model`` its ``success`` is taken as already verified on this model."""
    transfer, white = _as_list(res_transfer, "res_transfer"), _as_list(res_white, "res_white")
    norm, margin = _budget(eps, norm), _fraction(margin, "margin")
    _same_inputs({"res_transfer": transfer, "res_white": white})
    broken = None
    if model is not None:
        p = prepare(model, transfer[0].x, transfer[0].y)
        broken = _transfer_broken(p.clf, p.y, p.pred, transfer, eps, norm, batch_size)
    return _beats("transfer_beats_whitebox", transfer, white, eps, norm, margin, "the transfer attack",
                  _FIX_TRANSFER, broken_weak=broken)


def _transfer_broken(clf, y, pred, transfer, eps, norm, batch_size) -> torch.Tensor:
    broken = (pred != y).cpu()
    for r in transfer:
        xa = r.x_adv.to(device=y.device, dtype=r.x.dtype)
        with torch.inference_mode():
            pa = torch.cat([clf(xa[i:i + batch_size].to(pred.device)).argmax(1)
                            for i in range(0, xa.shape[0], batch_size)])
        fooled = pa != y
        if eps is not None:
            fooled &= (r.norms(norm) <= eps + 1e-7 * max(1.0, eps)).to(fooled.device)
        broken |= fooled.cpu()
    return broken


def not_converged(result_short, result_long, *, eps: float | None = None, norm="inf",
                  margin: float = MARGIN) -> Alarm:
    """Fires when running the attack longer (more iterations or restarts, ``result_long``) still lowers robust
    accuracy by more than ``margin`` below ``result_short`` (Carlini et al. 2019, §5.1: "verify that the
    attack has converged"; the reported number is then not the attack's limit). The value is robust
    accuracy(short) − robust accuracy(long) on the same inputs."""
    short, long = _as_list(result_short, "result_short"), _as_list(result_long, "result_long")
    norm, margin = _budget(eps, norm), _fraction(margin, "margin")
    _same_inputs({"result_short": short, "result_long": long})
    b_s, b_l = _broken(short, eps, norm), _broken(long, eps, norm)
    n = int(b_s.numel())
    ra_s, ra_l = 1 - float(b_s.double().mean()), 1 - float(b_l.double().mean())
    value = ra_s - ra_l
    fired = _more_than(int(b_l.sum()) - int(b_s.sum()), margin, n)
    msg = (f"robust accuracy {ra_s:.1%} ({_names(short)}) vs {ra_l:.1%} with more iterations/restarts "
           f"({_names(long)}): a drop of {value:.1%} (margin {margin:.1%})")
    if fired:
        msg += ": the attack has not converged — report the longer run, or run longer until the number stops moving"
    return Alarm("not_converged", fired, msg, value, margin)


def no_convergence_to_zero(robust_acc_by_eps, *, chance: float, margin: float = CHANCE_MARGIN) -> Alarm:
    """Fires when robust accuracy does not fall to chance as the budget grows (Carlini et al. 2019, §5.1:
    "unbounded attacks must reach 100% success"; an attack that cannot win with the whole box available is
    broken or blocked by masked gradients).

    ``robust_acc_by_eps``: ``{eps: robust accuracy}`` (or ``(eps, accuracy)`` pairs); its largest ``eps``
    should be large enough to reach any input (L∞: the box width, e.g. ``1`` on ``[0, 1]``). Fires when the
    robust accuracy at the largest ``eps`` exceeds ``chance + margin`` (the value), or when it *rises* by
    more than ``margin`` between two growing budgets (a curve must not increase). ``chance``: the accuracy
    of a constant guess (``0`` for an untargeted attack that may reach any input; ``1/K`` to be lenient)."""
    pairs = list(robust_acc_by_eps.items()) if isinstance(robust_acc_by_eps, Mapping) else list(robust_acc_by_eps)
    if not pairs:
        raise InputError("robust_acc_by_eps is empty: give robust accuracy at two budgets or more, the largest "
                         "reaching the whole box")
    try:
        pairs = sorted((float(e), float(a)) for e, a in pairs)
    except (TypeError, ValueError):
        raise InputError("robust_acc_by_eps must map budgets (numbers) to robust accuracies (numbers in [0, 1])"
                         ) from None
    for e, a in pairs:
        if not (math.isfinite(e) and e >= 0 and 0 <= a <= 1):
            raise InputError(f"robust_acc_by_eps has eps={e!r} -> {a!r}: budgets must be finite >= 0 and "
                             "accuracies in [0, 1]")
    check_positive(chance, "chance", allow_zero=True)
    if chance > 1:
        raise OptionError(f"chance is an accuracy in [0, 1], got {chance!r}")
    margin = _fraction(margin, "margin")
    e_max, a_max = pairs[-1]
    rises = [(e0, a0, e1, a1) for (e0, a0), (e1, a1) in zip(pairs, pairs[1:]) if a1 - a0 > margin + _TOL]
    threshold = chance + margin
    fired = a_max > threshold + _TOL or bool(rises)
    curve = ", ".join(f"{e:g}: {a:.1%}" for e, a in pairs)
    msg = f"robust accuracy by eps {{{curve}}}; at the largest eps {a_max:.1%} (at most {threshold:.1%})"
    if rises:
        msg += "; it rises from " + ", ".join(f"{a0:.1%} at {e0:g} to {a1:.1%} at {e1:g}" for e0, a0, e1, a1 in rises)
    if fired:
        msg += (": the attack does not reach chance as the budget grows — it is broken or blocked (masked "
                "gradients); check with a gradient-free attack and a larger budget")
    return Alarm("no_convergence_to_zero", fired, msg, a_max, threshold)


def _budget(eps, norm) -> str:
    if eps is not None:
        check_positive(eps, "eps", allow_zero=True)
    return check_norm(norm)


# ---- all of them ----------------------------------------------------------------------------------------

def run_alarms(model, x, y=None, *, eps: float, norm="inf", results: Mapping[str, Any] | None = None,
               robust_acc_by_eps=None, chance: float | None = None, passes: int = 3, trials: int = 10,
               margin: float = MARGIN, max_fraction: float = GRADIENT_FRACTION, seed: int = 0,
               batch_size: int = 256) -> list[Alarm]:
    """Run every alarm whose inputs are available; return them in :data:`ALARMS` order (the fired ones are
    also logged as warnings).

    Always: ``randomized``, ``probabilities``, ``gradients`` (on ``model``, ``x``, ``y``, validated once).
    ``results`` maps the roles of :data:`ROLES` to an :class:`~georobust.results.AttackResult` (or a list: the
    per-sample worst case), all on these ``x``, ``y`` at ``eps`` (minimal-norm results are read at ``eps``):
    ``black`` with ``white`` → ``blackbox_beats_whitebox``; ``single_step`` with ``iterative`` (else
    ``white``) → ``single_step_beats_iterative``; ``transfer`` with ``white`` → ``transfer_beats_whitebox``
    (re-verified on ``model``); ``short`` with ``long`` → ``not_converged``; ``white`` (else ``iterative``,
    ``long``) → ``noise_beats_attack``. ``robust_acc_by_eps`` → ``no_convergence_to_zero`` (``chance``
    default ``1/K``).
    """
    results = dict(results or {})
    unknown = sorted(set(results) - set(ROLES))
    if unknown:
        raise OptionError(f"unknown result role(s) {', '.join(map(repr, unknown))}; the roles are "
                          + "; ".join(f"{k!r}: {v}" for k, v in ROLES.items()))
    norm = check_norm(norm)
    check_positive(eps, "eps")
    check_iterations(passes, "passes")
    if passes < 2:
        raise OptionError(f"passes must be >= 2 (outputs are compared across passes), got {passes}")
    check_iterations(trials, "trials")
    margin = _fraction(margin, "margin")
    max_fraction = _fraction(max_fraction, "max_fraction")
    if chance is not None:
        check_positive(chance, "chance", allow_zero=True)
    groups = {k: _as_list(v, f"results[{k!r}]") for k, v in results.items()}
    p = prepare(model, x, y)
    _same_inputs(groups, p.x)
    clf, xs, ys = p.clf, p.x, p.y
    for k, rs in groups.items():
        for r in rs:
            if not torch.equal(r.y.to(ys.device), ys):
                raise InputError(f"results[{k!r}] ({r.attack}) has other labels than y: run every attack with the "
                                 "same labels")

    out = [_randomized(clf, xs, passes, RANDOMIZED_TOL, batch_size), _probabilities(clf, xs, batch_size),
           _gradients(clf, xs, ys, ("ce", "cw"), max_fraction, batch_size)]
    white = groups.get("white")
    if white and "black" in groups:
        out.append(blackbox_beats_whitebox(white, groups["black"], eps=eps, norm=norm, margin=margin))
    if robust_acc_by_eps is not None:
        out.append(no_convergence_to_zero(robust_acc_by_eps, chance=1 / p.num_classes if chance is None else chance,
                                          margin=CHANCE_MARGIN))
    if "short" in groups and "long" in groups:
        out.append(not_converged(groups["short"], groups["long"], eps=eps, norm=norm, margin=margin))
    iterative = groups.get("iterative") or white
    if "single_step" in groups and iterative:
        out.append(single_step_beats_iterative(groups["single_step"], iterative, eps=eps, norm=norm, margin=margin))
    if "transfer" in groups and white:
        broken = _transfer_broken(clf, ys, p.pred, groups["transfer"], eps, norm, batch_size)
        out.append(_beats("transfer_beats_whitebox", groups["transfer"], white, eps, norm, margin,
                          "the transfer attack", _FIX_TRANSFER, broken_weak=broken))
    reported = white or groups.get("iterative") or groups.get("long")
    if reported:
        gen = torch.Generator().manual_seed(int(seed))
        out.append(_noise_beats_attack(clf, xs, ys, p.pred, reported, eps, norm, trials, margin, gen, batch_size))
    for a in out:
        if a.fired:
            log.warning("alarm %s: %s", a.name, a.message)
    return out


__all__ = ["Alarm", "ALARMS", "ROLES", "run_alarms", "randomized", "probabilities", "gradients",
           "blackbox_beats_whitebox", "no_convergence_to_zero", "not_converged", "single_step_beats_iterative",
           "transfer_beats_whitebox", "noise_beats_attack"]
