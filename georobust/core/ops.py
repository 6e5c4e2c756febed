"""Tensor operations shared by attacks, geometry and defences: per-sample broadcasting, norms, steepest-ascent
directions, projections onto Lp balls, random generators and random starts.

Pure tensor code: nothing here knows a model (``georobust.core.losses`` adds the losses and their gradients).
"""

from __future__ import annotations

import torch

from ..errors import OptionError


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(N,)`` to broadcast against ``x`` ``(N, ...)``."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    f = t.flatten(1)
    if norm == "2":
        return f.norm(dim=1)
    if norm == "inf":
        return f.abs().amax(1)
    if norm == "1":
        return f.abs().sum(1)
    raise OptionError(f"unknown norm {norm!r}")


def steepest_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm direction of steepest ascent for ``g``: ``sign(g)`` for L∞, ``g/‖g‖₂`` for L2."""
    if norm == "inf":
        return g.sign()
    n = flat_norm(g, "2").clamp_min(1e-12)
    return g / bcast(n, g)


def project(delta: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (a scalar or per-sample ``(N,)``)."""
    if not isinstance(eps, torch.Tensor):
        eps = torch.full((delta.shape[0],), float(eps), device=delta.device, dtype=delta.dtype)
    e = bcast(eps.to(delta.dtype), delta)
    if norm == "inf":
        return torch.maximum(torch.minimum(delta, e), -e)
    if norm == "2":
        n = bcast(flat_norm(delta, "2"), delta)
        return delta * torch.clamp(e / n.clamp_min(1e-12), max=1.0)
    raise OptionError(f"projection onto the {norm} ball is not supported")


def make_generator(device: torch.device, seed: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Generator:
    """A generator on ``device`` from ``seed`` or ``generator`` (default: seeded from torch's global RNG,
    so ``torch.manual_seed`` makes the call reproducible)."""
    if seed is not None and generator is not None:
        raise OptionError("give either seed= or generator=, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise OptionError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if torch.device(generator.device).type != torch.device(device).type:
            raise OptionError(f"generator is on {generator.device} but inputs are on {device}; "
                              f"create it with torch.Generator(device={str(device)!r})")
        return generator
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


def random_start(like: torch.Tensor, eps: float | torch.Tensor, norm: str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A random start ``δ`` in the ``norm`` ball of radius ``eps``, one per sample of ``like`` — the one
    convention of the package (PGD's random start and adversarial training's alike).

    L∞: uniform in the cube. L2: a uniform direction with a radius uniform in ``[0, eps]``, *not* uniform in
    the ball's volume: in ``d`` dimensions a volume-uniform radius is ``eps·u^(1/d)``, which for an image is
    ``eps`` to within a fraction of a percent, so every start would sit on the sphere. The choice was
    measured (``benchmarks/random_start.py``, ``benchmarks/results/random_start.txt``): PGD-L2-20, robust
    accuracy radius- vs volume-uniform, 1/5 restarts, lenet-fmnist-at eps 2: 0.392/0.367 vs 0.407/0.382, eps 3:
    0.147/0.122 vs 0.172/0.142; mlp-digits eps 0.5: 0.470/0.447 vs 0.487/0.463 — never weaker in 12 settings.
    ``generator`` ``None`` draws from torch's global generator on the device of ``like``.
    """
    shape, dev, dt = like.shape, like.device, like.dtype
    e = eps if isinstance(eps, torch.Tensor) else torch.full((shape[0],), float(eps), device=dev, dtype=dt)
    e = e.to(dev, dt)
    if norm == "inf":
        return (torch.rand(shape, generator=generator, device=dev, dtype=dt) * 2 - 1) * bcast(e, like)
    if norm != "2":
        raise OptionError(f"random starts in the {norm} ball are not supported; choose inf or 2")
    g = torch.randn(shape, generator=generator, device=dev, dtype=dt)
    radius = e * torch.rand(shape[0], generator=generator, device=dev, dtype=dt)
    return g * bcast(radius / flat_norm(g, "2").clamp_min(1e-12), g)
