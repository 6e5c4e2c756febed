"""Square attack: score-based random search in the L∞ and L2 balls (Andriushchenko, Croce, Flammarion & Hein,
"Square attack: a query-efficient black-box adversarial attack via random search", ECCV 2020).

The attack sees the model only through a counting :class:`~georobust.engine.oracle.ScoreOracle` (scores, never
gradients), so it is blind to gradient masking; it is the score-based member of AutoAttack (Croce & Hein,
ICML 2020). Every sample keeps its best point ``x̂`` and its loss; each iteration proposes one random change
of ``x̂`` localised in a square window of side ``s`` (the same window in every channel), queries it once and
keeps it if the loss improved or the label flipped. The side shrinks with the iteration: ``s = round(√(p·h·w))``
with ``p`` following the paper's schedule (:func:`square_p`).

**L∞** (the paper's Algorithm 2). Start: vertical stripes, ``x̂ = x + ε·σ`` with one random sign ``σ`` per
channel and column. Proposal: the window is set to ``x ± ε``, one random sign per channel — every proposal is a
vertex of the ε-cube (clipped to the box).

**L2** (Algorithm 3). Start: a grid of ``⌊h/5⌋``-squares, each holding the centre-surround profile ``η`` (two
halves of opposite sign, each the sum of nested boxes weighted ``1/(k+1)²`` around its centre) times a random
sign per channel, rescaled to ``‖δ‖₂ = ε``. Proposal: with two random windows ``W₁, W₂``, the mass of ``δ`` in
``W₁ ∪ W₂`` (per channel) plus what is left of the budget (``(ε² − ‖δ‖²)/c``) moves into ``W₁`` as a new
``η``-profile (random sign per channel) added to the normalised old content of ``W₁``; ``W₂`` is zeroed; ``δ``
is rescaled to ``‖δ‖₂ = ε``. The side is odd and at least 3.

What differs from the paper's description, on purpose: the windows are drawn *per sample* (the reference code
draws one window per batch); a proposal that leaves ``x̂`` unchanged is not redrawn but still queried (and
counted); the budget per channel uses the channel's own mass in ``W₁ ∪ W₂``. Inputs must be images
``(N, C, H, W)``.

**Queries** are counted exactly, per sample, by the oracle: the start is the first query, each iteration one
more, at most ``max_queries`` in all; a sample stops at its first misclassified point. Samples the model
already misclassifies are not attacked (0 queries). The loss is the C&W margin (``loss="margin"``, the paper's
untargeted choice) or the cross-entropy (``"ce"``); success is the arg-max leaving ``y`` and is re-verified by
the protocol on the model itself.
"""

from __future__ import annotations

import logging
import math

import torch

from ..checks import check_images, check_iterations, check_norm, check_positive, prepare
from ..core import ops
from ..core.losses import attack_loss
from ..engine.oracle import ScoreOracle
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)

#: losses of the Square attack: the name of the option → the loss of :func:`~georobust.core.losses.attack_loss`
SQUARE_LOSSES = {"margin": "cw", "ce": "ce"}

#: iterations (on the paper's 10,000-query scale) after which ``p`` is halved
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(iteration: int, max_queries: int, p_init: float = 0.8) -> float:
    """The fraction ``p`` of pixels a square covers at ``iteration`` (0-based): ``p_init`` halved after each of
    the paper's iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 (Andriushchenko et al. 2020, Sec. 4),
    the iteration rescaled to a 10,000-query budget (``⌊iteration/max_queries·10⁴⌋``), as AutoAttack runs it."""
    it = int(iteration / max_queries * 10_000)
    return p_init / 2 ** sum(it > h for h in P_HALVINGS)


def _box_profile(h: int, w: int, *, device, dtype) -> torch.Tensor:
    """``M(h, w)``: the sum of the nested boxes around the centre, box ``k`` weighted ``1/(k+1)²``."""
    ch, cw = h // 2, w // 2
    n = max(ch, cw) + 1
    dist = torch.maximum((torch.arange(h, device=device) - ch).abs()[:, None],
                         (torch.arange(w, device=device) - cw).abs()[None, :])
    weights = 1.0 / torch.arange(1, n + 1, device=device, dtype=dtype) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)          # tail[k] = Σ_{j ≥ k} 1/(j+1)²
    return tail[dist]


