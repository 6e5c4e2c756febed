"""Perceptually aligned gradients: do a model's input gradients look like the object?

Tsipras, Santurkar, Engstrom, Turner & Madry ("Robustness may be at odds with accuracy", ICLR 2019, Fig. 2 and
Sec. 4) observe that the loss gradients ``∇ₓ ℓ(f(x), y)`` of adversarially trained networks are aligned with
perceptually relevant features (edges, the object's silhouette), while a standard network's look like noise;
and that large-ε *targeted* attacks on robust models produce images with features of the target class.
Santurkar, Tsipras, Tran, Ilyas, Engstrom & Madry ("Image synthesis with a single (robust) classifier",
NeurIPS 2019) use exactly that large-ε targeted PGD (L2) as a generator.

:func:`saliency` computes, for the same images and several models, side by side:

* the **input gradient** of the cross-entropy at ``(x, y)`` (``y``: the labels given, else the first model's
  predictions, the same for every model) and its **saliency map**, ``|∇ₓ ℓ|`` summed over channels;
* a **large-ε targeted PGD** image (default L2, ε = 3, all ``steps`` run, no early stop: the image keeps moving
  towards the target class, as in Santurkar et al.), and whether it reached the target (re-predicted);
* a **quantitative companion**, per image: the Pearson correlation of the saliency map with the image's
  **edge map** (the Sobel gradient magnitude of the channel mean, replicate padding: :func:`sobel_magnitude`)
  and with the **object's mask** (foreground = channel mean ``> mask_threshold``; on Fashion-MNIST, whose
  background is exactly 0, ``0.1`` keeps the garment and drops faint halo pixels: :func:`object_mask`).
  Aligned gradients give larger correlations; the papers' qualitative claim is AT > standard.

The edge correlation needs images ``(N, C, H, W)``; for vector inputs it is NaN (the mask correlation is
defined on any input). A correlation is NaN for an image whose map or reference is constant (e.g. a zero
gradient, or an image entirely above the threshold).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..checks import check_norm, check_positive, predict, prepare
from ..core.losses import loss_grad
from ..engine.pgd import pgd_kernel
from ..errors import InputError, OptionError
from ..results import Saveable
from ._report import Report, fmt

log = logging.getLogger(__name__)

TARGETS = ("next", "random", "least-likely")

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude ``sqrt(Gx² + Gy²)`` of the channel mean of images ``(N, C, H, W)`` (or
    ``(N, H, W)``), replicate padding (a border pixel sees its own value outside the image); returns
    ``(N, H, W)`` in ``x``'s dtype and device. ``Gx`` is the cross-correlation with ``[[-1,0,1],[-2,0,2],
    [-1,0,1]]`` (x to the right), ``Gy`` with its transpose (y down)."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(f"sobel_magnitude expects images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    g = x.mean(1, keepdim=True)
    kx = torch.tensor(_SOBEL_X, dtype=x.dtype, device=x.device)
    k = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3)
    d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)
    return d.pow(2).sum(1).sqrt()


def object_mask(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Foreground mask: the channel mean of images ``(N, C, H, W)`` above ``threshold`` → ``(N, H, W)`` bool;
    for vectors ``(N, D)``, ``x > threshold``."""
    return (x.mean(1) if x.ndim == 4 else x) > threshold


