"""Normal cross-sections of the decision boundary (Fawzi, Moosavi-Dezfooli & Frossard, "Robustness of
classifiers: from adversarial to random noise", NIPS 2016, Fig. 1 and 6; Moosavi-Dezfooli et al., ICLR 2018,
Fig. 2; Fawzi et al., "The robustness of deep networks: a geometrical perspective", IEEE SPM 2017).

The decision regions on the 2-D plane through ``x`` spanned by the unit boundary normal ``n = r*/‖r*‖`` (the
DeepFool direction) and a second unit direction ``u ⊥ n`` — random, another vector you give (another normal,
a universal perturbation), or the principal direction of largest curvature at the boundary point. The grid
``x + a·n + b·u`` is evaluated for all samples at once, in chunks; the boundary is where the label changes.
Axes are in input-space units; by default they span ``±scale·‖r*‖`` per sample. Points are not clipped into
the model's bounds (``clip=False``): the cross-section shows the function, not the box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .. import registry
from ..checks import check_positive, prepare
from ..errors import InputError, OptionError
from ..results import Saveable
from ._report import Report, median
from .curvature import _boundary_curvature, check_tangent_k
from .normals import _boundary_points

log = logging.getLogger(__name__)


@dataclass
class CrossSection(Saveable, Report):
    """``labels`` ``(N, A, B)``: the class at ``x + a_i·n + b_j·u``; ``a`` ``(N, A)`` and ``b`` ``(N, B)`` the
    coordinates; ``normal``/``second`` the unit directions ``(N, d)``; ``orig`` the class at ``x``; ``r_norm``
    ``‖r*‖``; ``second_kind`` how ``u`` was chosen."""

    labels: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    normal: torch.Tensor
    second: torch.Tensor
    orig: torch.Tensor
    r_norm: torch.Tensor
    converged: torch.Tensor
    second_kind: str

    def boundary_mask(self) -> torch.Tensor:
        """``(N, A, B)`` True where a grid cell's label differs from its right or lower neighbour."""
        lab = self.labels
        m = torch.zeros_like(lab, dtype=torch.bool)
        m[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        m[:, :, :-1] |= lab[:, :, :-1] != lab[:, :, 1:]
        return m

    def classes_in_section(self) -> list[list[int]]:
        """Per sample, the classes that appear on its cross-section (sorted)."""
        return [self.labels[i].unique().tolist() for i in range(self.labels.shape[0])]

    def summary(self) -> dict:
        c = self.converged
        return {"n": int(c.numel()), "converged": int(c.sum()), "resolution": "×".join(map(str, self.labels.shape[1:])),
                "second": self.second_kind, "median_r": median(self.r_norm, c),
                "mean_classes_in_section": sum(map(len, self.classes_in_section())) / max(1, c.numel()),
                "boundary_fraction": float(self.boundary_mask().double().mean())}

    def table(self) -> list[list[str]]:
        """Per sample: its class, ``‖r*‖`` and the classes in its cross-section."""
        rows = [["sample", "class", "‖r*‖", "classes in the section"]]
        for i, cls in enumerate(self.classes_in_section()):
            rows.append([str(i), str(int(self.orig[i])), f"{float(self.r_norm[i]):.4g}", ",".join(map(str, cls))])
        return rows

    def plot_data(self, label: str) -> CrossSection:
        """:func:`georobust.plots.cross_sections` draws one result (its samples side by side)."""
        return self


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)


