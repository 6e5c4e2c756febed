"""Benchmark: georobust DeepFool (L2, L∞) against Foolbox 3.3.4, torchattacks 3.5.1 and ART 1.20 on the same
model, inputs and settings, in one process; plus a PGD section against torchattacks.

Default (full): lenet-fmnist, the first 1,000 Fashion-MNIST test images, 2 CPU threads, overshoot 0.02,
10 candidate classes, 50 steps, every method attacking the model's *predicted* labels. For each method it
prints seconds, the success rate *verified by re-running the model* on what the method returned, the
median L2 (L∞ for the L∞ table) over the successes, and the ratios to georobust (time and norm).
torchattacks' DeepFool loops over samples in Python and is slow; it runs on the first ``--ta-limit``
images (default 200), and the table says so in its ``n`` column. ART's DeepFool is L2 only. Every method
is warmed up on a few images before it is timed. The PGD section is ``benchmarks/pgd.py``'s L∞ row.

    python benchmarks/deepfool.py            # full
    python benchmarks/deepfool.py --quick    # seconds: 50 images
"""

from __future__ import annotations

import argparse
import time
import warnings
from functools import partial

import pgd as pgd_bench  # benchmarks/pgd.py: this script's folder is on sys.path
import torch

import georobust as gr
from georobust.attacks.deepfool import deepfool

warnings.filterwarnings("ignore")
print = partial(print, flush=True)  # noqa: A001 - progress shows up in logs while peers run


def _row(method, clf, x, pred, xa, seconds, norm):
    xa = xa.detach()
    ok = gr.predict(clf, xa) != pred
    r = (xa - x).flatten(1).double()
    n = r.norm(dim=1) if norm == "2" else r.abs().amax(1)
    inside = bool((xa >= 0).all() and (xa <= 1).all())
    return {"method": method, "n": len(x), "seconds": seconds, "success": float(ok.double().mean()),
            "median": float(n[ok].median()) if ok.any() else float("nan"), "in_bounds": inside}


def run_deepfool(clf, x, norm: str, *, ta_limit: int, peers=("foolbox", "torchattacks", "art")) -> list[dict]:
    pred = gr.predict(clf, x)
    rows = []
    deepfool(clf, x[:8], norm=norm)  # warm-up (lazy initialisations), not timed
    t = time.perf_counter()
    res = deepfool(clf, x, norm=norm, overshoot=0.02, candidates=10, max_iter=50)
    rows.append(_row("georobust", clf, x, pred, res.x_adv, time.perf_counter() - t, norm))
    rows[-1]["mean_iterations"] = float(res.iterations.double().mean())
    if "foolbox" in peers:
        import foolbox as fb

        cls = fb.attacks.L2DeepFoolAttack if norm == "2" else fb.attacks.LinfDeepFoolAttack
        atk = cls(steps=50, candidates=10, overshoot=0.02, loss="logits")
        fm = fb.PyTorchModel(clf, bounds=clf.bounds)
        atk(fm, x[:8], fb.criteria.Misclassification(pred[:8]), epsilons=None)  # warm-up, as for georobust
        t = time.perf_counter()
        _, xa, _ = atk(fm, x, fb.criteria.Misclassification(pred), epsilons=None)
        rows.append(_row(f"foolbox {cls.__name__}", clf, x, pred, xa, time.perf_counter() - t, norm))
    if "torchattacks" in peers and norm == "2":
        import torchattacks

        xs = x[:ta_limit]
        ta = torchattacks.DeepFool(clf, steps=50, overshoot=0.02)
        ta(x[:2], pred[:2])  # warm-up
        t = time.perf_counter()
        xa = ta(xs, pred[:ta_limit])
        rows.append(_row("torchattacks DeepFool", clf, xs, pred[:ta_limit], xa, time.perf_counter() - t, norm))
    if "art" in peers and norm == "2":
        from art.attacks.evasion import DeepFool
        from art.estimators.classification import PyTorchClassifier

        est = PyTorchClassifier(clf, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=int(clf(x[:1]).shape[1]), clip_values=clf.bounds)
        atk = DeepFool(est, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=len(x), verbose=False)
        atk.generate(x[:8].numpy())  # warm-up
        t = time.perf_counter()
        xa = torch.from_numpy(atk.generate(x.numpy()))
        rows.append(_row("ART DeepFool", clf, x, pred, xa, time.perf_counter() - t, norm))
    base = rows[0]
    for r in rows:
        # time ratio per sample, so a peer run on fewer images is compared fairly
        r["time_ratio"] = (r["seconds"] / r["n"]) / (base["seconds"] / base["n"])
        r["norm_ratio"] = r["median"] / base["median"]
    return rows


def deepfool_table(rows: list[dict], norm: str) -> str:
    name = "L2" if norm == "2" else "L∞"
    out = [f"| method | n | seconds | time/sample ratio | success (re-run) | median {name} | norm ratio | in bounds |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['n']} | {r['seconds']:.2f} | {r['time_ratio']:.2f}× | {r['success']:.3f} | "
                   f"{r['median']:.4f} | {r['norm_ratio']:.4f} | {'yes' if r['in_bounds'] else 'no'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the tables; return the rows by section (``"2"``, ``"inf"``, ``"pgd"``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 images, seconds")
    ap.add_argument("--model", default="zoo:lenet-fmnist")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("-n", type=int, default=1000, help="number of test images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ta-limit", type=int, default=200, help="images given to torchattacks DeepFool (slow)")
    ap.add_argument("--peers", default="foolbox,torchattacks,art", help="comma-separated peers to run")
    ap.add_argument("--no-pgd", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    n = 50 if a.quick else a.n
    ta_limit = min(10 if a.quick else a.ta_limit, n)
    clf = gr.load_model(a.model)
    x, y = gr.data.load(a.data, "test", limit=n)
    peers = tuple(p.strip() for p in a.peers.split(",") if p.strip())
    print(f"# DeepFool benchmark: {a.model} on {a.data} (first {n} test images), {a.threads} threads, "
          "overshoot 0.02, 10 candidates, 50 steps\n")
    out: dict = {}
    for norm in ("2", "inf"):
        rows = out[norm] = run_deepfool(clf, x, norm, ta_limit=ta_limit, peers=peers)
        print(f"## DeepFool {'L2' if norm == '2' else 'L∞'}  (georobust mean iterations "
              f"{rows[0]['mean_iterations']:.2f})\n")
        print(deepfool_table(rows, norm) + "\n")
    if not a.no_pgd:  # the L∞ row of benchmarks/pgd.py, on the same images
        steps = 5 if a.quick else 40
        rows = out["pgd"] = pgd_bench.run(clf, x, y, norm="inf", eps=0.1, steps=steps)
        print(f"## PGD L∞ (eps 0.1, {steps} steps, α = 2.5·eps/steps, random start, true labels)\n")
        print(pgd_bench.table(rows) + "\n")
    return out


if __name__ == "__main__":
    main()
