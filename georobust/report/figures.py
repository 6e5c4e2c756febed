"""The report's figures, drawn with matplotlib (Agg) and embedded as ``data:image/png;base64`` URIs, so the HTML
file needs nothing beside it and no network to be read."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

#: line styles of the runs of a comparison (run 1, run 2, ...)
RUN_STYLES = ("-", "--", ":", "-.")


def png_uri(fig, dpi: int = 100, tight: bool = True) -> str:
    """``fig`` as a PNG data URI (the figure is closed)."""
    buf = io.BytesIO()
    try:
        if tight:
            fig.tight_layout()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_uri(path: str | Path) -> str:
    """A PNG file (a figure a command wrote) as a data URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def curve(series: Sequence[dict], *, xlabel: str, title: str = "", ylabel: str = "robust accuracy") -> str:
    """Robust accuracy versus budget: one line per entry of ``series`` (``label``, ``x``, ``y``, optional
    ``style`` — a matplotlib format — and ``step``: drawn as a right-continuous step function, the exact curve
    of a minimal-size attack read from its per-sample sizes)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for s in series:
        kw = {"label": s["label"]}
        if s.get("color"):
            kw["color"] = s["color"]
        if s.get("step"):
            ax.step(s["x"], s["y"], where="post", linestyle=s.get("style", "-"), linewidth=1.2, **kw)
        else:
            ax.plot(s["x"], s["y"], linestyle=s.get("style", "-"), marker=s.get("marker", "o"), markersize=4, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return png_uri(fig)


def _img(t: torch.Tensor):
    t = t.detach().float().cpu()
    if t.ndim == 1:  # vector data: a one-row strip
        return t[None].numpy(), "gray"
    if t.ndim == 3 and t.shape[0] == 1:
        return t[0].numpy(), "gray"
    if t.ndim == 3:
        return t.permute(1, 2, 0).clamp(0, 1).numpy(), None
    return t.numpy(), "gray"


def examples(x: torch.Tensor, x_adv: torch.Tensor, top: Sequence[str], bottom: Sequence[str], *,
             bounds: tuple[float, float] = (0.0, 1.0), title: str = "") -> str:
    """Original / perturbation / adversarial example, one column per sample (Szegedy et al.'s Figure 5 layout):
    the perturbation magnified to fill the grey scale around mid-grey (the factor on the left, each L2 norm
    above it). One mosaic in one axes: a grid of axes takes seconds to lay out."""
    k = int(x.shape[0])
    lo, hi = bounds
    span = (hi - lo) or 1.0
    xs, xa = ((x.double() - lo) / span).cpu(), ((x_adv.double() - lo) / span).cpu()
    r = xa - xs
    m = float(r.abs().max()) if r.numel() else 0.0
    mag = 0.5 / m if m > 0 else 1.0
    tiles = [[_img(t.clamp(0, 1)) for t in row] for row in (xs, (0.5 + mag * r).clamp(0, 1), xa)]
    im0 = tiles[0][0][0]
    h, w = im0.shape[:2]
    if h == 1:  # vector data: strips tall enough to see
        h = max(1, w // 8)
        tiles = [[(t.repeat(h, 0), c) for t, c in row] for row in tiles]
    color = im0.ndim == 3
    pad_x, pad_y = max(2, w // 6), max(6, h // 2)
    mosaic = torch.ones((3 * (h + pad_y) + pad_y // 2, k * (w + pad_x) - pad_x) + ((3,) if color else ()), dtype=torch.float64)
    for i, row in enumerate(tiles):
        for j, (t, _) in enumerate(row):
            y0, x0 = i * (h + pad_y) + pad_y, j * (w + pad_x)
            mosaic[y0:y0 + h, x0:x0 + w] = torch.as_tensor(t, dtype=torch.float64)
    s = 0.85 / (max(h, w) + pad_x)  # inches per pixel: about 0.85 inch per column
    width_in, height_in = mosaic.shape[1] * s, mosaic.shape[0] * s
    left, top_in = 0.35, (0.3 if title else 0.05)
    fig = plt.figure(figsize=(width_in + left + 0.05, height_in + top_in))
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((left / fw, 0.0, width_in / fw, height_in / fh))
    ax.imshow(mosaic.numpy(), cmap=None if color else "gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for j in range(k):
        cx = j * (w + pad_x) + w / 2
        norm_j = float((x_adv[j] - x[j]).double().norm())
        for i, label in enumerate((top[j], f"‖r‖₂={norm_j:.3g}", bottom[j])):
            ax.text(cx, i * (h + pad_y) + pad_y - 1, label, ha="center", va="bottom", fontsize=6.5)
    for i, name in enumerate(("original", f"perturbation ×{mag:.3g}", "adversarial")):
        ax.text(-pad_x, i * (h + pad_y) + pad_y + h / 2, name, rotation=90, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8.5)
    return png_uri(fig, tight=False)


def training(history: Sequence[dict]) -> str:
    """Loss terms and accuracies per epoch of a training record."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    for key in sorted({k for h in history for k in h} - {"epoch", "seconds", "lr"}):
        vals = [h.get(key) for h in history]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            ax.plot(epochs, vals, marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_uri(fig)
