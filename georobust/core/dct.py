"""Orthonormal discrete cosine transforms (DCT-II and its inverse, DCT-III) written in torch.

Used by the subspace variants of the decision-based attacks (QFool, Liu, Moosavi-Dezfooli & Frossard,
ICCV 2019, Sec. 4; the low-frequency subspace of Guo et al., "Low frequency adversarial perturbation",
UAI 2019): random probes drawn from the span of the lowest DCT frequencies of an image.

The transforms are matrix products with the orthonormal DCT-II basis ``C`` (``C Cᵀ = I``), so
``idct(dct(x)) = x`` to round-off, norms are preserved, and everything runs on the device and dtype of the
input. ``dct_2d``/``idct_2d`` act on the last two dimensions, ``dct_1d``/``idct_1d`` on the last one.
"""

from __future__ import annotations

import math

import torch

from ..errors import OptionError


def dct_matrix(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C`` (``n × n``): ``X_k = Σ_j C[k, j] x_j``.

    ``C[k, j] = s_k cos(π (2j + 1) k / (2n))`` with ``s_0 = √(1/n)``, ``s_k = √(2/n)``; its transpose is
    the orthonormal DCT-III, the inverse.
    """
    if n < 1:
        raise OptionError(f"DCT size must be >= 1, got {n}")
    j = torch.arange(n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    c = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(device=device, dtype=dtype)


def dct_1d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last dimension."""
    c = dct_matrix(x.shape[-1], device=x.device, dtype=x.dtype)
    return x @ c.T


def idct_1d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-III (inverse of :func:`dct_1d`) along the last dimension."""
    c = dct_matrix(x.shape[-1], device=x.device, dtype=x.dtype)
    return x @ c


def dct_2d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dimensions (``C_H X C_Wᵀ``)."""
    ch = dct_matrix(x.shape[-2], device=x.device, dtype=x.dtype)
    cw = dct_matrix(x.shape[-1], device=x.device, dtype=x.dtype)
    return ch @ x @ cw.T


def idct_2d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-III (inverse of :func:`dct_2d`) over the last two dimensions."""
    ch = dct_matrix(x.shape[-2], device=x.device, dtype=x.dtype)
    cw = dct_matrix(x.shape[-1], device=x.device, dtype=x.dtype)
    return ch.T @ x @ cw


def low_frequency_mask(shape: tuple[int, ...], size: int, *, device=None) -> torch.Tensor:
    """Boolean mask of the low-frequency coefficients for inputs of per-sample ``shape``.

    Images ``(C, H, W)``: the ``size × size`` block of lowest frequencies of every channel (clipped to
    ``H × W``). Vectors ``(D,)``: the first ``size`` coefficients.
    """
    if size < 1:
        raise OptionError(f"subspace size must be >= 1, got {size}")
    m = torch.zeros(shape, dtype=torch.bool, device=device)
    if len(shape) >= 2:
        m[..., :size, :size] = True
    else:
        m[:size] = True
    return m


def low_frequency_noise(n: int, shape: tuple[int, ...], size: int, *, generator: torch.Generator | None = None,
                        device=None, dtype=torch.float32) -> torch.Tensor:
    """``n`` standard Gaussian vectors of the low-frequency DCT subspace, in input space, shape ``(n, *shape)``.

    The DCT is orthonormal, so the result is a standard Gaussian of the subspace (isotropic inside it).
    """
    if size < 1:
        raise OptionError(f"subspace size must be >= 1, got {size}")
    if len(shape) >= 2:  # only the low block is drawn: x = C_H[:s]ᵀ G C_W[:s]
        sh, sw = min(size, shape[-2]), min(size, shape[-1])
        g = torch.randn((n, *shape[:-2], sh, sw), generator=generator, device=device, dtype=dtype)
        ch = dct_matrix(shape[-2], device=device, dtype=dtype)[:sh]
        cw = dct_matrix(shape[-1], device=device, dtype=dtype)[:sw]
        return ch.T @ g @ cw
    s = min(size, shape[-1])
    g = torch.randn((n, s), generator=generator, device=device, dtype=dtype)
    return g @ dct_matrix(shape[-1], device=device, dtype=dtype)[:s]
