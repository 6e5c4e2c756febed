"""Benchmark: the georobust adversarial patch (Brown et al. 2017) against ART 1.20's adversarial patch.

ART's ``AdversarialPatchPyTorch`` imports ``torchvision`` in its constructor (its placement uses
``torchvision.transforms.functional``); torchvision is not installed here, so the peer is the closest ART class
that runs, ``AdversarialPatchNumpy`` (the same EOT: random rotation in ``± rotation_max`` degrees, scale in
``[scale_min, scale_max]`` as a fraction of the image's shorter side, a random shift keeping the patch in the
image, a circular mask; scipy ``rotate``/``zoom``/``shift`` per image, the gradient mapped back through the
inverse transformation per image). Differences that remain, all read in ART 1.20.1's source:

* optimiser: ART-Numpy takes plain gradient steps, ``patch −= lr · Σ_batch ∇``, then clips (no Adam); ours is
  Adam (``AdversarialPatchPyTorch``'s default). ART's rate is swept (``--art-lr``) and every value reported;
* its mask is ``1 − (x² + y²)^40`` (a soft edge), ours a hard disc; it keeps the *unrotated* square inside the
  image, we keep the rotated one;
* targeted only (ART-Numpy has no untargeted mode), so the benchmark is targeted.

Same settings otherwise: model, patch resolution (the image's side, ART's), scale range, rotation, the number of
steps, the batch (one step = one patch update from ``batch`` training images at fresh placements: ART's
``generate`` is called once per step with ``max_iter=1`` on the batch our step draws, so both see the same images),
and the same initial patch (mid-grey). Time per step is the optimisation alone, the fastest of ``--repeat``
interleaved runs of each method (the CPU is shared with other jobs). Held-out success is measured the
same way for both patches: :func:`georobust.attacks.patch.evaluate_patch` pastes each patch on the held-out
images at ``draws`` random placements (one seed for both) and re-runs the model.

    python benchmarks/patch.py            # full: lenet-fmnist, 200 steps of 16, 1,000 held-out test images
    python benchmarks/patch.py --quick    # seconds: mlp-digits, 5 steps
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import torch

import georobust as gr
from georobust.attacks.patch import adversarial_patch, evaluate_patch, step_generator
from georobust.core.placement import apply_patch, sample_placements

warnings.filterwarnings("ignore")


def make_art(clf, shape, *, target: int, lr: float, scale, rotation: float, batch: int):
    """ART's ``AdversarialPatchNumpy`` on ``clf``; returns ``(attack, number of classes)``."""
    from art.attacks.evasion import AdversarialPatchNumpy
    from art.estimators.classification import PyTorchClassifier

    logging.getLogger("art").setLevel(logging.WARNING)
    with torch.no_grad():
        k = int(clf(torch.zeros(1, *shape)).shape[1])
    est = PyTorchClassifier(clf, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(shape), nb_classes=k,
                            clip_values=clf.bounds, device_type="cpu")

    class Peer(AdversarialPatchNumpy):
        """ART 1.20.1 calls ``reset_patch(mean_value)`` with a numpy float32 (from float32 ``clip_values``), which
        its ``isinstance(.., float)`` test rejects; the one change: pass it on as a Python float."""

        def reset_patch(self, initial_patch_value):
            if np.isscalar(initial_patch_value):
                initial_patch_value = float(initial_patch_value)
            super().reset_patch(initial_patch_value)

    ap = Peer(est, target=target, rotation_max=float(rotation), scale_min=float(scale[0]), scale_max=float(scale[1]),
              learning_rate=float(lr), max_iter=1, batch_size=batch, targeted=True, verbose=False)
    return ap, k


