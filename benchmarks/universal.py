"""Benchmark: georobust universal perturbations against ART 1.20 ``UniversalPerturbation(attacker="deepfool")``.

Same model, training images, held-out images, norm, ξ and δ, in one process: ART's algorithm is CVPR 2017's
Algorithm 1 one sample at a time (its inner DeepFool is L2, like ours by default), with ``max_iter`` passes;
georobust runs ``mode="sequential"`` (exactly Algorithm 1, batched "still unfooled?" tests) and
``mode="batched"`` (DeepFool batched over the unfooled samples of each chunk). For each it prints seconds, the
passes made, the fooling rate on the training images and on the held-out images (against the model's clean
predictions, every perturbation re-applied and clipped here), and the time ratio to ART.

Inner DeepFool for all: 10 iterations, overshoot 0.02, 10 candidate classes (ART: ``nb_grads=10``).

Work-normalised comparison: part of the speed ratio comes from the number of inner DeepFool runs (a sample that
is already fooled by ``v`` costs one forward pass, no DeepFool), so the number of runs is counted for each
method — georobust's ``UniversalResult.attempts`` (samples DeepFool ran on; in batched mode many per call), ART's
by wrapping the ``generate`` of its inner attacker — and the time per run is printed beside the total.

Why ART fools less (read in ART 1.20.1's source, ``universal_perturbation.py`` and ``deepfool.py``): its update is
``noise = adv_xi − x_i`` with ``adv_xi = DeepFool(x_i + noise)``, and ART's DeepFool clips its iterates and its
output to ``clip_values`` = [0, 1]. So every update replaces ``v`` by ``clip(x_i + v + Δv_i) − x_i``: wherever the
current image is dark (0) or saturated (1) the part of ``v`` pointing out of the box is discarded — on
Fashion-MNIST's black backgrounds every negative component — before the projection onto the ξ-ball. georobust
adds the unclipped step, ``v ← P_ξ(v + Δv_i)``, as the paper's Algorithm 1 does (the clipping happens only where
the model sees ``x + v``).

    python benchmarks/universal.py            # full: lenet-fmnist, 500 train / 1,000 test, L∞ ξ=0.2, ≤2 passes
    python benchmarks/universal.py --quick    # seconds: 60 / 100 images, 1 pass
"""

from __future__ import annotations

import argparse
import random
import time
import warnings

import numpy as np
import torch

import georobust as gr
from georobust.attacks.universal import universal_perturbation
from georobust.evaluation.metrics import fooling_rate

warnings.filterwarnings("ignore")


def run(model: str, n_train: int, n_test: int, norm: str, xi: float, delta: float, passes: int,
        chunk: int, art: bool = True, seed: int = 0) -> list[dict]:
    clf = gr.pretrained(model)
    dset = gr.models.manifest()[model]["data"]
    x, _ = gr.data.load(dset, "train", limit=n_train)
    xt, _ = gr.data.load(dset, "test", limit=n_test)
    px, pt = gr.predict(clf, x), gr.predict(clf, xt)  # clean predictions, once

    def rates(v):
        return {"fool_train": fooling_rate(clf, x, v, pred=px), "fool_test": fooling_rate(clf, xt, v, pred=pt)}

    rows = []
    universal_perturbation(clf, x[:8], xi=xi, norm=norm, max_passes=1)  # warm-up, not timed
    for mode in ("sequential", "batched"):
        t = time.perf_counter()
        r = universal_perturbation(clf, x, xi=xi, norm=norm, delta=delta, max_passes=passes, mode=mode,
                                   chunk=chunk if mode == "batched" else 256, seed=seed)
        sec = time.perf_counter() - t
        rows.append({"method": f"georobust {mode}" + (f" (chunk {chunk})" if mode == "batched" else ""),
                     "seconds": sec, "passes": r.passes, "deepfool_runs": int(sum(r.attempts)), "v": r.v, **rates(r.v)})
    if art:
        from art.attacks.evasion import UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier

        est = PyTorchClassifier(clf, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=int(clf(x[:1]).shape[1]), clip_values=clf.bounds)
        class Counted(UniversalPerturbation):
            """ART's attack, unchanged, with a counter around its inner DeepFool's ``generate``."""

            calls = 0

            def _get_attack(self, a_name, params=None):
                inner = super()._get_attack(a_name, params)
                generate = inner.generate

                def counted(*args, **kwargs):
                    type(self).calls += 1
                    return generate(*args, **kwargs)

                inner.generate = counted
                return inner

        def art_attack(max_iter):
            return Counted(est, attacker="deepfool",
                                         attacker_params={"max_iter": 10, "epsilon": 0.02, "nb_grads": 10,
                                                          "verbose": False},
                                         delta=delta, max_iter=max_iter, eps=xi,
                                         norm=np.inf if norm == "inf" else 2, verbose=False)

        art_attack(1).generate(x[:8].numpy())  # warm-up, as for georobust
        atk = art_attack(passes)
        Counted.calls = 0
        random.seed(seed)
        t = time.perf_counter()
        atk.generate(x.numpy())
        sec = time.perf_counter() - t
        v = torch.from_numpy(np.asarray(atk.noise[0])).float()
        rows.append({"method": "ART UniversalPerturbation", "seconds": sec, "passes": -1,
                     "deepfool_runs": Counted.calls, "v": v, **rates(v)})
    ref = rows[-1] if art else None
    for r in rows:
        r["ms_per_run"] = 1000 * r["seconds"] / r["deepfool_runs"] if r["deepfool_runs"] else float("nan")
    for r in rows:
        r["speedup_vs_art"] = ref["seconds"] / r["seconds"] if ref else float("nan")
        r["per_run_speedup_vs_art"] = ref["ms_per_run"] / r["ms_per_run"] if ref else float("nan")
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="lenet-fmnist")
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--norm", default="inf")
    ap.add_argument("--xi", type=float, default=None, help="default 0.2 (L∞) or 3.0 (L2)")
    ap.add_argument("--delta", type=float, default=0.2)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-art", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.quick:
        a.n_train, a.n_test, a.passes = 60, 100, 1
    xi = a.xi if a.xi is not None else (0.2 if a.norm == "inf" else 3.0)
    rows = run(a.model, a.n_train, a.n_test, a.norm, xi, a.delta, a.passes, a.chunk, art=not a.no_art)
    print(f"universal perturbations: {a.model}, {a.n_train} train / {a.n_test} held-out, L{a.norm} ξ={xi}, "
          f"δ={a.delta}, ≤{a.passes} passes, {a.threads} threads (shared CPU: absolute seconds are noisy)")
    print(f"{'method':34s} {'seconds':>9s} {'passes':>6s} {'fool train':>10s} {'fool test':>10s} {'× vs ART':>9s} "
          f"{'DF runs':>8s} {'ms/run':>8s} {'per-run × vs ART':>17s}")
    for r in rows:
        p = "?" if r["passes"] < 0 else str(r["passes"])
        print(f"{r['method']:34s} {r['seconds']:9.2f} {p:>6s} {r['fool_train']:10.3f} {r['fool_test']:10.3f} "
              f"{r['speedup_vs_art']:9.1f} {r['deepfool_runs']:8d} {r['ms_per_run']:8.2f} "
              f"{r['per_run_speedup_vs_art']:17.1f}")
    return rows


if __name__ == "__main__":
    main()
