"""What the reproduction scripts share: their results folder, the standard options, and the data set of a
shipped model (the one its manifest entry names). Scripts run as ``python repro/x.py``, so this folder is on
``sys.path``."""

from __future__ import annotations

import argparse
from pathlib import Path

from georobust.models import manifest

RESULTS = Path(__file__).resolve().parent / "results"


def parser(doc: str, *, seed: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``--threads``, ``--out`` (default ``repro/results``), ``--quick`` and, unless
    ``seed=False``, ``--seed``; the description is the first line of ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    if seed:
        ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md table and the figures")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, seconds (what the tests run)")
    return ap


def dataset_of(model: str) -> str:
    """The data set a shipped model was trained on (``lenet-fmnist`` → ``fashion-mnist``)."""
    return manifest()[model]["data"]

