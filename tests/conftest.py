"""Shared fixtures: affine classifiers with analytic answers, small data, the shipped models."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from georobust import Classifier

# GEOROBUST_TEST_THREADS, else OMP_NUM_THREADS (so `OMP_NUM_THREADS=1 pytest` really runs on one thread), else 2
torch.set_num_threads(int(os.environ.get("GEOROBUST_TEST_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))))


class Affine(nn.Module):
    """``f(x) = W x + b`` on the flattened input: every minimal perturbation is known in closed form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def make_affine(d: int = 20, k: int = 5, seed: int = 0, scale: float = 1.0) -> Classifier:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g) * scale
    b = torch.randn(k, generator=g) * 0.1
    # centre the decision boundaries inside the box: f(0.5·1) = b
    b = b - w @ torch.full((d,), 0.5)
    return Classifier(Affine(w, b), bounds=(0.0, 1.0), name="affine").eval()


@pytest.fixture
def affine():
    return make_affine()


@pytest.fixture
def affine_data():
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(64, 20, generator=g)
    return x


@pytest.fixture(scope="session")
def digits_test():
    from georobust import data

    return data.load("digits", "test")


@pytest.fixture(scope="session")
def mlp_digits():
    from georobust import pretrained

    return pretrained("mlp-digits")


def fmnist_available() -> bool:
    from georobust.data import fashion_mnist

    return fashion_mnist.available()


needs_fmnist = pytest.mark.skipif(not fmnist_available(), reason="Fashion-MNIST not installed")


ROOT = Path(__file__).resolve().parents[1]


def load_script(rel: str):
    """Import a benchmark or reproduction script (``benchmarks/x.py``, ``repro/y.py``) as a module, so a test
    calls its ``main([... "--quick"])`` in-process and checks the numbers it returns."""
    name = "script_" + rel.replace("/", "_").removesuffix(".py")
    folder = str((ROOT / rel).parent)
    if folder not in sys.path:  # as when run as `python repro/x.py`: the script's folder is importable
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_cli(*args, check: bool = True, threads: int = 1, timeout: int = 300):
    """Run the real ``georobust`` command (``python -m georobust.cli ARGS``) in a subprocess; with ``check`` a
    non-zero exit fails the test with the command's output. Returns the ``CompletedProcess``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "georobust.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


#: Round-off band of a float32 decision, relative to the largest |logit| of the sample. The same inputs through
#: the same model give logits that differ by up to 2.5e-7 × max|logit| between kernels (batch of 1 / 7 / 200,
#: 1 or 2 threads, ATEN_CPU_CAPABILITY default / avx2 / avx512; measured on mlp-digits, torch 2.13): a sample
#: whose top-two margin is inside that band may be called either way on another CPU. 1e-5 leaves a factor 40.
ROUNDOFF = 1e-5


def relative_margin(model, x, label) -> torch.Tensor:
    """``(z_label − max_{k≠label} z_k) / max_k |z_k|`` per sample, in float64 (> 0: the model keeps ``label``).
    A sample with ``|margin| <= ROUNDOFF`` sits on the decision boundary up to round-off: which side a given CPU
    puts it on is luck, so a test may count it neither as fooled nor as not fooled."""
    with torch.no_grad():
        z = model(x).double()
    label = torch.as_tensor(label).to(z.device)
    other = z.clone()
    other[torch.arange(z.shape[0]), label] = -float("inf")
    return (z.gather(1, label[:, None])[:, 0] - other.max(1).values) / z.abs().amax(1).clamp_min(1e-30)


def on_boundary(model, x, label) -> torch.Tensor:
    """Samples whose decision between ``label`` and the runner-up is within round-off (see :data:`ROUNDOFF`)."""
    return relative_margin(model, x, label).abs() <= ROUNDOFF


# ---- the image-shaped affine toy of the score-based attacks (Square, SPSA) ----------------------------
class ImageAffine(nn.Module):
    """``z = W·q(x) + b`` on images; ``q`` quantises to ``levels`` values (zero gradients) when given.
    Counts every input it sees."""

    def __init__(self, c=3, h=8, w=8, k=5, seed=0, levels=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(k, c * h * w, generator=g), requires_grad=False)
        self.b = nn.Parameter(torch.randn(k, generator=g), requires_grad=False)
        self.levels = levels
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        if self.levels:
            x = torch.round(x * (self.levels - 1)) / (self.levels - 1)
        return x.flatten(1) @ self.W.t() + self.b


def analytic_distance(m: ImageAffine, x: torch.Tensor, norm: str) -> torch.Tensor:
    """The exact minimal Lp distance to another class of the affine model (box ignored): min over t ≠ y of
    (z_y − z_t)/‖w_y − w_t‖_dual; y is the clean prediction."""
    z = x.flatten(1) @ m.W.t() + m.b
    y = z.argmax(1)
    diff = m.W[y][:, None, :] - m.W[None]
    den = diff.abs().sum(2) if norm == "inf" else diff.norm(dim=2)
    d = (z.gather(1, y[:, None]) - z) / den
    d[torch.arange(len(y)), y] = float("inf")
    return d.min(1).values


def fmnist_model(name: str, n: int):
    """A shipped Fashion-MNIST model and the first ``n`` test images and labels (skips without Fashion-MNIST)."""
    if not fmnist_available():
        pytest.skip("Fashion-MNIST not installed")
    from georobust import data, pretrained

    x, y = data.load("fashion-mnist", "test", limit=n)
    return pretrained(name), x, y


class CountingLinear(nn.Module):
    """A linear model on flattened ``(N, 1, 4, 4)`` inputs that counts its forward passes: bad input must be
    refused before any of them."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x.flatten(1))