def art_patch(clf, x_pool, target: int, *, steps: int, batch: int, lr: float, scale, rotation: float,
              seed: int) -> tuple[torch.Tensor, float]:
    """ART-Numpy's patch on the same batches as ours; returns (patch, seconds of optimisation)."""
    ap, k = make_art(clf, x_pool.shape[1:], target=target, lr=lr, scale=scale, rotation=rotation, batch=batch)
    onehot = np.zeros((batch, k), np.float32)
    onehot[:, target] = 1
    xs = x_pool.numpy()
    import random

    random.seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    for t in range(steps):
        g = step_generator(seed, t + 1, "cpu")  # the batch our step t draws
        idx = torch.randint(xs.shape[0], (min(batch, xs.shape[0]),), generator=g).numpy()
        ap.generate(xs[idx], y=onehot[: len(idx)])
    secs = time.perf_counter() - t0
    return torch.as_tensor(np.asarray(ap.patch, dtype=np.float32)), secs


def placement_cost(clf, x, *, batch: int, scale, rotation: float, reps: int) -> dict:
    """Milliseconds per step of the EOT placement alone, forward and backward, without the model: ours
    (``sample_placements`` + ``apply_patch`` + the gradient back to the patch through ``grid_sample``) and ART-Numpy's
    (``_augment_images_with_random_patch`` + ``_reverse_transformation`` per image, what its ``generate`` does around
    the model's ``loss_gradient``), on a batch of ``batch`` images with a random upstream gradient."""
    xb = x[:batch]
    g = torch.randn(xb.shape, generator=torch.Generator().manual_seed(0))
    patch = torch.full(xb.shape[1:], 0.5)
    t0 = time.perf_counter()
    for r in range(reps):
        pl = sample_placements(batch, tuple(xb.shape[-2:]), scale=scale, rotation=rotation,
                               generator=step_generator(0, r, "cpu"))
        pv = patch.clone().requires_grad_(True)
        xp, _ = apply_patch(xb, pv, pl, mask="circle")
        torch.autograd.grad((xp * g).sum(), pv)
    ours = 1e3 * (time.perf_counter() - t0) / reps
    ap, _ = make_art(clf, xb.shape[1:], target=0, lr=1.0, scale=scale, rotation=rotation, batch=batch)
    xs, gs = xb.numpy(), g.numpy()
    t0 = time.perf_counter()
    for _ in range(reps):
        _, masks, trans = ap._augment_images_with_random_patch(xs, ap.patch)
        for i in range(batch):
            ap._reverse_transformation(gs[i], masks[i], trans[i])
    art = 1e3 * (time.perf_counter() - t0) / reps
    return {"ours_ms": ours, "art_ms": art, "ratio": art / ours}


