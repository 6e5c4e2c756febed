"""Every matplotlib figure of the toolkit, one function each. Each writes a PNG and returns its path.

The Agg backend is used so that figures are written without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _img(t: torch.Tensor):
    t = t.detach().float().cpu()
    if t.ndim == 1:  # vector data: show as a 1-row strip
        return t[None].numpy(), "gray"
    if t.shape[0] == 1:
        return t[0].numpy(), "gray"
    return t.permute(1, 2, 0).clamp(0, 1).numpy(), None


def robust_accuracy_curve(ev, path) -> Path:
    """Robust accuracy versus ε for each attack of an :class:`~georobust.evaluation.Evaluation`."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, accs in ev.robust.items():
        ax.plot(ev.eps, accs, marker="o", label=name)
    ax.plot(ev.eps, ev.worst_case, "k--", label="worst case")
    ax.set_xlabel(f"ε (L{'∞' if ev.norm == 'inf' else ev.norm})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{ev.model} on {ev.data} (n={ev.n}, clean {ev.clean_accuracy:.3f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def adversarial_examples(result, path, *, n: int = 6, classes: Sequence[str] | None = None,
                         magnify: float | None = None) -> Path:
    """Originals, perturbations (magnified, shifted to mid-grey) and adversarial examples with labels —
    the layout of Szegedy et al.'s Figure 5. Successful examples are shown first."""
    order = torch.argsort(result.success.to(torch.int8), descending=True, stable=True)[:n]
    k = len(order)
    fig, axes = plt.subplots(3, k, figsize=(1.6 * k, 5), squeeze=False)
    r = result.perturbation
    if magnify is None:
        m = float(r[order].abs().max())
        magnify = 0.5 / m if m > 0 else 1.0
    name = (lambda c: classes[c] if classes is not None and c < len(classes) else str(c))
    for j, i in enumerate(order.tolist()):
        for row, (t, title) in enumerate((
            (result.x[i], f"{name(int(result.label_clean[i]))}"),
            (0.5 + magnify * r[i], f"×{magnify:.3g}, ‖r‖₂={float(r[i].norm()):.3g}"),
            (result.x_adv[i], f"{name(int(result.label_adv[i]))}{'' if result.success[i] else ' (failed)'}"),
        )):
            im, cmap = _img(t.clamp(0, 1) if row == 1 else t)
            ax = axes[row][j]
            ax.imshow(im, cmap=cmap, vmin=0, vmax=1, aspect="auto" if im.ndim == 2 and im.shape[0] == 1 else None)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    axes[0][0].text(-0.3, 0.5, "original", transform=axes[0][0].transAxes, rotation=90, va="center", fontsize=8)
    axes[1][0].text(-0.3, 0.5, "perturbation", transform=axes[1][0].transAxes, rotation=90, va="center", fontsize=8)
    axes[2][0].text(-0.3, 0.5, "adversarial", transform=axes[2][0].transAxes, rotation=90, va="center", fontsize=8)
    fig.suptitle(f"{result.attack}: success {result.success_rate:.1%}", fontsize=9)
    return _save(fig, path)


def training_curves(history: list[dict], path) -> Path:
    """Loss terms and accuracies per epoch of a ``fit`` run."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h} - {"epoch", "seconds", "lr"}):
        vals = [h.get(key) for h in history]
        if all(isinstance(v, (int, float)) for v in vals):
            ax.plot(epochs, vals, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
