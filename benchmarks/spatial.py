"""Spatial attacks: georobust's spatial grid vs Foolbox 3.3.4 ``SpatialAttack`` at the same grid; stAdv's
optimisers (L-BFGS-B on one flat vector per batch, one solve per sample, Adam); ManiFool's geodesic distance vs
that of the grid's fooling transform. One process, same models and images.

**The grids are the same set.** Foolbox samples the input at ``R(φ)p + t`` on ``grid_sample``'s normalised
coordinates (``align_corners=True``) and divides the translation by half the image side, so its "3 px" is
``3·(W−1)/W`` pixels; georobust's transform ``[tx, ty, angle]`` samples at ``R(angle)p − (tx, ty)`` (centred
pixel coordinates, ``align_corners=False``, the same bilinear weights, zero padding). With
``max_translation = 3·(W−1)/W`` both enumerate the same 5 × 5 × 31 transforms (``tests/test_spatial_grid.py``
checks a transform against Foolbox's to 1e-4), so both exhaustive searches must give the same robust accuracy.
Foolbox tries the transforms in its order on the whole batch until every image is fooled; georobust tries each
image's transforms smallest radius first and drops an image at its first fooling transform.

advertorch's ``SpatialTransformAttack`` is not compared: advertorch 0.2.3 (``pip install --no-deps advertorch``)
does not import beside torch 2.13 (it imports ``zero_gradients`` from ``torch.autograd.gradcheck``, removed from
torch). stAdv is compared with the paper's numbers in ``repro/stadv.py`` instead.

Target (issue 14): the grid ≥ 5× faster than Foolbox with identical robust accuracy (to 0.1 %).

    python benchmarks/spatial.py           # 500 images, lenet-fmnist and lenet-fmnist-at; stAdv 20 images
    python benchmarks/spatial.py --quick   # 20 images of lenet-fmnist-at, a 3 × 3 × 7 grid; stAdv 2 images
    python benchmarks/spatial.py --only manifool   # rerun the ManiFool-vs-grid row alone; refresh it in the file
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import torch

from georobust import data, pretrained, registry
from georobust.attacks.spatial_grid import spatial_grid, transform_matrices
from georobust.attacks.stadv import stadv
from georobust.core import transforms as T

RESULTS = Path(__file__).resolve().parent / "results"


def foolbox_grid(clf, x, y, *, num_translations: int, num_rotations: int):
    """Foolbox ``SpatialAttack`` (grid search): per-sample success, seconds."""
    import foolbox as fb

    fm = fb.PyTorchModel(clf, bounds=clf.bounds)
    att = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=num_translations,
                                   num_rotations=num_rotations, grid_search=True)
    t0 = time.perf_counter()
    _, _, success = att(fm, x, fb.criteria.Misclassification(y))
    return success.cpu(), time.perf_counter() - t0


def grid_rows(models, n, grid, log):
    rows = []
    for name in models:
        clf = pretrained(name)
        x, y = data.load("fashion-mnist", "test", limit=n)
        w = x.shape[-1]
        t0 = time.perf_counter()
        ours = spatial_grid(clf, x, y, max_translation=3.0 * (w - 1) / w, **grid)
        t_ours = time.perf_counter() - t0
        fb_success, t_fb = foolbox_grid(clf, x, y, **grid)
        with torch.no_grad():
            correct = clf(x).argmax(1) == y
        acc_ours = float((correct & ~ours.success).double().mean())
        acc_fb = float((correct & ~fb_success).double().mean())
        agree = int(((ours.success | ~correct) == (fb_success | ~correct)).sum())
        rows.append({"model": name, "n": n, "ours_s": t_ours, "fb_s": t_fb, "ratio": t_fb / t_ours,
                     "acc_ours": acc_ours, "acc_fb": acc_fb, "agree": agree,
                     "tried": float(ours.iterations.double().mean()), "grid_size": ours.params["grid_size"]})
        log(f"grid {name}: ours {t_ours:.1f}s, Foolbox {t_fb:.1f}s, ratio {t_fb / t_ours:.1f}x, robust accuracy "
            f"{acc_ours:.4f} vs {acc_fb:.4f}, {agree}/{n} samples agree")
    return rows


def stadv_rows(model, n, max_iter, log):
    clf = pretrained(model)
    x, y = data.load("fashion-mnist", "test", limit=n)
    rows = []
    for label, kw in (("L-BFGS-B, one vector per batch", {}), ("L-BFGS-B, one solve per sample", {"joint": False}),
                      ("Adam (lr 0.01)", {"optimizer": "adam"})):
        t0 = time.perf_counter()
        r = stadv(clf, x, y, tau=0.005, max_iter=max_iter, **kw)
        secs = time.perf_counter() - t0
        correct = r.label_clean == r.y
        ok = r.success & correct
        rows.append({"optimizer": label, "seconds": secs, "success": float(ok.sum() / correct.sum().clamp_min(1)),
                     "median_flow_loss": float(r.size[ok].median()) if bool(ok.any()) else float("nan")})
        log(f"stadv {label}: {secs:.1f}s, success {rows[-1]['success']:.3f}")
    return rows


def manifool_row(model, n, grid, log):
    """ManiFool (rotation+translation) vs the grid's first fooling transform: geodesic distances on the samples
    both fool (the grid's transform written in the same Lie-algebra coordinates by the matrix logarithm)."""
    if "manifool" not in registry.attacks:
        return None
    clf = pretrained(model)
    x, y = data.load("fashion-mnist", "test", limit=n)
    t0 = time.perf_counter()
    mf = registry.attacks.get("manifool").fn(clf, x, y, transform="rotation-translation")
    t_mf = time.perf_counter() - t0
    g = spatial_grid(clf, x, y, **grid)
    correct = g.label_clean == g.y
    both = mf.success & g.success & correct
    if not bool(both.any()):
        return None
    idx = both.nonzero().squeeze(1)
    theta = torch.tensor([g.params["transform"][i] for i in idx.tolist()], dtype=torch.float64)
    M = transform_matrices(theta)
    lie = T.log_params("rotation-translation", M)
    gd = T.geodesic_distance(x[idx].double(), "rotation-translation", lie)
    row = {"model": model, "n": int(both.sum()), "manifool_median": float(mf.size[idx].median()),
           "grid_median": float(gd.median()), "manifool_smaller": float((mf.size[idx] <= gd).double().mean()),
           "manifool_s": t_mf, "manifool_success": float((mf.success & correct).double().sum() / correct.sum()),
           "grid_success": float((g.success & correct).double().sum() / correct.sum())}
    log(f"manifool vs grid on {model}: median geodesic distance {row['manifool_median']:.4f} vs "
        f"{row['grid_median']:.4f} on {row['n']} samples both fool")
    return row


def manifool_lines(mrow, mf_n: int, gdesc: str) -> list[str]:
    max_step = inspect.signature(registry.attacks.get("manifool").fn).parameters["max_step"].default
    return [f"ManiFool (rotation+translation, its defaults: 3 candidate classes, max_step {max_step}) vs the grid's "
            f"first fooling transform ({gdesc}), lenet-fmnist, {mf_n} images: geodesic distance on the {mrow['n']} "
            f"samples both fool; ManiFool {mrow['manifool_s']:.1f} s",
            "| ManiFool median | grid median | ManiFool smaller on | ManiFool success | grid success |",
            "|---|---|---|---|---|",
            f"| {mrow['manifool_median']:.4f} | {mrow['grid_median']:.4f} | {mrow['manifool_smaller']:.2f} | "
            f"{mrow['manifool_success']:.3f} | {mrow['grid_success']:.3f} |"]


MANIFOOL_HEADER = "ManiFool (rotation+translation"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds: what the tests run")
    ap.add_argument("-n", type=int, default=500, help="images for the grid (full mode)")
    ap.add_argument("--models", default="lenet-fmnist,lenet-fmnist-at")
    ap.add_argument("--stadv-n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only", choices=("manifool",), default=None,
                    help="rerun one row alone and replace it in the results file (the others are kept)")
    a = ap.parse_args(argv)
    grid = {"num_translations": 5, "num_rotations": 31}
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    n, stadv_n, max_iter, mf_n = a.n, a.stadv_n, 100, 50
    if a.quick:
        grid = {"num_translations": 3, "num_rotations": 7}
        models, n, stadv_n, max_iter, mf_n = ["lenet-fmnist-at"], 20, 2, 10, 4
    torch.set_num_threads(a.threads)
    gdesc = f"{grid['num_translations']}x{grid['num_translations']}x{grid['num_rotations']}"
    if a.only == "manifool":
        mrow = manifool_row("lenet-fmnist", mf_n, grid, print)
        new = manifool_lines(mrow, mf_n, gdesc) if mrow is not None else []
        print("\n".join(new))
        path = a.out / "spatial.txt"
        if not a.quick and path.exists():
            old = path.read_text().rstrip("\n").split("\n")
            cut = next((i for i, line in enumerate(old) if line.startswith(MANIFOOL_HEADER)), len(old))
            kept = old[:cut]
            while kept and not kept[-1].strip():
                kept.pop()
            path.write_text("\n".join(kept + [""] + new) + "\n")
        return {"grid": [], "stadv": [], "manifool": mrow}
    lines: list[str] = []
    grows = grid_rows(models, n, grid, print)
    srows = stadv_rows("lenet-fmnist", stadv_n, max_iter, print)
    mrow = manifool_row("lenet-fmnist", mf_n, grid, print)
    lines.append(f"Spatial grid ({gdesc}, ±3 px as Foolbox counts them = ±{3 * 27 / 28:.4f} px, ±30°) vs Foolbox 3.3.4 "
                 f"SpatialAttack, Fashion-MNIST test images, {a.threads} thread(s); shared CPU: seconds are noisy, "
                 "each ratio is measured in one process")
    lines.append("| model | n | georobust s | Foolbox s | speed-up | robust acc. georobust | robust acc. Foolbox "
                 "| samples agreeing | transforms tried / image |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in grows:
        lines.append(f"| {r['model']} | {r['n']} | {r['ours_s']:.1f} | {r['fb_s']:.1f} | {r['ratio']:.1f}x | "
                     f"{r['acc_ours']:.4f} | {r['acc_fb']:.4f} | {r['agree']}/{r['n']} | "
                     f"{r['tried']:.0f} of {r['grid_size']} |")
    lines.append("")
    lines.append(f"stAdv optimisers on lenet-fmnist, {stadv_n} images, τ=0.005, {max_iter} iterations "
                 "(advertorch 0.2.3 does not import beside torch 2.13: no peer)")
    lines.append("| optimiser | seconds | success | median flow loss |")
    lines.append("|---|---|---|---|")
    for r in srows:
        lines.append(f"| {r['optimizer']} | {r['seconds']:.1f} | {r['success']:.3f} | {r['median_flow_loss']:.2f} |")
    if mrow is not None:
        lines.append("")
        lines += manifool_lines(mrow, mf_n, gdesc)
    text = "\n".join(lines)
    print(text)
    if not a.quick:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "spatial.txt").write_text(text + "\n")
    return {"grid": grows, "stadv": srows, "manifool": mrow}


if __name__ == "__main__":
    main()
