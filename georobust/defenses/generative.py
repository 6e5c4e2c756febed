"""Small generative models of the data for projection defences, and their training.

:class:`DenoisingAutoencoder`
    The convolutional denoising autoencoder of MagNet (Meng & Chen, "MagNet: a two-pronged defense against
    adversarial examples", CCS 2017): trained to map ``x + noise`` back to ``x`` on clean data
    (:func:`fit_autoencoder`). Its reconstruction is MagNet's *reformer* and its reconstruction error MagNet's
    *detector* (:mod:`georobust.defenses.projections`).
:class:`VAE`
    A small variational autoencoder (Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014) whose
    decoder ``g(z)`` is the generator of the Defense-GAN-style projection ``argmin_z ‖g(z) − x‖²``
    (Samangouei, Kabkab & Chellappa, ICLR 2018; a VAE decoder in place of their GAN generator, trained here in
    seconds). :func:`fit_vae` trains it.

Both are plain ``nn.Module``s returned in eval mode, deterministic given ``seed``; :func:`build_generative`
rebuilds one from its ``config()`` (how the zoo loads them from safetensors). Training runs on the device of
the data given and logs one line per epoch.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_iterations, check_positive, check_x
from ..errors import InputError, OptionError, unknown_name

log = logging.getLogger(__name__)


def _check_images(x, name: str = "x") -> torch.Tensor:
    x = check_x(x, (0.0, 1.0), name=name)
    if x.ndim != 4:
        raise InputError(f"{name} must be images (N, C, H, W) in [0, 1], got shape {tuple(x.shape)}")
    return x


class DenoisingAutoencoder(nn.Module):
    """MagNet's convolutional autoencoder (Meng & Chen, CCS 2017, their MNIST "defensive device I" with wider
    layers): ``conv3(w) → ReLU → conv3(w) → ReLU → avg-pool 2 → conv3(w) → ReLU`` (encoder, a ``w × H/2 × W/2``
    code), ``upsample 2 → conv3(w) → ReLU → conv3(C) → sigmoid`` (decoder). The output lies in ``(0, 1)`` and has
    the input's shape when ``H`` and ``W`` are even.

    Args:
        channels: image channels ``C`` (1 for Fashion-MNIST).
        width: feature maps per layer ``w``.
    """

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        check_positive(channels, "channels", integer=True)
        check_positive(width, "width", integer=True)
        self.channels, self.width = int(channels), int(width)
        w = self.width
        self.encoder = nn.Sequential(nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                     nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(w, channels, 3, padding=1), nn.Sigmoid())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def config(self) -> dict:
        return {"class": "DenoisingAutoencoder", "channels": self.channels, "width": self.width}


class VAE(nn.Module):
    """A small fully connected variational autoencoder (Kingma & Welling, ICLR 2014) for images ``(C, H, W)``.

    Encoder ``flatten → hidden → ReLU → (μ, log σ²)`` of size ``latent_dim``; decoder :attr:`decoder`
    ``z → hidden → ReLU → hidden → ReLU → C·H·W → sigmoid`` reshaped to the image, so ``g(z) ∈ (0, 1)``. The
    prior is ``N(0, I)``. :meth:`mean_encoder` returns the module ``x → μ(x)`` (sharing the encoder's
    parameters): the generative projection can use it for one starting point.
    """

    def __init__(self, input_shape: tuple[int, ...] = (1, 28, 28), latent_dim: int = 16, hidden: int = 512):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise OptionError(f"input_shape is one image's shape (C, H, W), got {input_shape!r}")
        check_positive(latent_dim, "latent_dim", integer=True)
        check_positive(hidden, "hidden", integer=True)
        self.input_shape, self.latent_dim, self.hidden = shape, int(latent_dim), int(hidden)
        d = math.prod(shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, d), nn.Sigmoid(), nn.Unflatten(1, shape))
        self.eval()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` of the approximate posterior, each ``(N, latent_dim)``."""
        h = self.encoder(x)
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def mean_encoder(self) -> nn.Module:
        """The module ``x -> μ(x)``, sharing this VAE's encoder (its parameters, device and mode)."""
        return _Mean(self.encoder, self.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction at the posterior mean, ``g(μ(x))``."""
        return self.decoder(self.encode(x)[0])

    def config(self) -> dict:
        return {"class": "VAE", "input_shape": list(self.input_shape), "latent_dim": self.latent_dim,
                "hidden": self.hidden}


class _Mean(nn.Module):
    """``x -> μ(x)``: the first ``latent_dim`` outputs of the VAE's encoder (shares its parameters)."""

    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.training = encoder.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[:, :self.latent_dim]


#: the generative models :func:`build_generative` rebuilds from a ``config()``
GENERATIVE = {"DenoisingAutoencoder": DenoisingAutoencoder, "VAE": VAE}


def build_generative(config: dict) -> nn.Module:
    """Rebuild a :class:`DenoisingAutoencoder` or :class:`VAE` (untrained, eval mode) from its ``config()``."""
    if not isinstance(config, dict) or "class" not in config:
        raise OptionError(f"a generative model's config is a dict with a 'class' key, got {config!r}")
    cls = GENERATIVE.get(config["class"])
    if cls is None:
        raise unknown_name("generative model", config["class"], GENERATIVE)
    opts = {k: v for k, v in config.items() if k != "class"}
    if "input_shape" in opts:
        opts["input_shape"] = tuple(opts["input_shape"])
    return cls(**opts)


def _check_training(x, epochs, batch_size, lr, seed):
    x = _check_images(x)
    check_iterations(epochs, "epochs")
    check_iterations(batch_size, "batch_size")
    check_positive(lr, "lr")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    return x


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def fit_autoencoder(x: torch.Tensor, epochs: int = 5, noise: float = 0.1, seed: int = 0, *, width: int = 16,
                    batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-9,
                    model: DenoisingAutoencoder | None = None) -> DenoisingAutoencoder:
    """Train MagNet's denoising autoencoder on clean images ``x`` ``(N, C, H, W)`` in ``[0, 1]``.

    Loss: mean squared error between ``ae(clip(x + noise·ε))`` and ``x``, ``ε ~ N(0, I)`` (MagNet trains its
    autoencoders with this Gaussian noise, volume 0.1, and a small L2 weight penalty), Adam. Deterministic given
    ``seed`` (initialisation, shuffling and noise come from generators seeded with it) on one device and
    thread count. Returns the model in eval mode, on ``x``'s device; ``model.history`` holds the loss per epoch.
    """
    x = _check_training(x, epochs, batch_size, lr, seed)
    check_positive(noise, "noise", allow_zero=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = model if model is not None else DenoisingAutoencoder(x.shape[1], width)
    ae = ae.to(x.device).train()
    opt = torch.optim.Adam(ae.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        total = torch.zeros((), dtype=torch.float64, device=x.device)  # summed on the device: no sync per batch
        for idx in _batches(x.shape[0], batch_size, gen):
            xb = x[idx.to(x.device)]
            eps = torch.randn(xb.shape, generator=gen).to(xb)
            loss = F.mse_loss(ae((xb + noise * eps).clamp(0, 1)), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * xb.shape[0]
        history.append(float(total) / x.shape[0])
        log.info("autoencoder epoch %d/%d: mse %.5f (%.0f s)", epoch + 1, epochs, history[-1],
                 time.perf_counter() - t0)
    ae.eval()
    ae.history = history
    return ae


def fit_vae(x: torch.Tensor, epochs: int = 20, seed: int = 0, *, latent_dim: int = 16, hidden: int = 512,
            batch_size: int = 128, lr: float = 1e-3, beta: float = 1.0, model: VAE | None = None) -> VAE:
    """Train a :class:`VAE` on clean images ``x`` ``(N, C, H, W)`` in ``[0, 1]`` by the negative ELBO.

    Per image: binary cross-entropy of the reconstruction (summed over pixels, the Bernoulli likelihood of
    Kingma & Welling for grey levels in ``[0, 1]``) plus ``beta`` times ``KL(N(μ, σ²) ‖ N(0, I))``; one
    reparameterised sample per image; Adam. Deterministic given ``seed``. Returns the model in eval mode on
    ``x``'s device; ``model.history`` holds the mean negative ELBO per image per epoch.
    """
    x = _check_training(x, epochs, batch_size, lr, seed)
    check_positive(beta, "beta", allow_zero=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = model if model is not None else VAE(tuple(x.shape[1:]), latent_dim, hidden)
    vae = vae.to(x.device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        total = torch.zeros((), dtype=torch.float64, device=x.device)  # summed on the device: no sync per batch
        for idx in _batches(x.shape[0], batch_size, gen):
            xb = x[idx.to(x.device)]
            mu, logvar = vae.encode(xb)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen).to(mu)
            rec = F.binary_cross_entropy(vae.decoder(z), xb, reduction="sum") / xb.shape[0]
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
            loss = rec + beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * xb.shape[0]
        history.append(float(total) / x.shape[0])
        log.info("VAE epoch %d/%d: -ELBO %.2f (%.0f s)", epoch + 1, epochs, history[-1], time.perf_counter() - t0)
    vae.eval()
    vae.history = history
    return vae
