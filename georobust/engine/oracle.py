"""Label-only access to a classifier for decision-based (black-box) attacks, with exact query counting.

A decision-based attack (Brendel et al., ICLR 2018; QFool, Liu et al., ICCV 2019; HopSkipJump, Chen et al.,
IEEE S&P 2020) may only ask "which label does the model give this input?". :class:`LabelOracle` is the
only handle such an attack receives: it answers labels, never logits or gradients, and counts every query
*per sample* (the attack says which sample each queried input belongs to). An optional per-sample budget
is enforced: a query beyond it raises :class:`QueryBudgetExceeded` instead of being answered.
:class:`ScoreOracle` is the same for score-based attacks (Square, SPSA): it answers scores (logits), counted
the same way.

:class:`DecisionProblem` bundles the oracle with the clean inputs, the labels (or targets) and the box, and
provides the batched building blocks shared by the decision-based attacks: the adversarial criterion, the
initial adversarial point, and bisection along a one-parameter path — each over an active set of samples,
each query counted, none beyond the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..checks import check_labels, check_x, prepare
from ..core.ops import bcast
from ..errors import GeorobustError, InputError, ModelError

log = logging.getLogger(__name__)


class QueryBudgetExceeded(GeorobustError, RuntimeError):
    """A black-box attack asked the oracle more queries for a sample than its budget allows."""


class _CountingOracle:
    """Per-sample query counting with an optional budget, shared by :class:`LabelOracle` and
    :class:`ScoreOracle`: ``oracle(inputs, idx)`` counts one query per input against sample ``idx[j]`` — a call
    that would exceed any sample's budget raises :class:`QueryBudgetExceeded` and counts nothing — then answers
    through :meth:`_answer`."""

    what = "oracle"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int, *, bounds=(0.0, 1.0),
                 budget: int | None = None, batch_size: int = 4096, device=None):
        if not callable(fn):
            raise ModelError(f"a {self.what} needs a callable, got {type(fn).__name__}")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise InputError(f"the query budget must be an integer >= 1 (or None), got {budget!r}")
        self._fn = fn
        self.n = int(n)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.budget = budget
        self.batch_size = int(batch_size)
        self.queries = torch.zeros(self.n, dtype=torch.long, device=device)

    def _count(self, xq: torch.Tensor, idx: torch.Tensor) -> None:
        if xq.shape[0] != idx.shape[0]:
            raise InputError(f"{xq.shape[0]} queries but {idx.shape[0]} sample indices")
        counts = torch.zeros_like(self.queries).index_add_(0, idx, torch.ones_like(idx))
        if self.budget is not None and bool(((self.queries + counts) > self.budget).any()):
            raise QueryBudgetExceeded(f"a query beyond the per-sample budget of {self.budget} was asked")
        self.queries += counts

    def remaining(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-sample queries left under the budget (a large number if unlimited)."""
        if self.budget is None:
            return torch.full_like(idx, 2**62)
        return self.budget - self.queries[idx]


