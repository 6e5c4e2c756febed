"""Benchmark: the L2 random start of PGD — a radius uniform in ``[0, eps]`` versus uniform in the ball's volume.

Both draw a uniform direction (a normalised Gaussian); they differ only in the radius: ``eps·u`` (uniform in
radius) or ``eps·u^(1/d)`` (uniform in volume: in ``d`` dimensions almost every start sits next to the
sphere). Everything else is the shipped :func:`georobust.attacks.pgd.pgd` — same model, images, steps,
step size (``2.5·eps/steps``) and seeds; the start is swapped into ``georobust.core.ops.random_start`` for the
duration of a run. For every model, eps and number of restarts it prints the robust accuracy (lower is a
stronger attack) of each convention, and of no random start as a reference, averaged over the seeds.

Models: the shipped ``lenet-fmnist-at`` (Fashion-MNIST, adversarially trained, L∞) and ``mlp-digits``
(8×8 digits), both by :func:`georobust.pretrained`.

    python benchmarks/random_start.py            # 300 test images, 20 steps, seeds 0 1
    python benchmarks/random_start.py --quick    # seconds: 100 images, 5 steps, one seed
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

import georobust as gr
from georobust.attacks.pgd import pgd
from georobust.core import ops

#: (model, data set, L2 radii)
SETTINGS = (("lenet-fmnist-at", "fashion-mnist", (1.0, 2.0, 3.0)),
            ("mlp-digits", "digits", (0.25, 0.5, 0.75)))


def _start(volume: bool):
    """An L2 start ``(like, eps, norm, generator) -> δ``: radius ``eps·u`` or ``eps·u^(1/d)``; both draw the
    same Gaussian direction and the same ``u`` from the generator, so only the radius differs."""

    def start(like, eps, norm, generator=None):
        if norm != "2":
            raise ValueError("this benchmark compares L2 starts only")
        n, dev, dt = like.shape[0], like.device, like.dtype
        e = eps if isinstance(eps, torch.Tensor) else torch.full((n,), float(eps), device=dev, dtype=dt)
        g = torch.randn(like.shape, generator=generator, device=dev, dtype=dt)
        u = torch.rand(n, generator=generator, device=dev, dtype=dt)
        if volume:
            u = u.pow(1.0 / like[0].numel())
        radius = e.to(dev, dt) * u
        return g * ops.bcast(radius / ops.flat_norm(g, "2").clamp_min(1e-12), g)

    return start


@contextlib.contextmanager
def _installed(start):
    saved = ops.random_start
    ops.random_start = start
    try:
        yield
    finally:
        ops.random_start = saved


def robust_accuracy(clf, x, y, *, eps: float, steps: int, restarts: int, seed: int, start: str) -> float:
    """Robust accuracy under the shipped PGD-L2 with the given start (``radius``, ``volume`` or ``none``)."""
    if start == "none":
        r = pgd(clf, x, y, eps=eps, norm="2", steps=steps, restarts=restarts, random_start=False)
    else:
        with _installed(_start(volume=start == "volume")):
            r = pgd(clf, x, y, eps=eps, norm="2", steps=steps, restarts=restarts, seed=seed)
    return float((~r.success).double().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 images, 5 steps, one seed")
    ap.add_argument("-n", type=int, default=300, help="test images per model")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.steps, a.seeds = 100, 5, [0]
    torch.set_num_threads(a.threads)
    print(f"PGD-L2, {a.steps} steps, step 2.5·eps/steps, {a.n} test images, seeds {a.seeds}; robust accuracy "
          "(lower = stronger attack), mean over seeds")
    print(f"{'model':<16} {'eps':>4} {'restarts':>8} {'radius-uniform':>15} {'volume-uniform':>15} "
          f"{'no start':>9}")
    t0 = time.perf_counter()
    for model, data, radii in SETTINGS:
        clf = gr.pretrained(model)
        x, y = gr.data.load(data, "test", limit=a.n)
        for eps in radii:
            for restarts in (1, 5):
                acc = {s: sum(robust_accuracy(clf, x, y, eps=eps, steps=a.steps, restarts=restarts, seed=sd,
                                              start=s) for sd in a.seeds) / len(a.seeds)
                       for s in ("radius", "volume")}
                none = robust_accuracy(clf, x, y, eps=eps, steps=a.steps, restarts=1, seed=0, start="none")
                print(f"{model:<16} {eps:>4g} {restarts:>8d} {acc['radius']:>15.4f} {acc['volume']:>15.4f} "
                      f"{none:>9.4f}", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
