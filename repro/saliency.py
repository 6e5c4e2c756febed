"""Perceptually aligned gradients (Tsipras, Santurkar, Engstrom, Turner & Madry, "Robustness may be at odds with
accuracy", ICLR 2019, Fig. 2; Santurkar et al., "Image synthesis with a single (robust) classifier", NeurIPS
2019) on the shipped Fashion-MNIST LeNets: standard, PGD-AT and CURE side by side.

For the same test images: the input gradient of the loss and a large-ε targeted PGD image (L2, ε = 3) per
model (a grid figure), and the quantitative companion of ``georobust analyse saliency``: the correlation of
``|∇ₓ loss|`` with the image's Sobel edge map and with the object's mask (channel mean > 0.1), per model, with
the spread of the AT − standard and CURE − standard differences over disjoint subsets of images, and a null
baseline (a Gaussian "gradient"). With ``--tradeoff`` the models of ``repro/tradeoff_deep.py``
(``repro/results/tradeoff_deep/*.safetensors``) are measured too: alignment against AT's ε and CURE's γ.

    python repro/saliency.py               # full: 1,024 images; writes repro/results/saliency.md, saliency.png,
                                           # repro/results/saliency/ (the grid's result and the correlations)
    python repro/saliency.py --plot-only   # re-draw the figures from repro/results/saliency/
    python repro/saliency.py --quick --out /tmp/x    # seconds
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, parser

from georobust import data, plots, pretrained
from georobust.geometry.saliency import Saliency, object_mask, pearson, saliency, sobel_magnitude
from georobust.models.io import load_weights
from georobust.storage import atomic_write_text

MODELS = ("lenet-fmnist", "lenet-fmnist-at", "lenet-fmnist-cure")


def _bad(msg: str):
    raise SystemExit(f"saliency: {msg}")


def _stats(v: torch.Tensor) -> dict:
    v = v[~v.isnan()].double()
    return {"mean": float(v.mean()), "sd": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "n": int(v.numel())}


def subset_differences(res: Saliency, size: int) -> dict:
    """For each model after the first and each measure: the mean over each disjoint subset of ``size`` images
    of that model's correlation minus the first model's, summarised over the subsets."""
    out = {}
    n = res.x.shape[0] // size
    for kind, c in (("edge", res.edge_corr), ("mask", res.mask_corr)):
        for j, lab in enumerate(res.labels[1:], 1):
            d = torch.stack([c[j, i * size:(i + 1) * size].nanmean() - c[0, i * size:(i + 1) * size].nanmean()
                             for i in range(n)])
            out[f"{kind}: {lab} − {res.labels[0]}"] = {**_stats(d), "subsets": n, "size": size}
    return out


def null_baseline(x: torch.Tensor, threshold: float, seed: int) -> dict:
    """The correlations of a Gaussian "gradient" (no model) with the edges and the mask: the level of chance."""
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype).abs().sum(1)
    return {"edge": _stats(pearson(g, sobel_magnitude(x))),
            "mask": _stats(pearson(g, object_mask(x, threshold).to(x.dtype)))}


def tradeoff_models(folder: Path) -> dict:
    """The swept models of repro/tradeoff_deep.py, labelled by objective and strength, in sweep order."""
    found = {}
    for p in sorted(folder.glob("*.safetensors")):
        side = json.loads(p.with_suffix(".json").read_text())
        o = side["objective_options"]
        lab = {"standard": "standard fine-tune", "adversarial": f"AT ε={o.get('eps', 0):g}",
               "cure": f"CURE γ={o.get('gamma', 0):g}"}[side["objective"]]
        found[lab] = load_weights(p)
    order = lambda k: (k.split()[0], float(k.split("=")[1]) if "=" in k else 0.0)  # noqa: E731
    return {k: found[k] for k in sorted(found, key=order)}


def render(sdir: Path, out: Path, classes) -> dict:
    """The figures and the table, from the saved results only."""
    grid = Saliency.load(sdir / "grid")
    meas = json.loads((sdir / "measures.json").read_text())
    png = plots.saliency_grid(grid, out / "saliency.png", n=grid.x.shape[0], classes=classes)
    rows = ["| model | edge corr mean (sd) | mask corr mean (sd) | targeted success (L2 ε=3) |", "|---|---|---|---|"]
    for lab, d in meas["per_model"].items():
        rows.append(f"| {lab} | {d['edge_corr']:.3f} ({d['edge_corr_sd']:.3f}) | {d['mask_corr']:.3f} "
                    f"({d['mask_corr_sd']:.3f}) | {d['targeted_success']:.3f} |")
    nb = meas["null"]
    rows.append(f"| null (Gaussian gradient) | {nb['edge']['mean']:.3f} ({nb['edge']['sd']:.3f}) | "
                f"{nb['mask']['mean']:.3f} ({nb['mask']['sd']:.3f}) | — |")
    diffs = ["| difference of subset means | subsets × images | min | mean | sd | max |", "|---|---|---|---|---|---|"]
    for k, d in meas["differences"].items():
        diffs.append(f"| {k} | {d['subsets']} × {d['size']} | {d['min']:.4f} | {d['mean']:.4f} | {d['sd']:.4f} | "
                     f"{d['max']:.4f} |")
    trade = None
    if meas.get("tradeoff"):
        trade = ["| swept model | edge corr | mask corr | targeted success |", "|---|---|---|---|"]
        trade += [f"| {lab} | {d['edge_corr']:.3f} | {d['mask_corr']:.3f} | {d['targeted_success']:.3f} |"
                  for lab, d in meas["tradeoff"].items()]
    return {"figure": png, "table": "\n".join(rows), "differences": "\n".join(diffs),
            "tradeoff": "\n".join(trade) if trade else None, "measures": meas}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=1024, help="test images for the correlations")
    ap.add_argument("--grid", type=int, default=8, help="images shown in the figure")
    ap.add_argument("--subset", type=int, default=64, help="images per subset for the spread of the differences")
    ap.add_argument("--eps", type=float, default=3.0, help="L2 radius of the targeted PGD")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--mask-threshold", type=float, default=0.1)
    ap.add_argument("--tradeoff", action="store_true", help="also the models of repro/tradeoff_deep.py")
    ap.add_argument("--plot-only", action="store_true", help="re-draw from saved results; nothing recomputed")
    a = ap.parse_args(argv)
    argv_s = " ".join(argv if argv is not None else sys.argv[1:])
    if a.quick:
        a.n, a.grid, a.subset, a.steps = 32, 3, 8, 5
        if a.out == RESULTS:
            _bad("--quick writes into --out: give a scratch folder (--out /tmp/...), not repro/results")
    if a.n < 2 or a.grid < 1 or a.subset < 2 or a.steps < 1:
        _bad("--n and --subset must be >= 2, --grid and --steps >= 1")
    if a.subset * 2 > a.n:
        _bad(f"--subset {a.subset} leaves fewer than 2 subsets of --n {a.n} images; lower it or raise --n")
    if not a.eps > 0:
        _bad(f"--eps must be > 0, got {a.eps}")
    sdir = a.out / "saliency"
    if a.plot_only and not (sdir / "measures.json").exists():
        _bad(f"--plot-only: no saved results in {sdir}; run without --plot-only first")
    torch.set_num_threads(a.threads)
    classes = data.info("fashion-mnist").classes
    t0 = time.perf_counter()
    if not a.plot_only:
        x, y = data.load("fashion-mnist", "test", limit=a.n)
        models = {m: pretrained(m) for m in MODELS}
        res = saliency(models[MODELS[0]], x, y, models={m: models[m] for m in MODELS[1:]}, eps=a.eps,
                       steps=a.steps, mask_threshold=a.mask_threshold, seed=a.seed)
        meas = {"per_model": res.per_model(), "differences": subset_differences(res, a.subset),
                "null": null_baseline(x, a.mask_threshold, a.seed),
                "settings": {"n": a.n, "eps": a.eps, "norm": "2", "steps": a.steps, "target": "next",
                             "mask_threshold": a.mask_threshold, "command": f"python repro/saliency.py {argv_s}"}}
        if a.tradeoff:
            tm = tradeoff_models(RESULTS / "tradeoff_deep")
            if not tm:
                _bad(f"--tradeoff: no models in {RESULTS / 'tradeoff_deep'}; run repro/tradeoff_deep.py first")
            names = list(tm)
            r2 = saliency(tm[names[0]], x, y, models={k: tm[k] for k in names[1:]}, eps=a.eps, steps=a.steps,
                          mask_threshold=a.mask_threshold, seed=a.seed)
            meas["tradeoff"] = {names[0]: r2.per_model()[r2.labels[0]], **{
                k: v for k, v in r2.per_model().items() if k != r2.labels[0]}}
        meas["seconds"] = time.perf_counter() - t0
        sdir.mkdir(parents=True, exist_ok=True)
        k = a.grid
        grid = Saliency(x=res.x[:k], y=res.y[:k], target=res.target[:k], grads=res.grads[:, :k],
                        x_targeted=res.x_targeted[:, :k], target_success=res.target_success[:, :k],
                        edge_corr=res.edge_corr[:, :k], mask_corr=res.mask_corr[:, :k], labels=res.labels,
                        eps=res.eps, norm=res.norm, steps=res.steps, mask_threshold=res.mask_threshold)
        grid.save(sdir / "grid")
        atomic_write_text(sdir / "measures.json", json.dumps(meas, indent=2))
    out = render(sdir, a.out, classes)
    print(out["table"])
    print(out["differences"])
    if out["tradeoff"]:
        print(out["tradeoff"])
    if not a.plot_only:
        s = out["measures"]["settings"]
        md = ["# Perceptually aligned gradients (Tsipras et al., ICLR 2019), Fashion-MNIST LeNets", "",
              f"Command: `{s['command'].strip()}` — {a.threads} thread(s) on a shared 2-core CPU, "
              f"{out['measures']['seconds']:.0f} s. The first {s['n']} test images; gradient of the cross-entropy "
              f"at the true label; edge map: Sobel magnitude of the image; mask: pixels > {s['mask_threshold']:g}; "
              f"Pearson correlation per image with |∇ₓ loss| (summed over channels), mean (sd) over images. "
              f"Targeted PGD: L2 ε={s['eps']:g}, {s['steps']} steps of 2.5ε/steps, target (y+1) mod 10, no early "
              "stop; success = re-predicted label is the target.", "", out["table"], "",
              f"Spread of the differences over disjoint subsets of {a.subset} images:", "", out["differences"], ""]
        if out["tradeoff"]:
            md += ["Models of `repro/tradeoff_deep.py` (same images and settings):", "", out["tradeoff"], ""]
        md += [f"![saliency]({out['figure'].name})", ""]
        atomic_write_text(a.out / "saliency.md", "\n".join(md))
        print(f"wrote {a.out / 'saliency.md'}")
    return out


if __name__ == "__main__":
    main()