class LabelOracle(_CountingOracle):
    """Label oracle over a batch of ``n`` samples: ``oracle(inputs, idx) -> labels``, counted per sample.

    Args:
        fn: a callable mapping a batch of inputs to int labels ``(m,)`` (a label-only black box), or to
            logits ``(m, K)`` (then the arg-max is taken; the attack still only sees labels).
        n: the number of samples under attack; ``idx`` in every call names, per queried input, the sample
            it is spent on.
        bounds: the input box of the model.
        budget: per-sample query budget (``None``: unlimited); exceeding it raises.
        batch_size: the largest batch sent to ``fn`` at once (counting is independent of it).
    """

    what = "label oracle"

    @classmethod
    def from_model(cls, model: nn.Module, n: int, **kw) -> LabelOracle:
        """An oracle answering ``argmax model(x)`` (under inference mode) — the model itself stays hidden."""
        bounds = getattr(model, "bounds", (0.0, 1.0))

        def labels(xq: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(xq).argmax(1)

        kw.setdefault("bounds", bounds)
        return cls(labels, n, **kw)

    def _labels(self, xq: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, xq.shape[0], self.batch_size):
            o = self._fn(xq[i:i + self.batch_size])
            o = torch.as_tensor(o, device=xq.device)
            if o.ndim == 2:
                o = o.argmax(1)
            if o.ndim != 1 or o.shape[0] != min(self.batch_size, xq.shape[0] - i):
                raise ModelError(f"the label oracle must return labels (m,) or logits (m, K); got shape "
                                 f"{tuple(o.shape)} for {min(self.batch_size, xq.shape[0] - i)} inputs")
            out.append(o.long())
        return torch.cat(out)

    def __call__(self, xq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Labels of the inputs ``xq`` (``(m, ...)``), each spent on sample ``idx[j]``; counts ``m`` queries."""
        if xq.shape[0] == 0 and idx.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=xq.device)
        self._count(xq, idx)
        return self._labels(xq.detach())


class ScoreOracle(_CountingOracle):
    """Score access over a batch of ``n`` samples: ``oracle(inputs, idx) -> scores (m, K)``, counted per sample.

    The handle of a score-based black-box attack (Square, Andriushchenko et al., ECCV 2020; SPSA, Uesato et
    al., ICML 2018): it answers the model's scores (logits) and nothing else — no gradients — and counts
    every queried input against the sample ``idx[j]`` it is spent on, exactly as :class:`LabelOracle` does.
    A query beyond the per-sample ``budget`` raises :class:`QueryBudgetExceeded` instead of being answered
    (the whole call is refused, nothing is counted).

    Args:
        fn: a callable mapping a batch of inputs ``(m, ...)`` to scores ``(m, K)``.
        n: the number of samples under attack.
        bounds: the input box of the model.
        budget: per-sample query budget (``None``: unlimited).
        batch_size: the largest batch sent to ``fn`` at once (counting is independent of it).
    """

    what = "score oracle"

    @classmethod
    def from_model(cls, model: nn.Module, n: int, **kw) -> ScoreOracle:
        """An oracle answering ``model(x)`` (under inference mode) — the model itself stays hidden."""

        def scores(xq: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(xq)

        kw.setdefault("bounds", getattr(model, "bounds", (0.0, 1.0)))
        return cls(scores, n, **kw)

    def _scores(self, xq: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, xq.shape[0], self.batch_size):
            m = min(self.batch_size, xq.shape[0] - i)
            o = torch.as_tensor(self._fn(xq[i:i + self.batch_size]), device=xq.device)
            if o.ndim != 2 or o.shape[0] != m:
                raise ModelError(f"the score oracle must return scores (m, K); got shape {tuple(o.shape)} "
                                 f"for {m} inputs")
            out.append(o)
        return torch.cat(out)

    def __call__(self, xq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Scores of the inputs ``xq`` (``(m, ...)``), each spent on sample ``idx[j]``; counts ``m`` queries."""
        if xq.shape[0] == 0:
            raise InputError("a score query needs at least one input")
        self._count(xq, idx)
        return self._scores(xq.detach())


class _OracleVerifier:
    """Duck-typed stand-in for a model in :func:`~georobust.results.make_result`: re-runs the *user's*
    label function (not the counting oracle) and returns one-hot scores, so success is still verified."""

    def __init__(self, fn, bounds):
        self._fn = fn
        self.bounds = bounds

    def __call__(self, xq: torch.Tensor) -> torch.Tensor:
        o = torch.as_tensor(self._fn(xq), device=xq.device)
        if o.ndim == 1:
            o = torch.nn.functional.one_hot(o.long(), int(o.max()) + 1).float()
        return o


@dataclass
class DecisionProblem:
    """What a decision-based attack works with: the oracle, the clean inputs, the goal, the box."""

    oracle: LabelOracle
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        return self.oracle.bounds

    def clip(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(*self.bounds)

    def criterion(self, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return labels == self.target[idx] if self.target is not None else labels != self.y[idx]

    def adversarial(self, xq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Query ``xq`` (one input per entry of ``idx``); ``True`` where it meets the attack's goal."""
        return self.criterion(self.oracle(xq, idx), idx)

    def remaining(self, idx: torch.Tensor) -> torch.Tensor:
        return self.oracle.remaining(idx)

    def bisect(self, point: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lo: torch.Tensor,
               hi: torch.Tensor, idx: torch.Tensor, *, tol: float | torch.Tensor, relative: bool = False,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched bisection on a path ``t ↦ point(t, sel)``, ``point(lo)`` not adversarial, ``point(hi)`` adversarial.

        ``point(t, sel)`` returns the inputs at parameters ``t`` for the samples ``idx[sel]``. Each sample
        stops when ``hi − lo ≤ tol`` (``≤ tol·hi`` if ``relative``) or when its budget is spent. Returns
        the final ``(lo, hi, label at hi)`` (the label is ``labels`` — default ``−1``, unknown — where
        ``hi`` never moved).
        """
        lo, hi = lo.clone(), hi.clone()
        lab = labels.clone() if labels is not None else torch.full_like(idx, -1)
        tol_t = torch.as_tensor(tol, dtype=hi.dtype, device=hi.device).expand_as(hi)
        while True:
            width = hi - lo
            need = width > (tol_t * hi if relative else tol_t)
            need &= self.remaining(idx) > 0
            sel = need.nonzero().squeeze(1)
            if sel.numel() == 0:
                return lo, hi, lab
            mid = 0.5 * (lo[sel] + hi[sel])
            got = self.oracle(point(mid, sel), idx[sel])
            adv = self.criterion(got, idx[sel])
            hi[sel] = torch.where(adv, mid, hi[sel])
            lo[sel] = torch.where(adv, lo[sel], mid)
            lab[sel] = torch.where(adv, got, lab[sel])

    def bisect_segment(self, x_adv: torch.Tensor, idx: torch.Tensor, *, tol: float | torch.Tensor,
                       relative: bool = True, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bisection on the segment from the clean ``x[idx]`` to the adversarial ``x_adv``: the adversarial
        end point of the final bracket (a point on the adversarial side of the boundary) and its label."""
        x0 = self.x[idx]
        d = x_adv - x0

        def point(t, sel):
            return x0[sel] + bcast(t, d) * d[sel]

        one = torch.ones(idx.shape[0], device=x0.device, dtype=x0.dtype)
        _, hi, lab = self.bisect(point, torch.zeros_like(one), one, idx, tol=tol, relative=relative, labels=labels)
        return x0 + bcast(hi, d) * d, lab

    def noise_init(self, idx: torch.Tensor, *, generator: torch.Generator, scales: tuple[float, ...] = (),
                   tries: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First adversarial points: Gaussian noise of growing ``scales`` (relative to the box width) added
        to ``x`` (QFool), then up to ``tries`` uniform random images of the box (HopSkipJump's start).
        Returns ``(x_adv, found, label)`` for ``idx``; where not found, ``x_adv`` is ``x``."""
        x0 = self.x[idx]
        out = x0.clone()
        found = torch.zeros(idx.shape[0], dtype=torch.bool, device=x0.device)
        lab = torch.full_like(idx, -1)
        lo, hi = self.bounds
        for s in [*scales, *([None] * tries)]:
            sel = (~found & (self.remaining(idx) > 0)).nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            shape = (sel.numel(), *x0.shape[1:])
            if s is not None:
                noise = torch.randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)
                cand = self.clip(x0[sel] + s * (hi - lo) * noise)
            else:
                cand = lo + (hi - lo) * torch.rand(shape, generator=generator, device=x0.device, dtype=x0.dtype)
            got = self.oracle(cand, idx[sel])
            adv = self.criterion(got, idx[sel])
            hit = sel[adv]
            out[hit] = cand[adv]
            found[hit] = True
            lab[hit] = got[adv]
        return out, found, lab


def decision_setup(model, x, y, target, *, bounds, batch_size: int, budget: int | None):
    """Common preamble of the decision-based attacks.

    ``model`` is an ``nn.Module`` / :class:`~georobust.Classifier` (validated, then hidden behind a
    :class:`LabelOracle`) or any callable returning labels (then ``bounds`` gives the box). The clean label
    of every sample is the first query spent on it. Returns ``(problem, verifier, pred)``: the attack gets
    ``problem`` (the oracle, never the model); ``verifier`` re-runs the user's model for the result.
    """
    if isinstance(model, nn.Module):
        p = prepare(model, x, y, target=target)
        x, target = p.x, p.target
        y = y if y is None else p.y
        oracle = LabelOracle.from_model(p.clf, p.n, budget=budget, batch_size=batch_size, device=x.device)
        verifier = p.clf
    elif isinstance(model, LabelOracle) or callable(model):
        fn = model._fn if isinstance(model, LabelOracle) else model
        b = tuple(bounds) if bounds is not None else (model.bounds if isinstance(model, LabelOracle) else (0.0, 1.0))
        x = check_x(x, b).float()
        if y is not None:
            y = check_labels(y, x.shape[0]).to(x.device)
        if target is not None:
            if isinstance(target, int):
                target = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
            target = check_labels(target, x.shape[0], name="target").to(x.device)
        oracle = LabelOracle(fn, x.shape[0], bounds=b, budget=budget, batch_size=batch_size, device=x.device)
        verifier = _OracleVerifier(fn, oracle.bounds)
    else:
        raise ModelError(f"expected an nn.Module or a label function, got {type(model).__name__}")
    pred = oracle(x, torch.arange(x.shape[0], device=x.device))  # the clean labels: one query per sample
    if y is None:
        y = pred.clone()
    return DecisionProblem(oracle, x, y, target), verifier, pred
