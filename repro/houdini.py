"""Houdini vs cross-entropy on the shipped segmenter (Cisse, Adi, Neverova & Keshet, "Houdini: Fooling deep
structured prediction models", NeurIPS 2017, Sec. 5: semantic segmentation).

Both attacks run in the same PGD (``engine.pgd.pgd_kernel``) with the same ε, steps and step size (2.5·ε/steps,
no random start), on the same test scenes of ``scenes-seg``, and keep per scene the iterate meeting the goal on
the most pixels:

* untargeted — destroy the segmentation: mIoU and pixel accuracy after Houdini (task loss: per-pixel 0/1 error,
  and 1 − mIoU) and after per-pixel cross-entropy PGD;
* targeted — replace each scene's segmentation by an unrelated one (the clean segmentation of the next scene,
  ``target="roll"``, the paper's demonstration): the fraction of pixels on the target after Houdini and after
  cross-entropy PGD towards the target.

The paper's claim is that Houdini reaches the task goal with smaller perturbations; the table gives, per method,
the smallest ε of the grid at which mIoU falls to ``--miou-goal`` (untargeted) and at which ``--target-goal`` of
the pixels that had to change (target ≠ clean segmentation; most background pixels are on the target before any
attack) are on the target (targeted). Figures: mIoU vs ε, target agreement vs ε, and scenes with their clean
segmentation, the adversarial scene, its segmentation and the target.

    python repro/houdini.py            # full: 24 scenes, 10 steps, 4 ε; writes repro/results/houdini.md + figures
    python repro/houdini.py --quick    # seconds: 4 scenes, 3 steps, 2 ε
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from _common import parser

import georobust as gr
from georobust import plots, registry
from georobust.evaluation.metrics import segmentation_metrics

WEIGHTS = Path(gr.__file__).resolve().parent / "models" / "weights" / "unet-small-scenes.safetensors"
#: (label, attack, options) of the untargeted and the targeted comparisons
UNTARGETED = (("houdini (0/1)", "houdini", {"task_loss": "pixel"}), ("houdini (1−IoU)", "houdini", {"task_loss": "iou"}),
              ("cross-entropy", "dense-pgd", {}))
TARGETED = (("houdini (0/1)", "houdini", {"task_loss": "pixel"}), ("cross-entropy", "dense-pgd", {}))


def load_segmenter(spec: str | None):
    if spec:
        return gr.models.load_model(spec)
    if "unet-small-scenes" in gr.models.manifest():
        return gr.pretrained("unet-small-scenes")
    from georobust.models.io import load_weights

    return load_weights(WEIGHTS)


def run(model, x, y, eps_list, steps, norm, k) -> dict:
    clean_pred = gr.checks.predict(model, x)
    clean = segmentation_metrics(clean_pred, y, k, target=clean_pred.roll(1, 0))
    out = {"clean": clean, "untargeted": {}, "targeted": {}, "seconds": {}, "examples": {}}
    for kind, methods in (("untargeted", UNTARGETED), ("targeted", TARGETED)):
        for label, name, opts in methods:
            fn = registry.attacks.get(name).fn
            vals = []
            t0 = time.perf_counter()
            for eps in eps_list:
                r = fn(model, x, y, eps=eps, norm=norm, steps=steps,
                       **opts, **({"target": "roll"} if kind == "targeted" else {}))
                m = segmentation_metrics(r.label_adv, y, k, target=r.target)
                if r.target is not None:  # the pixels the attack had to move: the target differs from the clean map
                    must = (r.target != clean_pred) & (y != -100)
                    m["target_agreement_moved"] = float(((r.label_adv == r.target) & must).sum()
                                                        / must.sum().clamp_min(1))
                vals.append(m)
                out["examples"][(kind, label, eps)] = r
            out[kind][label] = vals
            out["seconds"][(kind, label)] = time.perf_counter() - t0
    return out


def smallest_eps(vals: list[dict], eps_list, key: str, goal: float, below: bool) -> float | None:
    for eps, v in zip(eps_list, vals):
        if (v[key] <= goal) if below else (v[key] >= goal):
            return eps
    return None


def table(res: dict, eps_list, miou_goal: float, target_goal: float, norm: str) -> str:
    e = "ε (L∞)" if norm == "inf" else "ε (L2)"
    c = res["clean"]
    lines = [f"Clean: mIoU {c['miou']:.3f}, pixel accuracy {c['pixel_accuracy']:.3f}; target agreement before the "
             f"attack {c['target_agreement']:.3f}.", "",
             f"| untargeted: mIoU / pixel acc. at {e} | " + " | ".join(f"{v:g}" for v in eps_list)
             + f" | smallest ε with mIoU ≤ {miou_goal:g} | seconds |",
             "|---|" + "---|" * (len(eps_list) + 2)]
    for label, vals in res["untargeted"].items():
        se = smallest_eps(vals, eps_list, "miou", miou_goal, True)
        lines.append(f"| {label} | " + " | ".join(f"{v['miou']:.3f} / {v['pixel_accuracy']:.3f}" for v in vals)
                     + f" | {'—' if se is None else f'{se:g}'} | {res['seconds'][('untargeted', label)]:.0f} |")
    lines += ["", f"| targeted: pixels on the target, all / of those that had to change, at {e} | "
              + " | ".join(f"{v:g}" for v in eps_list)
              + f" | smallest ε with ≥ {target_goal:g} of those that had to change | seconds |",
              "|---|" + "---|" * (len(eps_list) + 2)]
    for label, vals in res["targeted"].items():
        se = smallest_eps(vals, eps_list, "target_agreement_moved", target_goal, False)
        lines.append(f"| {label} | " + " | ".join(f"{v['target_agreement']:.3f} / {v['target_agreement_moved']:.3f}"
                                                  for v in vals)
                     + f" | {'—' if se is None else f'{se:g}'} | {res['seconds'][('targeted', label)]:.0f} |")
    return "\n".join(lines)


def figures(res: dict, eps_list, out: Path, x, y, norm: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, vals in res["untargeted"].items():
        axes[0].plot(eps_list, [v["miou"] for v in vals], marker="o", label=label)
    for label, vals in res["targeted"].items():
        axes[1].plot(eps_list, [v["target_agreement_moved"] for v in vals], marker="o", label=label)
    xl = f"ε (L{'∞' if norm == 'inf' else norm})"
    axes[0].set(xlabel=xl, ylabel="mIoU", title="untargeted: mIoU after the attack", ylim=(0, 1))
    axes[1].set(xlabel=xl, ylabel="on target, of the pixels that had to change",
                title="targeted (another scene's segmentation)",
                ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "houdini_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    classes = gr.data.info("scenes-seg").classes
    paths.append(plots.scenes(x, y, out / "houdini_scenes.png", n=6, classes=classes,
                              title="scenes-seg: test scenes and their label maps"))
    mid = eps_list[len(eps_list) // 2]
    for (kind, label, eps), r in res["examples"].items():
        if eps == mid and not label.endswith("(1−IoU)"):
            slug = f"{kind}_{'houdini' if label.startswith('houdini') else 'ce'}"
            paths.append(plots.segmentation_examples(r, out / f"houdini_{slug}.png", n=3, classes=classes))
    return paths


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--model", default=None, help="the segmenter (default: the shipped unet-small-scenes)")
    ap.add_argument("-n", type=int, default=None, help="test scenes (default 24; quick 4)")
    ap.add_argument("--steps", type=int, default=None, help="PGD steps (default 10; quick 3)")
    ap.add_argument("--eps", type=float, nargs="+", default=None,
                    help="budgets (default L∞ 0.005 0.01 0.02 0.04; quick 0.02 0.05)")
    ap.add_argument("--norm", default="inf", choices=("inf", "2"))
    ap.add_argument("--miou-goal", type=float, default=0.2)
    ap.add_argument("--target-goal", type=float, default=0.5,
                    help="fraction of the pixels that had to change (target ≠ clean segmentation) now on the target")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = load_segmenter(a.model)
    n = a.n or (4 if a.quick else 24)
    steps = a.steps or (3 if a.quick else 10)
    eps_list = sorted(a.eps or ([0.02, 0.05] if a.quick else [0.005, 0.01, 0.02, 0.04]))
    x, y = gr.data.load("scenes-seg", "test", n=n, seed=a.seed)
    k = gr.data.info("scenes-seg").num_classes
    t0 = time.perf_counter()
    res = run(model, x, y, eps_list, steps, a.norm, k)
    text = (f"{n} test scenes of scenes-seg (seed {a.seed}), {steps} PGD steps of 2.5·ε/{steps}, no random start, "
            f"L{'∞' if a.norm == 'inf' else a.norm}; {time.perf_counter() - t0:.0f} s in all.\n\n"
            + table(res, eps_list, a.miou_goal, a.target_goal, a.norm))
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    res["figures"] = figures(res, eps_list, a.out, x, y, a.norm)
    if not a.quick:
        (a.out / "houdini.md").write_text("# Houdini vs cross-entropy on unet-small-scenes\n\n" + text + "\n",
                                          encoding="utf-8")
    res["eps"], res["n"], res["steps"], res["text"] = eps_list, n, steps, text
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
