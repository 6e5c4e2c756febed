"""Benchmark: one evaluation sharded over 1 and N processes with torchrun (georobust.evaluation.distributed).

The same ``georobust evaluate`` (same model, samples, attacks, seed, ``--shard-size``) runs as one process
(``python -m georobust evaluate``) and as N processes (``torchrun --standalone --nproc-per-node N -m georobust
evaluate``), each with ``OMP_NUM_THREADS=1``. It reports, for each, the wall time of the whole command (start-up,
data and model loading included) and of the evaluation itself (``seconds`` in ``evaluation.json``, measured on
rank 0 from the first shard to the gathered result), the speed-up over one process and the efficiency
(speed-up / N); and it checks that the per-sample results of every attack are byte-identical.

    python benchmarks/scale.py                 # lenet-fmnist, 1024 Fashion-MNIST images, DeepFool + PGD-20, N = 2
    python benchmarks/scale.py --quick         # seconds: mlp-digits, 64 images, PGD-5
    python benchmarks/scale.py --device cuda --nproc 8    # on a machine with 8 GPUs (one process per GPU)

Measured on CPU only (this project was lent no GPU): benchmarks/results/scale.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def _command(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "georobust", *args]
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", "--nproc-per-node", str(nproc), "-m", "georobust", *args]


def _run(nproc: int, args: list[str], out: Path, threads: int) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    p = subprocess.run(_command(nproc, [*args, "--out", str(out)]), capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    return wall, json.loads((out / "evaluation.json").read_text())


def identical(a: Path, b: Path, attacks: list[str]) -> bool:
    """Every tensor of every attack's result file is the same, bit for bit."""
    for name in attacks:
        ta, tb = load_file(a / f"result_{name}.safetensors"), load_file(b / f"result_{name}.safetensors")
        if set(ta) != set(tb) or not all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta):
            return False
    return True


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="mlp-digits, 64 images, PGD-5 (seconds)")
    ap.add_argument("--model", default="zoo:lenet-fmnist")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--limit", type=int, default=1024)
    ap.add_argument("--attacks", default="deepfool,pgd")
    ap.add_argument("--steps", type=int, default=20, help="PGD steps")
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--nproc", type=int, default=2, help="processes of the sharded run")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--save", default=None, help="write the table to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.model, a.data, a.limit, a.steps, a.shard_size = "zoo:mlp-digits", "digits", 64, 5, 16
    attacks = [s for s in a.attacks.split(",") if s]
    args = ["evaluate", "--model", a.model, "--data", a.data, "--limit", str(a.limit), "--attacks", a.attacks,
            "--eps", "0,0.05,0.1", "--shard-size", str(a.shard_size), "--device", a.device]
    if "pgd" in attacks:
        args += ["-o", f"pgd.steps={a.steps}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for nproc in (1, a.nproc):
            outs[nproc] = Path(tmp) / f"n{nproc}"
            wall, ev = _run(nproc, args, outs[nproc], a.threads)
            rows.append({"processes": nproc, "wall_s": wall, "eval_s": ev["seconds"], "worst_case": ev["worst_case"]})
        same = identical(outs[1], outs[a.nproc], attacks)
    for r in rows:
        r["speedup_wall"] = rows[0]["wall_s"] / r["wall_s"]
        r["speedup_eval"] = rows[0]["eval_s"] / r["eval_s"]
        r["efficiency_eval"] = r["speedup_eval"] / r["processes"]
        r["identical"] = same
    head = (f"{a.model} on {a.data}, {a.limit} samples, {a.attacks} (PGD-{a.steps}, eps 0/0.05/0.1), "
            f"--shard-size {a.shard_size}, {a.threads} thread(s) per process, device {a.device}")
    lines = [head, f"{'processes':>9} {'wall s':>8} {'eval s':>8} {'speed-up (eval)':>16} {'efficiency':>11} "
                   f"{'identical':>10}"]
    for r in rows:
        lines.append(f"{r['processes']:>9} {r['wall_s']:>8.1f} {r['eval_s']:>8.1f} {r['speedup_eval']:>16.2f} "
                     f"{r['efficiency_eval']:>11.2f} {str(r['identical']):>10}")
    print("\n".join(lines))
    if a.save:
        Path(a.save).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
