"""stAdv: spatially transformed adversarial examples (Xiao, Zhu, Li, He, Liu & Song, "Spatially transformed
adversarial examples", ICLR 2018).

Instead of adding a perturbation, stAdv moves pixels. A per-pixel **flow field** ``f = (u, v)`` of shape
``(N, 2, H, W)`` (in pixels; ``u`` along the columns, ``v`` along the rows, shared by every channel) makes the
output pixel ``p`` a bilinear interpolation of the input at ``p + f(p)``:

    x_adv(p) = Σ_q x(q) · max(0, 1 − |p_x + u(p) − q_x|) · max(0, 1 − |p_y + v(p) − q_y|)

(:func:`apply_flow`; a sample point outside the image reads the model's lower bound — black — on the far
side of the border). The flow is found by minimising, per sample,

    L(f) = L_adv(x_adv) + τ · L_flow(f),
    L_adv = max(z_y − max_{k≠y} z_k, −κ)            (targeted: max(max_{k≠t} z_k − z_t, −κ)),
    L_flow(f) = Σ_p Σ_{q ∈ N(p)} √(‖u(p) − u(q)‖² + ‖v(p) − v(q)‖² + ε)

with ``N(p)`` the 4-neighbours of ``p`` inside the image (each neighbouring pair counted from both of its
pixels, as the sum over ``p`` and ``q ∈ N(p)`` reads), ``τ = 0.05`` and ``κ = 0`` by default (the paper's
settings) and ``ε`` a small constant that makes the square root differentiable at zero
(:func:`flow_loss`). The paper optimises with L-BFGS (scipy's L-BFGS-B here, ``optimizer="lbfgs"``); Adam in
torch is the alternative (``optimizer="adam"``).

**The size of a result** (``AttackResult.size``, threat model ``spatial``) is the flow loss of the flow found
*without* the smoothing ``ε`` (so a zero flow has size 0 and robust accuracy can be read at a budget of flow
loss); ``params["max_displacement"]`` holds, per sample, the largest displacement ``max_p ‖f(p)‖₂`` in pixels
and ``params["tau"]`` the ``τ`` of the returned flow.

**τ search** (``search_steps > 1``): per sample, ``τ`` is moved geometrically — multiplied by 10 after a success
(a larger weight on the flow loss gives a smoother, smaller flow), divided by 10 after a failure, and bisected
in log scale once both a succeeding and a failing ``τ`` are known; the sample keeps the fooling flow of the
smallest flow loss over all steps. ``search_steps=1`` is the paper's fixed ``τ``.

L-BFGS-B runs on one flat vector per batch (``joint=True``: the loss is the sum of the per-sample losses, which
are independent, so its minimiser is each sample's minimiser; one scipy call and one forward/backward pass per
evaluation for the whole batch) or one solve per sample (``joint=False``); ``benchmarks/spatial.py`` measures
both. Inputs must be images ``(N, C, H, W)`` with ``H, W >= 2``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import check_images, check_iterations, check_positive, prepare
from ..engine.protocol import Run, attack
from ..errors import OptionError

log = logging.getLogger(__name__)

#: the optimisers of stAdv
OPTIMIZERS = ("lbfgs", "adam")
#: the paddings of the flow warp: the model's lower bound beyond the border ("zeros": black), or the border pixel
PADDINGS = ("zeros", "border")


def base_grid(h: int, w: int, *, device, dtype) -> torch.Tensor:
    """``(1, H, W, 2)``: the identity sampling grid of ``grid_sample`` (``align_corners=True``: pixel centres)."""
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)[None]


def apply_flow(x: torch.Tensor, flow: torch.Tensor, *, padding: str = "zeros", fill: float = 0.0) -> torch.Tensor:
    """Warp images ``x`` ``(N, C, H, W)`` by the flow ``(N, 2, H, W)`` (pixels): the output at ``p`` is the
    bilinear interpolation of ``x`` at ``p + flow(p)`` (module docstring). ``padding="zeros"`` reads ``fill``
    outside the image, ``"border"`` the nearest border pixel. A zero flow returns ``x`` (to round-off)."""
    n, _, h, w = x.shape
    scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], device=x.device, dtype=x.dtype)
    grid = base_grid(h, w, device=x.device, dtype=x.dtype) + flow.permute(0, 2, 3, 1) * scale
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode=padding, align_corners=True)
    return out + fill


def flow_loss(flow: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample flow loss of the paper, ``Σ_p Σ_{q∈N(p)} √(Δu² + Δv² + eps)`` over the 4-neighbours inside
    the image (each neighbouring pair counted from both sides, i.e. twice). ``flow``: ``(N, 2, H, W)``."""
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]         # horizontal neighbours (N, 2, H, W-1)
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]         # vertical neighbours (N, 2, H-1, W)
    lx = (dx.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    ly = (dy.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    return 2.0 * (lx + ly)


def max_displacement(flow: torch.Tensor) -> torch.Tensor:
    """Per-sample largest displacement ``max_p ‖flow(p)‖₂`` in pixels."""
    return flow.pow(2).sum(1).sqrt().flatten(1).amax(1)


def adv_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, kappa: float) -> torch.Tensor:
    """The paper's adversarial loss, to be *minimised*, per sample: ``max(z_y − max_{k≠y} z_k, −κ)`` untargeted,
    ``max(max_{k≠t} z_k − z_t, −κ)`` targeted."""
    ref = target if target is not None else y
    z_ref = logits.gather(1, ref[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(ref, logits.shape[1]).bool(), float("-inf")).amax(1)
    margin = other - z_ref if target is not None else z_ref - other
    return margin.clamp_min(-kappa)


class _Problem:
    """The stAdv objective of one batch: value and gradient of ``Σ_i L_adv,i + τ_i·L_flow,i`` w.r.t. the flow."""

    def __init__(self, clf, x, y, target, tau, kappa, eps, padding, fill):
        self.clf, self.x, self.y, self.target = clf, x, y, target
        self.tau, self.kappa, self.eps, self.padding, self.fill = tau, kappa, eps, padding, fill

    def loss(self, flow: torch.Tensor, idx: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        x = self.x[idx]
        xa = apply_flow(x, flow, padding=self.padding, fill=self.fill)
        t = None if self.target is None else self.target[idx]
        la = adv_loss(self.clf(xa), self.y[idx], t, self.kappa)
        return la + self.tau[idx] * flow_loss(flow, self.eps)

    def value_grad(self, flow: torch.Tensor, idx=slice(None)) -> tuple[float, torch.Tensor]:
        flow = flow.detach().requires_grad_(True)
        with torch.enable_grad():
            total = self.loss(flow, idx).sum()
            (g,) = torch.autograd.grad(total, flow)
        return float(total.detach()), g


def _lbfgs(problem: _Problem, shape, idx, max_iter: int, dtype, device) -> torch.Tensor:
    """Minimise the problem over the flows of samples ``idx`` with scipy's L-BFGS-B (one flat vector)."""
    from scipy.optimize import minimize

    def fg(v: np.ndarray):
        f = torch.from_numpy(v).to(device=device, dtype=dtype).view(shape)
        val, g = problem.value_grad(f, idx)
        return val, g.detach().double().cpu().numpy().ravel()

    res = minimize(fg, np.zeros(int(np.prod(shape))), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "maxfun": 2 * max_iter})
    return torch.from_numpy(res.x).to(device=device, dtype=dtype).view(shape)


def _adam(problem: _Problem, shape, max_iter: int, lr: float, dtype, device) -> torch.Tensor:
    flow = torch.zeros(shape, device=device, dtype=dtype, requires_grad=True)
    opt = torch.optim.Adam([flow], lr=lr)
    with torch.enable_grad():
        for _ in range(max_iter):
            opt.zero_grad()
            problem.loss(flow).sum().backward()
            opt.step()
    return flow.detach()


@attack("stadv", threat="spatial", chunking="position", size_unit="flow loss",
        summary="stAdv: a smooth per-pixel flow field (Xiao et al., ICLR 2018)")
def stadv(model, x, y=None, *, tau: float = 0.05, kappa: float = 0.0, optimizer: str = "lbfgs",
          max_iter: int = 100, search_steps: int = 1, joint: bool = True, lr: float = 0.01,
          padding: str = "zeros", eps: float = 1e-8, target=None, batch_size: int = 128) -> Run:
    """stAdv (Xiao et al., ICLR 2018): the smoothest flow field that fools the model (module docstring).

    Args:
        model: an ``nn.Module`` returning logits, or a :class:`~georobust.Classifier` (eval mode).
        x: images ``(N, C, H, W)`` inside the model's bounds; y: labels (default: the model's predictions).
        tau: weight ``τ`` of the flow loss (the paper's 0.05); the start of the search when ``search_steps > 1``.
        kappa: confidence margin ``κ >= 0`` of the adversarial loss.
        optimizer: ``"lbfgs"`` (scipy L-BFGS-B, the paper's) or ``"adam"`` (torch).
        max_iter: iterations of the optimiser per τ.
        search_steps: values of τ tried per sample (1: the fixed τ of the paper).
        joint: L-BFGS-B on one flat vector for the whole batch (True) or one solve per sample.
        lr: learning rate of Adam (pixels).
        padding: ``"zeros"`` (the model's lower bound outside the image) or ``"border"``.
        eps: the smoothing ``ε`` inside the square roots of the flow loss.
        target: target labels (int or ``(N,)``) for the targeted variant.
        batch_size: samples optimised together.
    """
    check_positive(tau, "tau", allow_zero=True)
    check_positive(kappa, "kappa", allow_zero=True)
    check_positive(eps, "eps")
    check_positive(lr, "lr")
    check_iterations(max_iter, "max_iter")
    check_iterations(search_steps, "search_steps")
    check_positive(batch_size, "batch_size", integer=True)
    if optimizer not in OPTIMIZERS:
        raise OptionError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if padding not in PADDINGS:
        raise OptionError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    if not isinstance(joint, bool):
        raise OptionError(f"joint must be true or false, got {joint!r}")
    if search_steps > 1 and tau == 0:
        raise OptionError("a τ search multiplies and divides τ: start it at tau > 0")
    check_images(x, "stAdv", "moves pixels along a flow field", min_size=2)
    p = prepare(model, x, y, target=target)
    clf, xx = p.clf, p.x
    fill = float(clf.bounds[0])
    n, _, h, w = xx.shape
    dev, dt = xx.device, xx.dtype
    best_flow = torch.zeros(n, 2, h, w, device=dev, dtype=dt)
    best_size = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
    best_tau = torch.full((n,), float("nan"), dtype=torch.float64, device=dev)
    iterations = torch.zeros(n, dtype=torch.long, device=dev)
    todo = (p.pred == p.y) if p.target is None else torch.ones(n, dtype=torch.bool, device=dev)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        m = sl.stop - sl.start
        act = todo[sl]
        if not bool(act.any()):
            continue
        taus = torch.full((m,), float(tau), dtype=dt, device=dev)
        ok_tau = torch.zeros(m, dtype=torch.float64, device=dev)             # largest τ that fooled
        fail_tau = torch.full((m,), float("inf"), dtype=torch.float64, device=dev)  # smallest τ that failed
        xs = xx[sl]
        ys = p.y[sl]
        ts = None if p.target is None else p.target[sl]
        for _step in range(search_steps):
            prob = _Problem(clf, xs, ys, ts, taus, kappa, eps, padding, fill)
            if optimizer == "adam":
                flow = _adam(prob, (m, 2, h, w), max_iter, lr, dt, dev)
            elif joint:
                flow = _lbfgs(prob, (m, 2, h, w), slice(None), max_iter, dt, dev)
            else:
                flow = torch.cat([_lbfgs(prob, (1, 2, h, w), slice(i, i + 1), max_iter, dt, dev) for i in range(m)])
            iterations[sl] += max_iter
            with torch.no_grad():
                xa = apply_flow(xs, flow, padding=padding, fill=fill)
                pred = clf(xa).argmax(1)
                fooled = (pred == ts) if ts is not None else (pred != ys)
                size = flow_loss(flow, 0.0).double()
            better = fooled & act & (size < best_size[sl])
            bf = best_flow[sl]
            bf[better] = flow[better]
            best_size[sl] = torch.where(better, size, best_size[sl])
            best_tau[sl] = torch.where(better, taus.double(), best_tau[sl])
            td = taus.double()
            ok_tau = torch.where(fooled, torch.maximum(ok_tau, td), ok_tau)
            fail_tau = torch.where(~fooled, torch.minimum(fail_tau, td), fail_tau)
            both = (ok_tau > 0) & torch.isfinite(fail_tau)
            nxt = torch.where(both, (ok_tau.clamp_min(1e-300) * fail_tau.clamp_max(1e300)).sqrt(),
                              torch.where(fooled, td * 10.0, td / 10.0))
            taus = nxt.to(dt)
            log.debug("stadv batch %d step %d: %d/%d fooled", start // batch_size, _step, int((fooled & act).sum()),
                      int(act.sum()))
    with torch.no_grad():
        x_adv = torch.cat([apply_flow(xx[i:i + batch_size], best_flow[i:i + batch_size], padding=padding, fill=fill)
                           for i in range(0, n, batch_size)])
    found = torch.isfinite(best_size)
    # size: the flow loss of the returned flow (0 for samples left unchanged: failed or already misclassified)
    size = torch.where(found, best_size, torch.zeros_like(best_size))
    x_adv = torch.where(found.view(-1, 1, 1, 1), x_adv, xx)
    disp = torch.where(found, max_displacement(best_flow).double(), torch.zeros_like(best_size))
    return Run(p, x_adv, iterations=iterations, size=size,
               params={"max_displacement": disp.tolist(),
                       "tau": [float(t) if f else None for t, f in zip(best_tau.tolist(), found.tolist())]})