def saliency_map(grad: torch.Tensor) -> torch.Tensor:
    """``|∇ₓ ℓ|`` summed over channels: ``(N, C, H, W)`` → ``(N, H, W)``; other shapes elementwise ``|g|``."""
    return grad.abs().sum(1) if grad.ndim == 4 else grad.abs()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Pearson correlation of each row of ``a`` with the same row of ``b`` (each flattened from dim 1),
    computed in float64; NaN where a row is constant. Returns ``(N,)`` float64."""
    if a.shape[0] != b.shape[0] or a[0].numel() != b[0].numel():
        raise InputError(f"pearson: shapes {tuple(a.shape)} and {tuple(b.shape)} do not pair row by row")
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    r = (a * b).sum(1) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan")))


def _nanstats(t: torch.Tensor) -> tuple[float, float]:
    v = t[~t.isnan()].double()
    if v.numel() == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0


@dataclass
class Saliency(Saveable, Report):
    """Input gradients and large-ε targeted PGD images of ``M`` models on the same ``N`` inputs.

    ``grads`` and ``x_targeted`` are ``(M, N, ...)``; ``target_success``, ``edge_corr``, ``mask_corr`` are
    ``(M, N)`` (NaN: undefined, see the module docstring); ``labels`` name the models in that order."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor
    grads: torch.Tensor
    x_targeted: torch.Tensor
    target_success: torch.Tensor
    edge_corr: torch.Tensor
    mask_corr: torch.Tensor
    labels: list[str] = field(default_factory=list)
    eps: float = 3.0
    norm: str = "2"
    steps: int = 40
    mask_threshold: float = 0.1

    def saliency_maps(self) -> torch.Tensor:
        """``(M, N, H, W)`` (or ``(M, N, D)``): :func:`saliency_map` of each model's gradients."""
        return torch.stack([saliency_map(g) for g in self.grads])

    def per_model(self) -> dict[str, dict[str, float]]:
        out = {}
        for i, lab in enumerate(self.labels):
            em, es = _nanstats(self.edge_corr[i])
            mm, ms = _nanstats(self.mask_corr[i])
            out[lab] = {"edge_corr": em, "edge_corr_sd": es, "mask_corr": mm, "mask_corr_sd": ms,
                        "targeted_success": float(self.target_success[i].double().mean())}
        return out

    def summary(self) -> dict:
        s: dict = {"n": int(self.x.shape[0]), "models": ", ".join(self.labels), "eps": self.eps, "norm": self.norm,
                   "steps": self.steps, "mask_threshold": self.mask_threshold}
        for lab, d in self.per_model().items():
            for k, v in d.items():
                s[f"{lab}: {k}"] = v
        return s

    def table(self) -> list[list[str]]:
        rows = [["model", "edge corr (mean)", "edge corr (sd)", "mask corr (mean)", "mask corr (sd)",
                 f"targeted success (ε={self.eps:g})"]]
        for lab, d in self.per_model().items():
            rows.append([lab] + [fmt(d[k]) for k in ("edge_corr", "edge_corr_sd", "mask_corr", "mask_corr_sd",
                                                     "targeted_success")])
        return rows

    def plot_data(self, label: str):
        """Itself, the first model named ``label`` (the CLI's ``--model``): the grid needs all models."""
        return replace(self, labels=[label] + list(self.labels[1:]))


def _resolve_models(model, models, device) -> list[tuple[str, nn.Module]]:
    """``[(label, module)]``: the main model, then ``models`` (comma-separated shipped names, a sequence of
    names or modules, or a mapping label → name or module); names are loaded before any work."""
    from ..models import load_model, pretrained

    main = getattr(model, "name", None) or "model"
    if models is None or models == "" or models == []:
        return [(str(main), model)]
    if isinstance(models, str):
        items = [(n.strip(), n.strip()) for n in models.split(",") if n.strip()]
    elif isinstance(models, Mapping):
        items = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, Sequence):
        items = [((v if isinstance(v, str) else getattr(v, "name", None) or f"model{i + 2}"), v)
                 for i, v in enumerate(models)]
    else:
        raise OptionError(f"models must be comma-separated shipped model names, a list of names or modules, or a "
                          f"dict label -> module; got {type(models).__name__}")
    out = [(str(main), model)]
    for lab, m in items:
        if isinstance(m, str):  # a shipped name, or any spec the CLI's --model takes (zoo:NAME, a file, ...)
            m = load_model(m, device=device) if (":" in m or "." in m or "/" in m) else pretrained(m, device=device)
        elif not isinstance(m, nn.Module):
            raise OptionError(f"models: {lab!r} is a {type(m).__name__}, not a model name or torch.nn.Module")
        out.append((lab, m))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise OptionError(f"models: labels must differ, got {labels}; name the models (a dict label -> model)")
    return out


def _targets(target, y: torch.Tensor, k: int, logits_main: torch.Tensor | None, seed: int) -> torch.Tensor:
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < k:
            raise OptionError(f"target class {target} is out of range for {k} classes; use 0..{k - 1}")
        return torch.full_like(y, target)
    if target == "next":
        return (y + 1) % k
    if target == "random":
        g = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, k, (y.shape[0],), generator=g).to(y.device)
        return (y + shift) % k
    if target == "least-likely":
        return logits_main.argmin(1)
    raise OptionError(f"target must be a class index or one of {', '.join(TARGETS)}; got {target!r}")


@registry.analyses.register(
    "saliency",
    summary="Perceptually aligned gradients (Tsipras et al. 2019): input gradients, large-ε targeted PGD and "
            "their correlation with edges and the object's mask, per model",
    plot="saliency_grid", plot_file="saliency.png")