def grid_labels(model, x: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
                chunk: int = 8192, clip: bool = False) -> torch.Tensor:
    """Labels ``(N, A, B)`` of ``x + a_i·e1 + b_j·e2`` for every sample (``a`` ``(N, A)``, ``b`` ``(N, B)``,
    directions flat ``(N, d)``), evaluated in chunks of ``chunk`` points under inference mode."""
    n, na, nb = x.shape[0], a.shape[1], b.shape[1]
    xf = x.flatten(1)
    total = na * nb
    flat_ab = torch.stack(torch.meshgrid(torch.arange(na, device=x.device), torch.arange(nb, device=x.device),
                                         indexing="ij"), -1).reshape(total, 2)
    out = torch.empty(n, total, dtype=torch.long, device=x.device)
    per = max(1, chunk // n)
    lo, hi = model.bounds
    with torch.inference_mode():
        for s in range(0, total, per):
            ij = flat_ab[s : s + per]
            ca, cb = a[:, ij[:, 0]], b[:, ij[:, 1]]  # (N, P)
            pts = xf[:, None, :] + ca[..., None] * e1[:, None, :] + cb[..., None] * e2[:, None, :]
            if clip:
                pts = pts.clamp(lo, hi)
            p = pts.shape[1]
            out[:, s : s + p] = model(pts.reshape(n * p, *x.shape[1:])).argmax(1).reshape(n, p)
    return out.reshape(n, na, nb)


@registry.analyses.register(
    "cross-section", summary="normal cross-sections of the decision boundary (normal × a second direction)",
    plot="cross_sections", plot_file="cross_sections.png")
def cross_section(model, x, y=None, *, second="random", resolution: int | tuple[int, int] = 101,
                  scale: float | tuple[float, float] = (2.0, 2.0), seed: int = 0, softplus_beta: float | None = None,
                  overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10, clip: bool = False,
                  chunk: int = 8192) -> CrossSection:
    """Normal cross-sections at ``x``: the decision regions on the plane of the boundary normal ``r*/‖r*‖`` and
    a second direction ``u``.

    Args:
        second: ``"random"`` (uniform unit vector, seeded), ``"curvature"`` (the principal direction of
            largest curvature at ``x + r*``; use ``softplus_beta`` for a ReLU model, whose curvature is
            zero), or a tensor ``(N, ...)`` of directions (another normal, a universal perturbation
            broadcast to ``(N, ...)``). ``u`` is orthogonalised against the normal and normalised.
        resolution: grid points along ``n`` and ``u`` (``A``, ``B``).
        scale: the half-widths of the axes in multiples of each sample's ``‖r*‖``.
        clip: clamp the grid points into the model's bounds (default: no, the function itself is shown).
    """
    ra, rb = (resolution, resolution) if isinstance(resolution, int) else resolution
    sa, sb = (scale, scale) if isinstance(scale, (int, float)) else scale
    for v, nme in ((ra, "resolution"), (rb, "resolution")):
        check_positive(v, nme, integer=True)
    check_positive(sa, "scale")
    check_positive(sb, "scale")
    if not isinstance(second, torch.Tensor) and (not isinstance(second, str) or second not in ("random", "curvature")):
        raise OptionError(f"second must be 'random', 'curvature' or a tensor of directions, got {second!r}")
    if isinstance(second, str) and second == "curvature" and softplus_beta is not None:
        check_positive(softplus_beta, "softplus_beta")
    p = prepare(model, x, y)
    n, d = p.n, p.x[0].numel()
    if isinstance(second, torch.Tensor):
        if second.shape[0] == 1 and n > 1:
            second = second.expand(n, *second.shape[1:])
        if second.shape[0] != n or second[0].numel() != d:
            raise InputError(f"second must have shape (N, ...) with {n} rows of {d} values, got {tuple(second.shape)}")
    elif second == "curvature":
        check_tangent_k(1, d)
    return _cross_section(p.clf, p.x, p.pred, second=second, resolution=(ra, rb), scale=(sa, sb), seed=seed,
                          softplus_beta=softplus_beta, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
                          clip=clip, chunk=chunk)


def _cross_section(clf, x: torch.Tensor, pred: torch.Tensor, *, second, resolution: tuple[int, int],
                   scale: tuple[float, float], seed: int, softplus_beta: float | None, overshoot: float,
                   max_iter: int, candidates: int, clip: bool, chunk: int) -> CrossSection:
    """:func:`cross_section` on inputs already validated (``clf`` a validated classifier, ``pred`` its clean
    predictions on ``x``; ``second`` ``"random"``, ``"curvature"`` or a tensor of ``N`` directions)."""
    (ra, rb), (sa, sb) = resolution, scale
    n, d = x.shape[0], x[0].numel()
    bp = _boundary_points(clf, x, pred, overshoot=overshoot, max_iter=max_iter, candidates=candidates, clip=clip)
    rn = bp.r_norm
    normal = _unit(bp.r.flatten(1))
    if isinstance(second, torch.Tensor):
        u = second.reshape(n, d).to(x.device, x.dtype)
        kind = "given"
    elif second == "random":
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(n, d, generator=gen).to(x.device, x.dtype)
        kind = "random"
    else:
        bc = _boundary_curvature(clf, x, pred, k=1, steps=None, seed=seed, softplus_beta=softplus_beta,
                                 directions=True, overshoot=overshoot, max_iter=max_iter, candidates=candidates,
                                 clip=clip, batch_size=256)
        u = bc.directions[:, 0]
        kind = "curvature" if softplus_beta is None else f"curvature (softplus β={softplus_beta:g})"
    u = _unit(u - (u * normal).sum(1, keepdim=True) * normal)
    ref = torch.where(bp.converged & (rn > 0), rn, torch.ones_like(rn))
    a = torch.linspace(-1, 1, ra, device=x.device, dtype=x.dtype)[None] * (sa * ref)[:, None]
    b = torch.linspace(-1, 1, rb, device=x.device, dtype=x.dtype)[None] * (sb * ref)[:, None]
    labels = grid_labels(clf, x, normal, u, a, b, chunk=chunk, clip=clip)
    return CrossSection(labels=labels, a=a, b=b, normal=normal, second=u, orig=pred, r_norm=rn,
                        converged=bp.converged, second_kind=kind)
