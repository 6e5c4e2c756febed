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
    from .storage import atomic_target

    try:
        with atomic_target(path) as tmp:  # temp file + rename: never half a PNG
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
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
    """Robust accuracy versus ε for each attack of an :class:`~georobust.evaluation.Evaluation` (of a segmenter:
    mIoU versus ε, :func:`miou_curve`)."""
    if getattr(ev, "task", "") == "dense":
        return miou_curve(ev, path)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, accs in ev.robust.items():
        ax.plot(ev.eps, accs, marker="o", label=name)
    ax.plot(ev.eps, ev.worst_case, "k--", label="worst case")
    ax.set_xlabel(f"ε (L{'∞' if ev.norm == 'inf' else ev.norm})" if ev.norm in ("0", "1", "2", "inf")
                  else f"budget ({ev.norm})")  # a sized threat model (spatial): the unit of its sizes
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{ev.model} on {ev.data} (n={ev.n}, clean {ev.clean_accuracy:.3f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def adversarial_examples(result, path, *, n: int = 6, classes: Sequence[str] | None = None,
                         magnify: float | None = None) -> Path:
    """Originals, perturbations (magnified, shifted to mid-grey) and adversarial examples with labels —
    the layout of Szegedy et al.'s Figure 5. Successful examples are shown first. A segmentation result (task
    ``dense``) is drawn by :func:`segmentation_examples`."""
    if getattr(result, "task", "") == "dense":
        return segmentation_examples(result, path, n=n, classes=classes)
    if getattr(result, "threat", "") == "spatial":
        return spatial_examples(result, path, n=n, classes=classes)
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


def tradeoff(curves: dict[str, list[tuple[float, float, float]]], path) -> Path:
    """Clean vs robust accuracy as an objective's strength grows (eps of adversarial training, γ of CURE):
    ``curves[label] = [(strength, clean_accuracy, robust_accuracy), ...]``, each point annotated."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[2] for p in pts], [p[1] for p in pts], marker="o", label=label)
        for s, c, r in pts:
            ax.annotate(f"{s:g}", (r, c), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("robust accuracy")
    ax.set_ylabel("clean accuracy")
    ax.set_title("robustness vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def tradeoff_deep(curves: dict[str, list[tuple[float, float, float]]], points: dict[str, tuple[float, float]],
                  path, *, robust_label: str = "robust accuracy",
                  cascade: dict[str, list[tuple[float, float, float]]] | None = None) -> Path:
    """The Tsipras et al. (ICLR 2019) trade-off on one figure: ``curves[family] = [(strength, clean, robust)]``
    (a line per family, each point annotated with its strength), ``points[label] = (robust, clean)`` (single
    models, e.g. the shipped ones, as markers) and, optionally, ``cascade`` curves of the same form drawn dashed
    (robust accuracy from the cascade, a tighter upper bound than PGD's)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = {}
    for label, pts in curves.items():
        pts = sorted(pts)
        (line,) = ax.plot([p[2] for p in pts], [p[1] for p in pts], marker="o", label=label)
        colors[label] = line.get_color()
        for s, c, r in pts:
            ax.annotate(f"{s:g}", (r, c), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for label, pts in (cascade or {}).items():
        pts = sorted(pts)
        fam = label.rsplit(" cascade", 1)[0]
        ax.plot([p[2] for p in pts], [p[1] for p in pts], marker="x", ls="--", alpha=0.7, label=label,
                color=colors.get(fam, "black" if fam.startswith("shipped") else None))
    for (label, (r, c)), m in zip(points.items(), "s^vDP*"):
        ax.scatter([r], [c], marker=m, s=60, color="black" if label.startswith("shipped") else "gray",
                   zorder=3, label=label)
    ax.set_xlabel(robust_label)
    ax.set_ylabel("clean accuracy")
    ax.set_title("robustness vs accuracy (Tsipras et al. 2019)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def saliency_grid(result, path, *, n: int = 6, classes: Sequence[str] | None = None) -> Path:
    """Perceptually aligned gradients (Tsipras et al. 2019; Santurkar et al. 2019) side by side: one row per
    image; the image, then for each model its |input gradient of the loss| (per-image scale) and its
    large-ε targeted PGD image. ``result``: a :class:`~georobust.geometry.saliency.Saliency`."""
    m, k = len(result.labels), min(n, result.x.shape[0])
    fig, axes = plt.subplots(k, 1 + 2 * m, figsize=(1.3 * (1 + 2 * m), 1.4 * k + 0.4), squeeze=False)
    sal = result.saliency_maps()  # (M, N, H, W) or (M, N, D)
    for i in range(k):
        img, cmap = _img(result.x[i])
        axes[i, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[i, 0].set_title(_name(result.y[i], classes), fontsize=7)
        for j, lab in enumerate(result.labels):
            s = sal[j, i].detach().float().cpu()
            s = s / s.max().clamp_min(1e-12)
            axes[i, 1 + 2 * j].imshow(s.numpy() if s.ndim == 2 else s[None].numpy(), cmap="inferno", vmin=0, vmax=1)
            ta, tc = _img(result.x_targeted[j, i])
            axes[i, 2 + 2 * j].imshow(ta, cmap=tc, vmin=0, vmax=1)
            ok = bool(result.target_success[j, i])
            axes[i, 2 + 2 * j].set_title("→ " + _name(result.target[i], classes) + ("" if ok else " (missed)"),
                                         fontsize=6, color="black" if ok else "red")
            if i == 0:
                axes[i, 1 + 2 * j].set_title(f"{lab}\n|∇ₓ loss|", fontsize=6)
        for a in axes[i]:
            a.axis("off")
    norm = "L2" if result.norm == "2" else "L∞"
    fig.suptitle(f"input gradients and targeted PGD ({norm} ε={result.eps:g}, {result.steps} steps)", fontsize=8)
    return _save(fig, path)


def curvature_profiles(profiles: dict[str, Sequence[float]], path) -> Path:
    """Curvature profile per model: the largest |eigenvalues| of the input Hessian of the loss, by rank
    (log scale), as in Moosavi-Dezfooli et al., CVPR 2019, Fig. 2."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, vals in profiles.items():
        ax.semilogy(range(1, len(vals) + 1), [max(float(v), 1e-12) for v in vals], marker="o", label=label)
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("|eigenvalue| (mean over samples)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------- decision-boundary geometry
def loss_curvature_profiles(profiles: dict, path) -> Path:
    """Mean curvature profiles (sorted eigenvalues of the input Hessian of the loss, CURE Fig. 2), one line
    per model: ``profiles`` maps a name to a :class:`~georobust.geometry.curvature.CurvatureProfile`."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, p in profiles.items():
        v = p.mean_profile.detach().cpu()
        ax.plot(range(1, v.numel() + 1), v.numpy(), marker=".", label=name)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel(f"eigenvalue index (top {next(iter(profiles.values())).k}, then bottom)")
    ax.set_ylabel("mean eigenvalue of ∇²ₓ loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def boundary_curvatures(results: dict, path) -> Path:
    """Histogram of ``max |κ|·‖r*‖`` per sample (principal curvatures at the DeepFool boundary point relative
    to ``1/‖r*‖``), one per model: ``results`` maps a name to a ``BoundaryCurvature``."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, bc in results.items():
        v = bc.relative[bc.converged].detach().cpu().clamp_min(1e-8).log10()
        ax.hist(v.numpy(), bins=30, alpha=0.5, label=name)
    ax.axvline(0.0, color="k", ls="--", lw=1)
    ax.set_xlabel("log₁₀( max|κ| · ‖r*‖ )  (0: curvature radius = ‖r*‖)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _save(fig, path)


def cross_sections(cs, path, *, n: int = 6, classes: Sequence[str] | None = None, title: str = "") -> Path:
    """Normal cross-sections (NIPS 2016 Fig. 6 / ICLR 2018 Fig. 2): decision regions on the plane of the
    boundary normal (vertical axis) and the second direction, ``x`` at the centre, the boundary in black."""
    import numpy as np

    k = min(n, cs.labels.shape[0])
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.9), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for j in range(k):
        ax = axes[0][j]
        lab = cs.labels[j].cpu().numpy()
        a, b = cs.a[j].cpu().numpy(), cs.b[j].cpu().numpy()
        ax.imshow(lab, origin="lower", cmap=cmap, vmin=0, vmax=9, interpolation="nearest", aspect="auto",
                  extent=(b[0], b[-1], a[0], a[-1]), alpha=0.75)
        for c in np.unique(lab) if len(np.unique(lab)) > 1 else ():  # each region's outline: the boundary
            ax.contour(b, a, (lab == c).astype(float), levels=[0.5], colors="k", linewidths=0.8)
        ax.plot([0], [0], "k*", ms=8)
        ax.axhline(float(cs.r_norm[j]), color="w", ls=":", lw=0.8)
        name = (lambda c: classes[c] if classes is not None and c < len(classes) else str(c))
        ax.set_title(f"{name(int(cs.orig[j]))}, ‖r*‖={float(cs.r_norm[j]):.3g}", fontsize=8)
        ax.set_xlabel(f"{cs.second_kind} direction", fontsize=7)
        if j == 0:
            ax.set_ylabel("normal r*/‖r*‖", fontsize=7)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def subspace_ratios(results: dict, path) -> Path:
    """``‖r*_S‖/‖r*‖`` against ``m/d`` (mean ± std over samples) beside the ``√(d/m)`` law (NIPS 2016);
    ``results`` maps a name to a ``SubspaceRobustness``."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 4))
    qs = None
    for name, res in results.items():
        ok = res.converged & res.converged_full[:, None]
        ratio = (res.r_sub / res.r_norm[:, None]).cpu()
        mean = [float(ratio[ok[:, j], j].mean()) for j in range(len(res.ratios))]
        std = [float(ratio[ok[:, j], j].std()) for j in range(len(res.ratios))]
        ax.errorbar(res.ratios, mean, yerr=std, marker="o", capsize=3, label=name)
        qs = res.ratios
    q = np.geomspace(min(qs), 1.0, 50)
    ax.plot(q, np.sqrt(1 / q), "k--", label="√(d/m)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("m / d")
    ax.set_ylabel("‖r*_S‖ / ‖r*‖")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def normal_spectrum(results: dict, path) -> Path:
    """Singular values of the matrix of unit boundary normals against random unit vectors (ICLR 2018 Fig. 3),
    and the flat-model fooling rates; ``results`` maps a name to a ``NormalSpectrum``."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, ns in results.items():
        s, sr = ns.singular_values.cpu(), ns.random_singular_values.cpu()
        line = ax.plot(range(1, s.numel() + 1), (s / s[0]).numpy(), label=f"{name}: normals")[0]
        ax.plot(range(1, sr.numel() + 1), (sr / sr[0]).numpy(), ls="--", color=line.get_color(),
                label=f"{name}: random")
        ax2.plot(ns.dims, ns.fooling_subspace, marker="o", color=line.get_color(), label=f"{name}: span of top m")
        ax2.axhline(ns.fooling_isotropic, ls="--", color=line.get_color(), label=f"{name}: isotropic")
    ax.set_xscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value / largest")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("m (dimension of the random subspace)")
    ax2.set_ylabel("fooling rate")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    return _save(fig, path)


def norm_vs_queries(curves: dict, checkpoints: Sequence[int], path, *, floor: float | None = None,
                    title: str = "") -> Path:
    """Median L2 perturbation versus the number of label queries for decision-based attacks (QFool, ICCV 2019
    Fig. 4), ``curves`` mapping a name to the medians at ``checkpoints``; ``floor``: the white-box DeepFool norm."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, med in curves.items():
        ax.plot(list(checkpoints), list(med), marker="o", label=name)
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", label="DeepFool (white-box)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("queries")
    ax.set_ylabel("median ‖r‖₂")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def minimal_perturbations(results: dict, path, *, norm: str = "2") -> Path:
    """DeepFool's Tables 1–2 as a figure: per model, the fraction of samples fooled within ``‖r‖ ≤ ε`` for each
    minimal-perturbation attack; ``results`` maps a model name to ``{attack name: AttackResult}``."""
    import numpy as np

    models = list(results)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        for name, res in results[model].items():
            nrm = res.norms(norm)[res.success].double().sort().values.cpu().numpy()
            if len(nrm) == 0:
                continue
            frac = np.arange(1, len(nrm) + 1) / res.success.numel()
            ax.step(nrm, frac, where="post", label=f"{name} (ρ={float(res.summary()['rho' if norm == '2' else 'rho_inf']):.3f})")
        ax.set_xlabel(f"‖r‖{'₂' if norm == '2' else '∞'}")
        ax.set_ylabel("fraction fooled")
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def universal_perturbation(v: torch.Tensor, path, *, title: str | None = None) -> Path:
    """A universal perturbation ``v`` (one input's shape), rescaled to fill ``[0, 1]`` (mid-grey is zero) so
    its pattern is visible — CVPR 2017, Fig. 4."""
    v = v.detach().float().cpu()
    m = float(v.abs().max()) or 1.0
    img, cmap = _img(0.5 + 0.5 * v / m)
    fig, ax = plt.subplots(figsize=(3, 3.2))
    ax.imshow(img, cmap=cmap or "gray", vmin=0, vmax=1)
    ax.set_title(title or f"v (±{m:.3g} → black/white)", fontsize=8)
    ax.axis("off")
    return _save(fig, path)


def universal_examples(x: torch.Tensor, v: torch.Tensor, label_clean, label_adv, path, *, n: int = 8,
                       classes: Sequence[str] | None = None, bounds=(0.0, 1.0)) -> Path:
    """Images before (top) and after (bottom) adding one universal perturbation, with the predicted labels;
    fooled images (label changed) are shown first, their new label in red."""
    changed = torch.as_tensor(label_clean) != torch.as_tensor(label_adv)
    order = torch.argsort(changed.to(torch.int8), descending=True, stable=True)[:n]
    k = len(order)
    fig, axes = plt.subplots(2, k, figsize=(1.5 * k, 3.4), squeeze=False)

    def name(c):
        return classes[int(c)] if classes else str(int(c))
    for j, i in enumerate(order.tolist()):
        xa = (x[i] + v.to(x.device)).clamp(*bounds)
        for row, (img_t, lab) in enumerate(((x[i], label_clean[i]), (xa, label_adv[i]))):
            img, cmap = _img(img_t)
            ax = axes[row, j]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(name(lab), fontsize=7, color="red" if row == 1 and bool(changed[i]) else "black")
            ax.axis("off")
    axes[0, 0].text(-0.3, 0.5, "clean", transform=axes[0, 0].transAxes, rotation=90, va="center", fontsize=8)
    axes[1, 0].text(-0.3, 0.5, "+ v", transform=axes[1, 0].transAxes, rotation=90, va="center", fontsize=8)
    return _save(fig, path)


def fooling_vs_xi(curves: dict[str, Sequence[tuple[float, float]]], path, *, norm: str = "inf",
                  baseline: dict[str, Sequence[tuple[float, float]]] | None = None) -> Path:
    """Held-out fooling rate versus ξ, one line per model/setting (``curves[label] = [(ξ, rate), ...]``), and
    optional dashed random-noise baselines of the same norm."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, pts in curves.items():
        pts = sorted(pts)
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if baseline and label in baseline:
            b = sorted(baseline[label])
            ax.plot([p[0] for p in b], [p[1] for p in b], "--", color=line.get_color(), alpha=0.7,
                    label=f"{label}: random noise")
    ax.set_xlabel(f"ξ (L{'∞' if norm == 'inf' else norm})")
    ax.set_ylabel("held-out fooling rate")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def universal_comparison(rates: dict[str, dict[str, float]], path, *, title: str | None = None) -> Path:
    """The four-way bar chart of ICLR 2018 / CVPR 2017 §4 at equal norm: per model, the fooling rates of a
    random vector, a random vector in the flat (normals) subspace, in the curved (Hessian) subspace, and the
    UAP. ``rates[model] = {"random": …, "flat": …, "curved": …, "uap": …}``."""
    import numpy as np

    kinds = ["random", "flat", "curved", "uap"]
    models = list(rates)
    w = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(1.2 + 2.2 * len(models), 3.8))
    for i, kind in enumerate(kinds):
        vals = [rates[m].get(kind, float("nan")) for m in models]
        pos = np.arange(len(models)) + (i - (len(kinds) - 1) / 2) * w
        bars = ax.bar(pos, vals, w, label=kind)
        for b, val in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, val + 0.01, f"{100 * val:.0f}%", ha="center", fontsize=7)
    ax.set_xticks(range(len(models)), models, fontsize=8)
    ax.set_ylabel("fooling rate")
    ax.set_ylim(0, 1.05)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


_LABEL_COLOURS = ("dark grey", "red", "green", "yellow", "blue", "orange", "purple", "cyan", "magenta", "lime",
                  "pink", "teal")


def _label_cmap(k: int):
    from matplotlib.colors import ListedColormap

    base = ["#202020", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
            "#bcf60c", "#fabebe", "#008080"]
    return ListedColormap([base[i % len(base)] for i in range(max(k, 2))])


def _label_img(ax, m: torch.Tensor, k: int, title: str) -> None:
    m = m.detach().cpu().clone()
    m[m < 0] = 0  # ignore-index pixels drawn as background
    ax.imshow(m.numpy(), cmap=_label_cmap(k), vmin=-0.5, vmax=max(k, 2) - 0.5, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def scenes(x: torch.Tensor, masks: torch.Tensor, path, *, n: int = 6, classes: Sequence[str] | None = None,
           title: str = "") -> Path:
    """Scenes of a segmentation data set (top) and their label maps (bottom), one colour per class."""
    k = len(classes) if classes else int(masks.max()) + 1
    n = min(n, x.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 3.8), squeeze=False)
    for j in range(n):
        im, cmap = _img(x[j])
        axes[0][j].imshow(im, cmap=cmap, vmin=0, vmax=1)
        axes[0][j].axis("off")
        _label_img(axes[1][j], masks[j], k, "")
    key = ""
    if classes:  # the colours named in the title: a legend would not survive the tight layout of _save
        key = "\n" + ", ".join(f"{c}: {_LABEL_COLOURS[i % len(_LABEL_COLOURS)]}" for i, c in enumerate(classes))
    fig.suptitle((title or "scenes and label maps") + key, fontsize=9)
    return _save(fig, path)


def segmentation_examples(result, path, *, n: int = 4, classes: Sequence[str] | None = None) -> Path:
    """A segmentation attack (task ``dense``): per scene, the scene, its clean segmentation, the adversarial
    scene, its segmentation and (targeted) the target map, with pixel accuracy (or target agreement) under each."""
    k = int(result.params.get("num_classes") or int(max(result.label_clean.max(), result.label_adv.max())) + 1)
    targeted = result.target is not None
    cols = 5 if targeted else 4
    n = min(n, result.x.shape[0])
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols, 1.9 * n), squeeze=False)
    counted = result.y != -100
    for i in range(n):
        def acc(m, i=i):
            return float(((m == result.y[i]) & counted[i]).sum() / counted[i].sum().clamp_min(1))
        im, cmap = _img(result.x[i])
        axes[i][0].imshow(im, cmap=cmap, vmin=0, vmax=1)
        axes[i][0].set_title("scene", fontsize=7)
        axes[i][0].axis("off")
        _label_img(axes[i][1], result.label_clean[i], k, f"clean seg. (acc {acc(result.label_clean[i]):.2f})")
        im, cmap = _img(result.x_adv[i])
        axes[i][2].imshow(im, cmap=cmap, vmin=0, vmax=1)
        axes[i][2].set_title(f"adversarial (‖r‖∞={float(result.linf[i]):.3g})", fontsize=7)
        axes[i][2].axis("off")
        if targeted:
            t = result.target[i]
            agree = float(((result.label_adv[i] == t) & counted[i]).sum() / counted[i].sum().clamp_min(1))
            _label_img(axes[i][3], result.label_adv[i], k, f"adv. seg. (on target {agree:.2f})")
            _label_img(axes[i][4], t, k, "target")
        else:
            _label_img(axes[i][3], result.label_adv[i], k, f"adv. seg. (acc {acc(result.label_adv[i]):.2f})")
    fig.suptitle(f"{result.attack} (ε={result.params.get('eps', '?')}, L{result.params.get('norm', '?')})",
                 fontsize=9)
    return _save(fig, path)


def miou_curve(ev, path) -> Path:
    """mIoU versus ε for each attack of a segmentation evaluation (:class:`~georobust.evaluation.dense.DenseEvaluation`)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, vals in ev.miou.items():
        ax.plot(ev.eps, vals, marker="o", label=name)
    ax.set_xlabel(f"ε (L{'∞' if ev.norm == 'inf' else ev.norm})")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{ev.model} on {ev.data} (n={ev.n}, clean mIoU {ev.clean_miou:.3f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def spatial_caption(result, i: int) -> str:
    """What a spatial attack did to sample ``i``, from its result: the size (``AttackResult.size``), the transform
    (``params["transform"][i]`` named by ``params["transform_names"]``, or ManiFool's ``params["theta"][i]`` named
    by ``params["parameter_names"]``) and the largest pixel displacement
    (``params["max_displacement"][i]``) where the result carries them."""
    p = result.params or {}
    parts = []
    if result.size is not None:
        parts.append(f"size {float(result.size[i]):.3g}")
    tr, names = p.get("transform"), p.get("transform_names")
    if not isinstance(tr, list):   # ManiFool: "transform" is the set's name, the per-sample parameters are "theta"
        tr, names = p.get("theta"), p.get("parameter_names")
    if isinstance(tr, list) and i < len(tr) and isinstance(tr[i], (list, tuple)):
        names = names or [f"θ{j}" for j in range(len(tr[i]))]
        parts.append(", ".join(f"{n}={float(v):.3g}" for n, v in zip(names, tr[i])))
    md = p.get("max_displacement")
    if isinstance(md, list) and i < len(md) and md[i] is not None:
        parts.append(f"max shift {float(md[i]):.2f}px")
    return "\n".join(parts)


def spatial_examples(result, path, *, n: int = 6, classes: Sequence[str] | None = None) -> Path:
    """A spatial attack's examples (threat model ``spatial``: spatial grid, worst-of-k, stAdv, ManiFool): per
    sample the original, the transformed image and their difference (shifted to mid-grey), with the labels and,
    under the transformed image, the transform or flow size (:func:`spatial_caption`). Successes first."""
    order = torch.argsort(result.success.to(torch.int8), descending=True, stable=True)[:n]
    k = len(order)
    fig, axes = plt.subplots(3, k, figsize=(1.9 * k, 6.0), squeeze=False)
    name = (lambda c: classes[c] if classes is not None and c < len(classes) else str(c))
    for j, i in enumerate(order.tolist()):
        diff = 0.5 + 0.5 * (result.x_adv[i] - result.x[i])
        for row, (t, title) in enumerate((
            (result.x[i], f"original: {name(int(result.label_clean[i]))}"),
            (result.x_adv[i], f"{name(int(result.label_adv[i]))}{'' if result.success[i] else ' (failed)'}"),
            (diff, "difference (×0.5 + grey)"),
        )):
            im, cmap = _img(t.clamp(0, 1))
            ax = axes[row][j]
            ax.imshow(im, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 1:
                ax.set_xlabel(spatial_caption(result, i), fontsize=6)
    axes[0][0].set_ylabel("original", fontsize=8)
    axes[1][0].set_ylabel("transformed", fontsize=8)
    axes[2][0].set_ylabel("difference", fontsize=8)
    fig.suptitle(f"{result.attack} (threat model spatial)", fontsize=9)
    return _save(fig, path)


def adversarial_patch(result, path, *, n: int = 8, classes: Sequence[str] | None = None,
                      title: str | None = None) -> Path:
    """A patch attack's result (:class:`georobust.attacks.patch.PatchResult`): the patch with its mask (left)
    and held-out inputs before (top) and after (bottom) the patch is pasted at their random placements, with the
    predicted labels; inputs the patch moved to success first, a success's label in red."""
    held = result.held_out if result.held_out is not None else torch.ones_like(result.success)
    idx = held.nonzero().squeeze(1)
    goal = result.target if result.target is not None else None
    already = (result.label_clean == goal) if goal is not None else (result.label_clean != result.y)
    flipped = result.success & ~already  # shown first: the patch changed the answer; then the rest
    order = idx[torch.argsort((~flipped[idx]).to(torch.int8), stable=True)][:n]
    k = max(len(order), 1)
    fig = plt.figure(figsize=(2.2 + 1.3 * k, 3.2))
    gs = fig.add_gridspec(2, k + 2, width_ratios=[2, 0.15] + [1] * k)
    ax = fig.add_subplot(gs[:, 0])
    p = result.patch.detach().float().cpu()
    s = p.shape[-1]
    u = (torch.arange(s, dtype=torch.float32) + 0.5) * 2 / s - 1
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    inside = (xx**2 + yy**2 <= 1) if result.mask == "circle" else torch.ones(s, s, dtype=torch.bool)
    lo, hi = float(p.min()), float(p.max())
    shown = (p - lo) / max(hi - lo, 1e-12)  # the patch lives in the model's bounds: shown stretched to [0, 1]
    if shown.shape[0] == 1:  # outside the mask in light blue, so a white patch edge stays visible
        import numpy as np

        img = np.ma.masked_array(shown[0].numpy(), mask=~inside.numpy())
        cmap = plt.get_cmap("gray").with_extremes(bad="#cfe2f3")
    else:
        bg = torch.tensor([0.81, 0.89, 0.95])[:, None, None].expand_as(shown)
        img, cmap = _img(torch.where(inside, shown, bg))
    ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
    tgt = result.params.get("target_class")
    ax.set_title(f"patch ({result.mask}{'' if tgt is None else ', target ' + _name(tgt, classes)})", fontsize=8)
    ax.axis("off")
    for j, i in enumerate(order.tolist()):
        for row, (im, lab) in enumerate(((result.x[i], result.label_clean[i]), (result.x_adv[i], result.label_adv[i]))):
            a = fig.add_subplot(gs[row, j + 2])
            img, cmap = _img(im)
            a.imshow(img, cmap=cmap, vmin=0, vmax=1)
            a.set_title(_name(lab, classes), fontsize=7, color="red" if row == 1 and bool(result.success[i]) else "black")
            a.axis("off")
    s = result.summary()
    fig.suptitle(title or (f"held-out success {s['held_out_success_rate']:.2f} (random patch "
                           f"{s['held_out_success_random_patch']:.2f}, none {s['held_out_success_without_patch']:.2f}); "
                           f"mean area {s['mean_patch_area']:.2f}"), fontsize=8)
    return _save(fig, path)


def _name(c, classes: Sequence[str] | None) -> str:
    return classes[int(c)] if classes else str(int(c))


def deepfool_steps(results: dict, path) -> Path:
    """Linear or blind spots: for each model (``results[label]``, a
    :class:`~georobust.geometry.linearity.DeepFoolSteps`), the fraction of its fooled inputs that DeepFool fooled in
    1, 2, 3, ... linearised steps (dashed: iterates clamped into the bounds); the legend gives the first-step
    fraction of the attacked inputs."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    cmap = plt.get_cmap("tab10")
    names = list(dict.fromkeys(label.replace(" (clamped)", "") for label in results))
    for label, r in results.items():
        h = r.histogram()
        total = max(1, sum(h.values()))
        steps = sorted(h)
        color = cmap(names.index(label.replace(" (clamped)", "")) % 10)
        ax.plot(steps, [h[k] / total for k in steps], marker="o", ms=3, color=color,
                ls="--" if getattr(r, "clip", False) else "-",
                label=f"{label} (first step {r.summary()['first_step']:.2f})")
    ax.set_xlabel("DeepFool steps to fool")
    ax.set_ylabel("fraction of fooled inputs")
    ax.set_title("linear or blind spots: DeepFool's steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, path)


def linear_tradeoff(panels: dict, path) -> Path:
    """Robustness vs risk of linear classifiers (Fawzi, Fawzi & Frossard 2018), one panel per data set:
    ``panels[title] = {"points": {family: [(risk, rho), ...]}, "curves": {label: [(risk, value), ...]}}`` — the
    classifiers as markers, the bound / closed-form frontier as lines."""
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, (title, p) in zip(axes[0], panels.items()):
        for label, pts in p.get("curves", {}).items():
            pts = sorted(pts)
            ax.plot([q[0] for q in pts], [q[1] for q in pts], label=label, lw=1.5)
        for (label, pts), m in zip(p.get("points", {}).items(), "os^vDP*"):
            ax.scatter([q[0] for q in pts], [q[1] for q in pts], marker=m, s=22, label=label, zorder=3)
        risks = [q[0] for pts in p.get("points", {}).values() for q in pts]
        if risks:  # zoom on the classifiers: the bound's line beyond them only squashes the points
            xmax = min(0.5, 1.3 * max(risks) + 0.01)
            ys = [q[1] for pts in p.get("points", {}).values() for q in pts]
            ys += [q[1] for pts in p.get("curves", {}).values() for q in pts if q[0] <= xmax]
            ax.set_xlim(0, xmax)
            ax.set_ylim(0, 1.08 * max(ys))
        ax.set_xlabel("risk")
        ax.set_ylabel("ρ_adv (mean L2 distance to the boundary)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)


def spheres_distances(rows: list[dict], path) -> Path:
    """Adversarial spheres (Gilmer et al. 2018): the mean distance to the nearest error found (DeepFool, PGD,
    exact for the quadratic network) against the isoperimetric bound for the measured error rate, per model and
    dimension. ``rows``: dicts with ``model``, ``dim``, ``measured``, ``bound`` (None when the error rate is 0),
    and optionally ``exact``."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    models = sorted({r["model"] for r in rows})
    for m, mk in zip(models, "os^vD"):
        rs = sorted((r for r in rows if r["model"] == m and r.get("bound") is not None), key=lambda r: r["dim"])
        if not rs:
            continue
        sc = ax.scatter([r["bound"] for r in rs], [r["measured"] for r in rs], marker=mk, label=f"{m}: attacks")
        for r in rs:
            ax.annotate(f"d={r['dim']}", (r["bound"], r["measured"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
        ex = [r for r in rs if r.get("exact") is not None]
        if ex:
            ax.scatter([r["bound"] for r in ex], [r["exact"] for r in ex], marker=mk, facecolors="none",
                       edgecolors=sc.get_facecolor()[0], label=f"{m}: exact")
    lim = [v for r in rows for v in (r.get("bound"), r.get("measured")) if v is not None]
    if lim:
        hi = max(lim) * 1.1
        ax.plot([0, hi], [0, hi], color="gray", ls="--", lw=1, label="measured = bound")
    ax.set_xlabel("isoperimetric bound on the mean distance (cap of the same error rate)")
    ax.set_ylabel("measured mean distance to the nearest error")
    ax.set_title("adversarial spheres: errors close to most points", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def surveillance_patch(rows: list[dict], path, *, title: str | None = None) -> Path:
    """Frames with boxes, clean vs patched, and the patches (Thys et al. 2019; ``repro/surveillance_patch.py``).
    ``rows``: one per detector, ``{"name", "panels": [{"title", "image" (3, H, W), "people" (K, 4),
    "detections" (M, 4)}], "patch" (3, s, s)}``; people (the HOG boxes of the clean frame) are drawn dashed
    white, the detector's boxes solid (green when they find a person at IoU >= 0.5, else orange)."""
    from matplotlib.patches import Rectangle

    ncol = max(len(r["panels"]) for r in rows) + 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(3.1 * ncol, 2.5 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * (ncol - 1) + [0.55]})
    for r, row in enumerate(rows):
        for c, pan in enumerate(row["panels"]):
            ax = axes[r][c]
            img, cmap = _img(pan["image"])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            people = torch.as_tensor(pan["people"], dtype=torch.float64).reshape(-1, 4)
            dets = torch.as_tensor(pan["detections"], dtype=torch.float64).reshape(-1, 4)
            for x1, y1, x2, y2 in people.tolist():
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", ls="--", lw=0.9))
            for x1, y1, x2, y2 in dets.tolist():
                iw = (torch.minimum(people[:, 2], torch.tensor(x2)) - torch.maximum(people[:, 0], torch.tensor(x1)))
                ih = (torch.minimum(people[:, 3], torch.tensor(y2)) - torch.maximum(people[:, 1], torch.tensor(y1)))
                inter = iw.clamp_min(0) * ih.clamp_min(0)
                union = (people[:, 2:] - people[:, :2]).prod(1) + (x2 - x1) * (y2 - y1) - inter
                hit = bool(len(people)) and bool((inter / union >= 0.5).any())
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime" if hit else "orange",
                                       lw=1.3))
            ax.set_title(f"{row['name']}: {pan['title']}", fontsize=8)
            ax.axis("off")
        for c in range(len(row["panels"]), ncol - 1):
            axes[r][c].axis("off")
        ax = axes[r][ncol - 1]
        img, cmap = _img(row["patch"])
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(f"patch vs {row['name']}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def detector_scores(scores: dict[str, dict], path) -> Path:
    """Detector score distributions, one panel per detector (issue 13, ``repro/obfuscated.py``): clean inputs,
    oblivious adversarial examples and adaptive (detector-aware) adversarial examples, with the threshold.
    ``scores``: ``{name: {"clean": [...], "adversarial": [...], "adaptive": [...], "threshold": float}}``."""
    names = list(scores)
    ncol = min(3, max(1, len(names)))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // ncol][i % ncol]
        d = scores[name]
        groups = [(k, torch.as_tensor(d.get(k) or [], dtype=torch.float64)) for k in ("clean", "adversarial",
                                                                                     "adaptive")]
        vals = torch.cat([v for _, v in groups if v.numel()])
        lo, hi = (float(vals.min()), float(vals.max())) if vals.numel() else (0.0, 1.0)
        bins = torch.linspace(lo, hi if hi > lo else lo + 1.0, 31).numpy()
        for (label, v), color in zip(groups, ("tab:blue", "tab:red", "tab:orange")):
            if v.numel():
                ax.hist(v.numpy(), bins=bins, alpha=0.5, color=color, density=True, label=f"{label} ({v.numel()})")
        if d.get("threshold") is not None:
            ax.axvline(float(d["threshold"]), color="k", ls="--", lw=1, label="threshold")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score (higher = flagged)", fontsize=8)
        ax.legend(fontsize=7)
    for j in range(len(names), nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    return _save(fig, path)


def projections(rows: dict[str, dict], path) -> Path:
    """What projection defences do to inputs (issue 13): per defence, clean images, their projections, adaptive
    adversarial images and their projections. ``rows``: ``{name: {"clean", "projected", "adversarial",
    "adversarial projected"}}``, each ``(k, C, H, W)``."""
    kinds = ("clean", "projected", "adversarial", "adversarial projected")
    names = list(rows)
    k = max(int(torch.as_tensor(rows[n]["clean"]).shape[0]) for n in names)
    fig, axes = plt.subplots(len(names), len(kinds) * k, figsize=(1.0 * len(kinds) * k, 1.25 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        for c, kind in enumerate(kinds):
            imgs = torch.as_tensor(rows[name][kind])
            for i in range(k):
                ax = axes[r][c * k + i]
                ax.axis("off")
                if i < imgs.shape[0]:
                    img, cmap = _img(imgs[i])
                    ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
                if r == 0 and i == 0:
                    ax.set_title(kind, fontsize=7, loc="left")
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7)
    return _save(fig, path)