def saliency(model, x, y=None, *, models=None, eps: float = 3.0, norm: str = "2", steps: int = 40,
             step_size: float | None = None, target="next", mask_threshold: float = 0.1, seed: int = 0,
             batch_size: int = 256) -> Saliency:
    """Input gradients of the loss, large-ε targeted PGD images and their alignment with the image's edges and
    the object's mask, for ``model`` and ``models`` side by side (Tsipras et al., ICLR 2019; Santurkar et al.,
    NeurIPS 2019). See the module docstring.

    Args:
        models: more models on the same inputs: comma-separated shipped names or model specs
            (``"lenet-fmnist-at,lenet-fmnist-cure"``, ``zoo:NAME``, a ``.safetensors`` file; CLI
            ``-o models=...``), a list of them or of modules, or a dict label → name or module.
        eps, norm, steps, step_size: the targeted PGD (L2 or L∞; step size default ``2.5·eps/steps``).
        target: ``"next"`` (``(y + 1) mod K``), ``"random"`` (seeded, never ``y``), ``"least-likely"`` (the
            first model's smallest logit), or a class index.
        mask_threshold: foreground = channel mean above it (in the model's input units).
    """
    norm = check_norm(norm)
    check_positive(eps, "eps")
    check_positive(steps, "steps", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    if step_size is not None:
        check_positive(step_size, "step_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():  # a class index given as text (CLI -o)
        target = int(target)
    if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)):
        raise OptionError(f"mask_threshold must be a number, got {mask_threshold!r}")
    if not (isinstance(target, int) and not isinstance(target, bool)) and target not in TARGETS:
        raise OptionError(f"target must be a class index or one of {', '.join(TARGETS)}; got {target!r}")
    p = prepare(model, x, y)
    lo, hi = p.clf.bounds
    if not lo <= mask_threshold < hi:
        raise OptionError(f"mask_threshold {mask_threshold} is outside the model's bounds [{lo}, {hi}): every "
                          "pixel would be background or foreground; choose a value inside them")
    named = _resolve_models(p.clf, models, p.x.device)
    preps = [p] + [prepare(m, p.x, p.y) for _, m in named[1:]]
    for (lab, _), q in zip(named, preps):
        if q.num_classes != p.num_classes:
            raise OptionError(f"models: {lab} has {q.num_classes} classes, the first model {p.num_classes}")
    logits_main = None
    if target == "least-likely":
        with torch.inference_mode():
            logits_main = torch.cat([p.clf(p.x[i:i + batch_size]) for i in range(0, p.n, batch_size)])
    tgt = _targets(target, p.y, p.num_classes, logits_main, seed)
    return _saliency(named, preps, tgt, eps=eps, norm=norm, steps=steps,
                     step_size=step_size if step_size is not None else 2.5 * eps / steps,
                     mask_threshold=float(mask_threshold), batch_size=batch_size)


def _saliency(named, preps, tgt, *, eps, norm, steps, step_size, mask_threshold, batch_size) -> Saliency:
    """Trusting internal of :func:`saliency`: inputs, labels and models already validated."""
    p = preps[0]
    x, y = p.x, p.y
    image = x.ndim == 4
    edges = sobel_magnitude(x) if image else None
    mask = object_mask(x, mask_threshold).to(x.dtype)
    grads, advs, succ, ecorr, mcorr = [], [], [], [], []
    for (lab, _), q in zip(named, preps):
        clf = q.clf
        g_parts, a_parts = [], []
        for i in range(0, p.n, batch_size):
            sl = slice(i, i + batch_size)
            g, _, _ = loss_grad(clf, x[sl], y[sl])  # ascent direction of CE(f(x), y)
            g_parts.append(g)
            a_parts.append(pgd_kernel(clf, x[sl], y[sl], eps=eps, norm=norm, steps=steps, step_size=step_size,
                                      bounds=clf.bounds, target=tgt[sl]))
        g, xa = torch.cat(g_parts), torch.cat(a_parts)
        s = saliency_map(g)
        grads.append(g)
        advs.append(xa)
        succ.append(predict(clf, xa, batch_size) == tgt)
        ecorr.append(pearson(s, edges) if image else torch.full((p.n,), float("nan"), dtype=torch.float64,
                                                                 device=x.device))
        mcorr.append(pearson(s, mask))
        log.info("saliency %s: edge corr %.3f, mask corr %.3f, targeted success %.3f", lab,
                 _nanstats(ecorr[-1])[0], _nanstats(mcorr[-1])[0], float(succ[-1].double().mean()))
    return Saliency(x=x.detach(), y=y, target=tgt, grads=torch.stack(grads), x_targeted=torch.stack(advs),
                    target_success=torch.stack(succ), edge_corr=torch.stack(ecorr), mask_corr=torch.stack(mcorr),
                    labels=[lab for lab, _ in named], eps=float(eps), norm=norm, steps=int(steps),
                    mask_threshold=mask_threshold)