def run(model: str, n_train: int, n_test: int, steps: int, batch: int, lr: float, art_lrs: list[float],
        scale, rotation: float, target: int, draws: int, repeat: int = 1, seed: int = 0) -> list[dict]:
    clf = gr.pretrained(model)
    data = gr.models.manifest()[model]["data"]
    x_pool, _ = gr.data.load(data, "train", limit=n_train)
    x_test, _ = gr.data.load(data, "test", limit=n_test)
    ev = dict(target=target, mask="circle", scale=scale, rotation=rotation, draws=draws, seed=seed + 7)
    rows = []
    ours_secs, art_runs = [], {alr: [] for alr in art_lrs}
    for _ in range(repeat):  # interleaved; the minimum time of each method is reported (the CPU is shared)
        t0 = time.perf_counter()
        res = adversarial_patch(clf, x_pool[:batch], target=target, x_train=x_pool, steps=steps, batch_size=batch,
                                lr=lr, scale=scale, rotation=rotation, mask="circle", seed=seed)
        ours_secs.append(time.perf_counter() - t0)
        for alr in art_lrs:
            art_runs[alr].append(art_patch(clf, x_pool, target, steps=steps, batch=batch, lr=alr, scale=scale,
                                           rotation=rotation, seed=seed))
    secs = min(ours_secs)
    e = evaluate_patch(clf, x_test, res.patch, **ev)
    rows.append({"method": f"georobust patch (Adam lr {lr:g})", "seconds": secs, "ms_per_step": 1e3 * secs / steps,
                 "held_out_success": e["success_rate"], "without_patch": e["success_without_patch"],
                 "area": e["mean_area"]})
    for alr in art_lrs:
        patch = art_runs[alr][0][0]
        secs = min(r[1] for r in art_runs[alr])
        e = evaluate_patch(clf, x_test, patch.clamp(*clf.bounds), **ev)
        rows.append({"method": f"ART AdversarialPatchNumpy (lr {alr:g})", "seconds": secs,
                     "ms_per_step": 1e3 * secs / steps, "held_out_success": e["success_rate"],
                     "without_patch": e["success_without_patch"], "area": e["mean_area"]})
    g = torch.Generator().manual_seed(seed)
    rnd = clf.bounds[0] + (clf.bounds[1] - clf.bounds[0]) * torch.rand(res.patch.shape, generator=g)
    e = evaluate_patch(clf, x_test, rnd, **ev)
    rows.append({"method": "random-noise patch (baseline)", "seconds": 0.0, "ms_per_step": float("nan"),
                 "held_out_success": e["success_rate"], "without_patch": e["success_without_patch"],
                 "area": e["mean_area"]})
    ours = rows[0]
    arts = [r for r in rows if r["method"].startswith("ART")]
    best = max(arts, key=lambda r: r["held_out_success"])
    for r in rows:
        r["speedup_vs_art"] = best["ms_per_step"] / r["ms_per_step"] if r["seconds"] > 0 else float("nan")
    ours["success_minus_best_art"] = ours["held_out_success"] - best["held_out_success"]
    ours["placement"] = placement_cost(clf, x_pool, batch=batch, scale=scale, rotation=rotation,
                                       reps=5 if steps < 20 else 50)
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="lenet-fmnist")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--art-lr", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    ap.add_argument("--scale", type=float, nargs=2, default=[0.3, 0.5])
    ap.add_argument("--rotation", type=float, default=22.5)
    ap.add_argument("--target", type=int, default=8)
    ap.add_argument("--draws", type=int, default=3, help="random placements per held-out image")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each method (interleaved); the fastest is kept")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.quick:
        a.model, a.n_train, a.n_test, a.steps, a.draws, a.art_lr, a.repeat = "mlp-digits", 100, 60, 5, 1, [10.0], 1
    rows = run(a.model, a.n_train, a.n_test, a.steps, a.batch, a.lr, a.art_lr, tuple(a.scale), a.rotation, a.target,
               a.draws, a.repeat)
    print(f"adversarial patch: {a.model}, target {a.target}, circle, scale {a.scale[0]:g}-{a.scale[1]:g} of the side, "
          f"rotation ±{a.rotation:g}°, {a.steps} steps of {a.batch} ({a.n_train} training images), held-out "
          f"{a.n_test} test images × {a.draws} placements; {a.threads} thread(s), the fastest of {a.repeat} interleaved runs (shared CPU: seconds are noisy)")
    print(f"{'method':40s} {'seconds':>8s} {'ms/step':>8s} {'× vs best ART':>13s} {'held-out success':>16s} "
          f"{'no patch':>8s} {'area':>6s}")
    for r in rows:
        print(f"{r['method']:40s} {r['seconds']:8.2f} {r['ms_per_step']:8.2f} {r['speedup_vs_art']:13.1f} "
              f"{r['held_out_success']:16.3f} {r['without_patch']:8.3f} {r['area']:6.3f}")
    print(f"success ours − best ART: {rows[0]['success_minus_best_art']:+.3f}")
    pc = rows[0]["placement"]
    print(f"EOT placement alone (forward + backward to the patch, batch {a.batch}, no model): ours "
          f"{pc['ours_ms']:.2f} ms, ART-Numpy {pc['art_ms']:.2f} ms per step ({pc['ratio']:.1f}×)")
    return rows


if __name__ == "__main__":
    main()