def _eta(s: int, gen: torch.Generator, *, device, dtype) -> torch.Tensor:
    """The paper's L2 window profile ``η`` (s × s): ``M`` on the top half, ``−M`` on the bottom half, unit
    L2 norm, transposed with probability 1/2."""
    e = torch.zeros(s, s, device=device, dtype=dtype)
    if s // 2:
        e[: s // 2] = _box_profile(s // 2, s, device=device, dtype=dtype)
    e[s // 2:] = -_box_profile(s - s // 2, s, device=device, dtype=dtype)
    e = e / e.norm()
    if bool(torch.rand((), generator=gen, device=device) > 0.5):
        e = e.t()
    return e


def _signs(shape, gen: torch.Generator, *, device, dtype) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype) * 2 - 1


class _Windows:
    """One ``s × s`` window per sample at random positions: masks, and reads/writes of its contents."""

    def __init__(self, m: int, h: int, w: int, s: int, gen: torch.Generator, device):
        self.s = s
        self.top = torch.randint(0, h - s + 1, (m,), generator=gen, device=device)
        self.left = torch.randint(0, w - s + 1, (m,), generator=gen, device=device)
        ar = torch.arange(s, device=device)
        self.rows = (self.top[:, None] + ar)[:, :, None]          # (m, s, 1)
        self.cols = (self.left[:, None] + ar)[:, None, :]         # (m, 1, s)
        self.batch = torch.arange(m, device=device)[:, None, None]
        self.h, self.w = h, w

    def mask(self) -> torch.Tensor:
        """``(m, 1, H, W)`` bool."""
        dev = self.top.device
        r = torch.arange(self.h, device=dev)[None, :]
        c = torch.arange(self.w, device=dev)[None, :]
        in_r = (r >= self.top[:, None]) & (r < self.top[:, None] + self.s)
        in_c = (c >= self.left[:, None]) & (c < self.left[:, None] + self.s)
        return (in_r[:, :, None] & in_c[:, None, :])[:, None]

    def get(self, t: torch.Tensor) -> torch.Tensor:
        """``(m, C, s, s)`` contents of the windows of ``t`` ``(m, C, H, W)``."""
        return t.permute(0, 2, 3, 1)[self.batch, self.rows, self.cols].permute(0, 3, 1, 2)

    def put(self, t: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``v`` ``(m, C, s, s)`` into the windows of ``t`` in place."""
        t.permute(0, 2, 3, 1)[self.batch, self.rows, self.cols] = v.permute(0, 2, 3, 1)


def _l2_init(x0: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """The paper's L2 start: a grid of ``⌊min(h, w)/5⌋``-squares of ``η`` with a random sign per channel."""
    m, c, h, w = x0.shape
    s = max(min(h, w) // 5, 1)
    delta = torch.zeros_like(x0)
    nh, nw = h // s, w // s
    oh, ow = (h - nh * s) // 2, (w - nw * s) // 2
    for i in range(nh):
        for j in range(nw):
            e = _eta(s, gen, device=x0.device, dtype=x0.dtype)
            sign = _signs((m, c, 1, 1), gen, device=x0.device, dtype=x0.dtype)
            delta[:, :, oh + i * s: oh + (i + 1) * s, ow + j * s: ow + (j + 1) * s] += e * sign
    return delta * (eps / ops.flat_norm(delta, "2").clamp_min(1e-12)).view(-1, 1, 1, 1)


def _l2_proposal(x0: torch.Tensor, xb: torch.Tensor, eps: float, s: int, gen: torch.Generator,
                 bounds: tuple[float, float]) -> torch.Tensor:
    """One L2 proposal per sample (Algorithm 3, module docstring)."""
    m, c, h, w = x0.shape
    delta = xb - x0
    w1 = _Windows(m, h, w, s, gen, x0.device)
    w2 = _Windows(m, h, w, s, gen, x0.device)
    union = w1.mask() | w2.mask()
    mass = (delta * union).pow(2).sum((2, 3), keepdim=True)                      # (m, c, 1, 1)
    rest = (eps ** 2 - ops.flat_norm(delta, "2").pow(2)).clamp_min(0).view(-1, 1, 1, 1) / c
    old = w1.get(delta)
    old = old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    new = _eta(s, gen, device=x0.device, dtype=x0.dtype) * _signs((m, c, 1, 1), gen, device=x0.device,
                                                                   dtype=x0.dtype) + old
    new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (rest + mass).sqrt()
    delta = delta.masked_fill(w2.mask(), 0.0)
    w1.put(delta, new)
    delta = delta * (eps / ops.flat_norm(delta, "2").clamp_min(1e-12)).view(-1, 1, 1, 1)
    return (x0 + delta).clamp(*bounds)


def _square_chunk(oracle: ScoreOracle, x0: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, *, eps: float,
                  norm: str, max_queries: int, p_init: float, loss: str, gen: torch.Generator,
                  bounds: tuple[float, float]) -> torch.Tensor:
    """Run the attack on the samples ``idx`` (clean inputs ``x0``); returns their final points."""
    m, c, h, w = x0.shape
    lo, hi = bounds
    dev, dt = x0.device, x0.dtype
    if norm == "inf":
        xb = (x0 + eps * _signs((m, c, 1, w), gen, device=dev, dtype=dt)).clamp(lo, hi)
    else:
        xb = (x0 + _l2_init(x0, eps, gen)).clamp(lo, hi)
    logits = oracle(xb, idx)
    best = attack_loss(logits, y, None, loss)
    done = logits.argmax(1) != y
    for it in range(max_queries - 1):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        xa, ba = x0[act], xb[act]
        p = square_p(it, max_queries, p_init)
        if norm == "inf":
            s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
            win = _Windows(act.numel(), h, w, s, gen, dev)
            vertex = (xa + eps * _signs((act.numel(), c, 1, 1), gen, device=dev, dtype=dt)).clamp(lo, hi)
            cand = torch.where(win.mask(), vertex, ba)
        else:
            s = max(round(math.sqrt(p * h * w)), 3)
            s = min(s + 1 - s % 2, h, w)
            cand = _l2_proposal(xa, ba, eps, s, gen, bounds)
        logits = oracle(cand, idx[act])
        val = attack_loss(logits, y[act], None, loss)
        adv = logits.argmax(1) != y[act]
        take = adv | (val > best[act])
        xb[act] = torch.where(take.view(-1, 1, 1, 1), cand, ba)
        best[act] = torch.where(take, val, best[act])
        done[act] = adv
    return xb


@attack("square", threat="bounded-lp", norms=("inf", "2"), chunking="remaining", access="scores")
def square(model, x, y=None, *, eps: float, norm="inf", max_queries: int = 5000, p_init: float = 0.8,
           loss: str = "margin", seed: int | None = 0, batch_size: int = 1024) -> Run:
    """Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), untargeted, L∞ or L2, scores only.

    Args:
        model: the classifier; the attack reaches it only through a counting :class:`ScoreOracle`.
        x: images ``(N, C, H, W)`` in the model's bounds; y: labels (default: the clean prediction).
        eps: the radius of the ball (``0``: nothing is queried, the inputs are returned).
        norm: ``"inf"`` or ``"2"``.
        max_queries: per-sample query budget (the start included); default 5,000 as in AutoAttack.
        p_init: the fraction of the image the first squares cover (0.8: AutoAttack's value, L∞ and L2).
        loss: ``"margin"`` (C&W margin, the paper's untargeted loss) or ``"ce"``.
        seed: seed of the random windows and signs (``None``: random).
        batch_size: samples attacked together (and the largest batch sent to the model).

    The result's ``queries`` holds the exact per-sample count; module docstring for the algorithm.
    """
    norm = check_norm(norm)
    check_positive(eps, "eps", allow_zero=True)
    check_iterations(max_queries, "max_queries")
    check_positive(p_init, "p_init")
    if p_init > 1:
        raise OptionError(f"p_init is a fraction of the image and must be in (0, 1], got {p_init!r}")
    if loss not in SQUARE_LOSSES:
        raise OptionError(f"unknown loss {loss!r} for the Square attack; choose one of {', '.join(SQUARE_LOSSES)}")
    check_positive(batch_size, "batch_size", integer=True)
    check_images(x, "The Square attack", "draws square windows of images", alternative="spsa")
    p = prepare(model, x, y)
    eps = float(eps)
    oracle = ScoreOracle.from_model(p.clf, p.n, budget=max_queries, batch_size=batch_size, device=p.x.device)
    x_adv = p.x.clone()
    run = Run(p, x_adv, queries=oracle.queries, params={"eps": eps, "norm": norm})
    if eps == 0:
        return run
    gen = ops.make_generator(p.x.device, seed)
    todo = (p.pred == p.y).nonzero().squeeze(1)   # already misclassified: reported with r = 0, never queried
    for first in range(0, todo.numel(), batch_size):
        idx = todo[first:first + batch_size]
        x_adv[idx] = _square_chunk(oracle, p.x[idx], p.y[idx], idx, eps=eps, norm=norm, max_queries=max_queries,
                                   p_init=float(p_init), loss=SQUARE_LOSSES[loss], gen=gen, bounds=p.clf.bounds)
    return run
