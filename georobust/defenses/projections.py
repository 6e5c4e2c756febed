"""Projection defences: MagNet, a Defense-GAN-style generative projection, JPEG-like quantisation, and the
defended models the zoo ships.

:class:`MagNetReformer` / :class:`ReconstructionDetector`
    MagNet (Meng & Chen, "MagNet: a two-pronged defense against adversarial examples", CCS 2017): a denoising
    autoencoder trained on clean data (:func:`~georobust.defenses.generative.fit_autoencoder`); the *reformer*
    replaces the input by its reconstruction (a differentiable :class:`~georobust.defenses.Projection`), the
    *detector* flags inputs whose reconstruction error ``mean |x − ae(x)|^p`` is large (a
    :class:`~georobust.defenses.Detector`, differentiable score).
:class:`GenerativeProjection`
    In the spirit of Defense-GAN (Samangouei, Kabkab & Chellappa, "Defense-GAN: protecting classifiers against
    adversarial attacks using generative models", ICLR 2018): the input is replaced by ``g(z*)``,
    ``z* = argmin_z ‖g(z) − x‖²`` found by Adam from several random starts (the seed's formula
    ``argmin_{x' = g(z)} d(x, x')``). ``g`` is the decoder of a small VAE trained here
    (:func:`~georobust.defenses.generative.fit_vae`) instead of their GAN generator.
:class:`MedianSmoothing`
    Median smoothing (Xu, Evans & Qi, NDSS 2018), the filter of :mod:`.detectors` as a projection.
:class:`JPEGQuantize`
    JPEG-like compression in torch: 8×8 block DCT, quantisation by the standard luminance table scaled by a
    quality factor, inverse DCT (the input transformation studied by Guo, Rana, Cissé & van der Maaten,
    "Countering adversarial images using input transformations", ICLR 2018). Non-differentiable on purpose.

Zoo models (:func:`make_zoo_defense` trains and saves them): ``lenet-fmnist-magnet`` =
``Defended(lenet-fmnist, MagNetReformer(ae), ReconstructionDetector(ae) at 5% FPR)`` and
``lenet-fmnist-defensegan`` = ``Defended(lenet-fmnist, GenerativeProjection(vae))``. They are saved by
:func:`save_defended` (the generative model's weights as safetensors, the rest as metadata) and loaded by
:func:`load_defended`, which registers itself in :data:`georobust.models.io.model_loaders`, so
``load_model("zoo:lenet-fmnist-magnet")`` (and ``load_model(path.safetensors)``) returns a ready
:class:`~georobust.defenses.Defended`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from ..checks import check_iterations, check_positive, check_x
from ..errors import InputError, ModelError, OptionError, WeightsError, unknown_name
from ..models.io import WEIGHTS_DIR, check_weights_path, load_model, model_loaders
from ..storage import atomic_write_text, write_safetensors
from .defended import REJECT, Defended, Detector, Projection
from .detectors import median_filter
from .generative import VAE, DenoisingAutoencoder, build_generative, fit_autoencoder, fit_vae

log = logging.getLogger(__name__)


def _check_module(m, what: str) -> nn.Module:
    if not isinstance(m, nn.Module):
        raise OptionError(f"{what} must be an nn.Module, got {type(m).__name__}")
    if any(mod.training for mod in m.modules()):
        raise ModelError(f"the {what} is in training mode; call .eval() on it first (a defence must compute the "
                         "same thing on every call)")
    return m


def _same_shape(out: torch.Tensor, x: torch.Tensor, who: str) -> torch.Tensor:
    if out.shape != x.shape:
        raise ModelError(f"{who} returns shape {tuple(out.shape)} for inputs of shape {tuple(x.shape)}; a projection "
                         "must keep the input's shape (was the autoencoder/generator built for another image size?)")
    return out


class MagNetReformer(Projection):
    """MagNet's reformer (Meng & Chen, CCS 2017): ``x -> clamp(ae(x), bounds)`` with a denoising autoencoder
    ``ae`` trained on clean data, which moves an input towards the manifold of clean data.

    Differentiable (``differentiable = True``): autograd through the autoencoder is the exact gradient, so an
    adaptive attack simply attacks ``classifier ∘ ae`` (Carlini & Wagner, "MagNet and 'Efficient defenses
    against adversarial attacks' are not robust to adversarial examples", 2017).

    Args:
        ae: an autoencoder in eval mode returning inputs of the same shape (e.g.
            :class:`~georobust.defenses.generative.DenoisingAutoencoder`).
        bounds: the input box.
    """

    differentiable = True
    randomized = False

    def __init__(self, ae: nn.Module, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds)
        self.ae = _check_module(ae, "autoencoder")

    @property
    def generative(self) -> nn.Module:
        return self.ae

    def options(self) -> dict:
        return {}

    @classmethod
    def from_generative(cls, gen: nn.Module, bounds=(0.0, 1.0), **options) -> MagNetReformer:
        return cls(gen, bounds=bounds, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _same_shape(self.ae(x), x, "MagNetReformer: the autoencoder").clamp(*self.bounds)


class ReconstructionDetector(Detector):
    """MagNet's detector (Meng & Chen, CCS 2017): ``score(x) = mean_i |x_i − ae(x)_i|^p`` over the input's
    values (``p = 1`` or ``2`` in the paper); inputs far from the clean-data manifold reconstruct badly. The
    threshold is fitted on clean data at a false-positive rate (:meth:`Detector.fit_threshold`).

    The score is differentiable (an adaptive attack can penalise it, Carlini & Wagner, AISec 2017).
    """

    def __init__(self, ae: nn.Module, p: float = 1):
        super().__init__()
        self.ae = _check_module(ae, "autoencoder")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            raise OptionError(f"p is the exponent of the reconstruction error and must be a number > 0 (1 or 2 in "
                              f"MagNet), got {p!r}")
        self.p = float(p)

    @property
    def generative(self) -> nn.Module:
        return self.ae

    def options(self) -> dict:
        return {"p": self.p}

    @classmethod
    def from_generative(cls, gen: nn.Module, **options) -> ReconstructionDetector:
        return cls(gen, **options)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        rec = _same_shape(self.ae(x), x, "ReconstructionDetector: the autoencoder")
        return (x - rec).abs().pow(self.p).flatten(1).mean(1)

    def extra_repr(self) -> str:
        return f"p={self.p:g}, " + super().extra_repr()


#: the optimisers of :class:`GenerativeProjection`
OPTIMIZERS = ("adam", "gd")


class GenerativeProjection(Projection):
    """Projection onto the range of a generator (Defense-GAN, Samangouei, Kabkab & Chellappa, ICLR 2018):
    ``x -> g(z*)``, ``z* = argmin_z ‖g(z) − x‖²``.

    The minimisation runs, batched over inputs and starts, ``steps`` steps of Adam (``optimizer="adam"``, the
    default) or of plain gradient descent ``z ← z − lr·∇_z‖g(z) − x‖²`` (``"gd"``, the paper's choice), from
    ``restarts`` random starts ``z₀ ~ N(0, I)`` (the paper's ``R`` and ``L``)
    plus, when an ``encoder`` is given, one more start at the encoder's mean ``μ(x)`` (a VAE gives one;
    Defense-GAN has none). Of every iterate of every start, the one with the smallest ``‖g(z) − x‖²`` is kept,
    so the residual ``‖P(x) − x‖`` is never larger than that of any start (e.g. the VAE's own reconstruction
    ``g(μ(x))``). The random starts come from a ``torch.Generator`` seeded with ``seed`` at every call:
    the projection is deterministic given the batch (sample ``i`` gets the ``i``-th draws of the call).

    ``differentiable = False``: the output is computed without a gradient path to ``x`` (the inner gradient
    descent is not unrolled); under autograd it carries an exactly-zero gradient, the masked gradient an
    adaptive attack must go around: BPDA (:meth:`Defended.adaptive`), or the generator route — attack
    ``classifier(g(z))`` at ``z = project_latent(x)`` (:meth:`project_latent`).

    Args:
        decoder: the generator ``g``: ``(M, latent_dim) -> (M, *input shape)``, in eval mode.
        latent_dim: dimension of ``z``.
        restarts: random starts ``R`` (>= 1).
        steps: steps per start ``L`` (>= 1).
        lr: the learning rate (Adam's, or the gradient-descent step).
        optimizer: ``"adam"`` or ``"gd"``.
        encoder: optional ``x -> μ(x)`` (``(N, latent_dim)``), one extra start.
        seed: seed of the random starts.
        batch_size: inputs projected together (each with all its starts).
        bounds: the input box (the output is clamped into it).
    """

    differentiable = False
    randomized = False

    def __init__(self, decoder: nn.Module, latent_dim: int, restarts: int = 4, steps: int = 50, lr: float = 0.05, *,
                 optimizer: str = "adam", encoder: nn.Module | None = None, seed: int = 0, batch_size: int = 256,
                 bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds)
        self.decoder = _check_module(decoder, "decoder")
        self.encoder = None if encoder is None else _check_module(encoder, "encoder")
        check_positive(latent_dim, "latent_dim", integer=True)
        check_iterations(restarts, "restarts")
        check_iterations(steps, "steps")
        check_iterations(batch_size, "batch_size")
        check_positive(lr, "lr")
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", str(optimizer), OPTIMIZERS)
        self.optimizer = optimizer
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise OptionError(f"seed must be an integer, got {seed!r}")
        self.latent_dim, self.restarts, self.steps, self.lr = int(latent_dim), restarts, steps, float(lr)
        self.seed, self.batch_size = seed, batch_size
        object.__setattr__(self, "_vae", None)   # the VAE it was built from, for saving (not a second submodule)

    @classmethod
    def from_vae(cls, vae: VAE, *, use_encoder: bool = True, **options) -> GenerativeProjection:
        """The projection onto the range of ``vae``'s decoder; with ``use_encoder`` the posterior mean ``μ(x)`` is
        one more start."""
        if not isinstance(vae, VAE):
            raise OptionError(f"from_vae takes a georobust VAE, got {type(vae).__name__}")
        if not isinstance(use_encoder, bool):
            raise OptionError(f"use_encoder must be True or False, got {use_encoder!r}")
        proj = cls(vae.decoder, vae.latent_dim, encoder=vae.mean_encoder() if use_encoder else None, **options)
        object.__setattr__(proj, "_vae", vae)
        return proj

    @classmethod
    def from_generative(cls, gen: nn.Module, **options) -> GenerativeProjection:
        return cls.from_vae(gen, **options)

    @property
    def generative(self) -> nn.Module | None:
        return self._vae

    def options(self) -> dict:
        return {"restarts": self.restarts, "steps": self.steps, "lr": self.lr, "optimizer": self.optimizer,
                "seed": self.seed,
                "batch_size": self.batch_size, "use_encoder": self.encoder is not None}

    def _residual(self, z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder(z)
        if out.shape != target.shape:
            raise ModelError(f"GenerativeProjection: the generator returns shape {tuple(out.shape[1:])} per input "
                             f"but the inputs have shape {tuple(target.shape[1:])}; a projection must keep the "
                             "input's shape")
        return (out - target).pow(2).flatten(1).sum(1), out

    def _search(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, d, r = x.shape[0], self.latent_dim, self.restarts
        z0 = torch.randn((n, r, d), generator=gen).to(device=x.device, dtype=x.dtype)
        if self.encoder is not None:
            with torch.no_grad():
                mu = self.encoder(x)
            if mu.shape != (n, d):
                raise ModelError(f"GenerativeProjection: the encoder returns shape {tuple(mu.shape)}; expected "
                                 f"({n}, {d}) (one latent code per input)")
            z0 = torch.cat([z0, mu[:, None]], 1)
        s = z0.shape[1]
        target = x[:, None].expand(n, s, *x.shape[1:]).reshape(n * s, *x.shape[1:])
        z = z0.detach().reshape(n * s, d).clone().requires_grad_(True)
        m, v = torch.zeros_like(z), torch.zeros_like(z)   # Adam's moments (Kingma & Ba, ICLR 2015; torch's form)
        b1, b2, eps = 0.9, 0.999, 1e-8
        best_z = z.detach().clone()
        best = torch.full((n * s,), math.inf, device=x.device, dtype=x.dtype)
        for step in range(self.steps + 1):
            loss, _ = self._residual(z, target)
            with torch.no_grad():
                better = loss < best
                best = torch.where(better, loss.detach(), best)
                best_z[better] = z.detach()[better]
            if step == self.steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), z)
            with torch.no_grad():
                if self.optimizer == "gd":
                    z -= self.lr * grad
                else:
                    t = step + 1
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                    z.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** t))
        pick = best.reshape(n, s).argmin(1)
        return best_z.reshape(n, s, d)[torch.arange(n, device=x.device), pick]

    def _check_input(self, x) -> torch.Tensor:
        return check_x(x.detach() if isinstance(x, torch.Tensor) else x, self.bounds)

    def project_latent(self, x: torch.Tensor) -> torch.Tensor:
        """``z* (N, latent_dim)``: the best latent code found for each input (no gradient to ``x``)."""
        x = self._check_input(x)
        gen = torch.Generator().manual_seed(self.seed)
        # the search needs autograd even when called under no_grad or inference_mode (a model probe)
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()
            return torch.cat([self._search(x[i:i + self.batch_size], gen)
                              for i in range(0, x.shape[0], self.batch_size)]).detach()

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``clamp(g(z), bounds)``, differentiable in ``z`` (the generator route of an adaptive attack)."""
        return self.decoder(z).clamp(*self.bounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.project_latent(x)
        with torch.no_grad():
            out = _same_shape(self.generate(z), x, "GenerativeProjection: the generator")
        if torch.is_grad_enabled() and x.requires_grad:
            out = out + 0.0 * x   # an exactly-zero gradient: the masking BPDA or the generator route goes around
        return out

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, restarts={self.restarts}, steps={self.steps}, lr={self.lr:g}, "
                f"optimizer={self.optimizer!r}, encoder={self.encoder is not None}, seed={self.seed}, bounds={self.bounds}")


#: the standard JPEG luminance quantisation table (ITU-T T.81, Annex K, table K.1), row-major (v, u)
JPEG_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def jpeg_table(quality: int) -> torch.Tensor:
    """The luminance table scaled to ``quality`` (1–100) as the IJG library does: scale ``5000/q`` below 50,
    ``200 − 2q`` from 50, entries ``floor((T·scale + 50)/100)`` clamped to ``[1, 255]`` (float64, 8×8)."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise OptionError(f"quality is the JPEG quality factor, an integer from 1 to 100, got {quality!r}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    t = torch.tensor(JPEG_LUMINANCE, dtype=torch.float64)
    return torch.floor((t * scale + 50) / 100).clamp(1, 255)


def _dct8(device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix (JPEG's forward DCT is its 2-D product), float64."""
    j = torch.arange(8, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * j[None] + 1) * j[:, None] / 16) * 0.5
    c[0] = math.sqrt(1 / 8)
    return c.to(device)


class JPEGQuantize(Projection):
    """JPEG-like compression (ITU-T T.81 baseline, luminance only) written in torch, a non-differentiable input
    transformation (Guo et al., ICLR 2018; Athalye, Carlini & Wagner, ICML 2018 circumvent it with BPDA).

    Each channel is treated as a luminance plane (no colour conversion, no chroma subsampling, no entropy
    coding, which is lossless): values are read as 8-bit levels (``round(255·(x − lo)/(hi − lo))``), shifted by
    −128, padded to a multiple of 8 by repeating the last row/column (as encoders do), cut into 8×8 blocks,
    transformed by the orthonormal 2-D DCT-II, divided by the quality-scaled table (:func:`jpeg_table`),
    rounded, multiplied back, inverse-transformed, shifted by +128, rounded and clamped to ``[0, 255]`` (what a
    decoder writes), and mapped back to ``bounds``. Computed in float64.

    Piecewise constant (``differentiable = False``): its gradient is zero almost everywhere.
    """

    differentiable = False
    randomized = False

    def __init__(self, quality: int = 75, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds)
        self.quality = quality
        self.register_buffer("table", jpeg_table(quality), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise InputError(f"JPEGQuantize compresses images (N, C, H, W), got shape {tuple(x.shape)}")
        lo, hi = self.bounds
        n, c, h, w = x.shape
        v = torch.round((x.detach().double() - lo) / (hi - lo) * 255).clamp(0, 255) - 128
        ph, pw = -h % 8, -w % 8
        if ph or pw:
            v = torch.nn.functional.pad(v.reshape(n * c, 1, h, w), (0, pw, 0, ph), mode="replicate").reshape(
                n, c, h + ph, w + pw)
        hb, wb = (h + ph) // 8, (w + pw) // 8
        blocks = v.reshape(n, c, hb, 8, wb, 8).transpose(3, 4)          # (n, c, hb, wb, 8 rows, 8 cols)
        d = _dct8(x.device)
        table = self.table.to(x.device)
        coef = d @ blocks @ d.T
        blocks = d.T @ (torch.round(coef / table) * table) @ d
        v = blocks.transpose(3, 4).reshape(n, c, h + ph, w + pw)[:, :, :h, :w]
        out = (torch.round(v + 128).clamp(0, 255) / 255 * (hi - lo) + lo).to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            out = out + 0.0 * x   # a zero gradient (the obfuscation), not a missing one
        return out

    def extra_repr(self) -> str:
        return f"quality={self.quality}, bounds={self.bounds}"


class MedianSmoothing(Projection):
    """Median smoothing over a ``size`` window (``int`` or ``(h, w)``), per channel, mirror-extended at the border
    (Xu, Evans & Qi, "Feature squeezing", NDSS 2018): :func:`georobust.defenses.detectors.median_filter`.

    ``differentiable = True``: autograd routes each output's gradient to the pixel the median selected, a
    useful (if sparse) gradient, so no BPDA is needed (Athalye et al., ICML 2018, attack it directly).
    """

    differentiable = True
    randomized = False

    def __init__(self, size: int | tuple[int, int] = 2, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds)
        hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
        if not (isinstance(hw, (tuple, list)) and len(hw) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw)):
            raise OptionError(f"size is the median window, a positive int or a pair (h, w) of them, got {size!r}")
        self.size = tuple(hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return median_filter(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, bounds={self.bounds}"


# ---------------------------------------------------------------------------------------------------------------
# saving and loading defended models (the zoo's defended LeNets)

#: projection and detector classes :func:`load_defended` rebuilds by name
SAVEABLE = {c.__name__: c for c in (MagNetReformer, ReconstructionDetector, GenerativeProjection)}


def _generative_of(defended: Defended) -> nn.Module:
    parts = [m for m in (defended.projection, defended.detector) if m is not None]
    bad = [type(m).__name__ for m in parts if type(m).__name__ not in SAVEABLE or m.generative is None]
    if not parts or bad:
        raise OptionError(f"save_defended saves defences built on one georobust DenoisingAutoencoder or VAE "
                          f"({', '.join(SAVEABLE)}, a GenerativeProjection made by from_vae); got "
                          f"{bad or 'no projection and no detector'}")
    gens = {id(m.generative): m.generative for m in parts}
    if len(gens) != 1:
        raise OptionError("save_defended: the projection and the detector use different generative models; "
                          "it saves defences sharing one")
    gen = next(iter(gens.values()))
    if not isinstance(gen, (DenoisingAutoencoder, VAE)):
        raise OptionError(f"save_defended saves DenoisingAutoencoder or VAE models, got {type(gen).__name__}")
    return gen


def save_defended(defended: Defended, path: str | Path, *, base: str, sidecar: dict | None = None) -> Path:
    """Save ``defended`` (a :class:`Defended` whose projection and/or detector are MagNet's or a
    :class:`GenerativeProjection` built by :meth:`GenerativeProjection.from_vae`) to ``path`` (``.safetensors``).

    The file holds the generative model's weights (keys ``generative.*``) and, as metadata, ``loader:
    defended``, ``base`` (the model spec of the classifier, e.g. ``"zoo:lenet-fmnist"``: it is not copied),
    the generative model's config, the projection's and detector's classes and options, the detector's
    threshold and fpr, and the reject rule. ``sidecar`` (the training record) is written beside it as ``.json``.
    """
    if not isinstance(defended, Defended):
        raise OptionError(f"save_defended saves a Defended model, got {type(defended).__name__}")
    if not isinstance(base, str) or not base:
        raise OptionError("base is the model spec the classifier is loaded from (e.g. 'zoo:lenet-fmnist')")
    gen = _generative_of(defended)
    path = check_weights_path(path)

    def part(m, extra=None):
        return None if m is None else {"class": type(m).__name__, "options": m.options(), **(extra or {})}

    det = defended.detector
    if det is not None and det.threshold is None:
        raise ModelError("the detector has no threshold yet: call detector.fit_threshold(x_clean, fpr=...) first")
    meta = {"loader": "defended", "base": base, "name": defended.name, "reject": defended.reject,
            "bounds": json.dumps(list(defended.bounds)), "generative": json.dumps(gen.config()),
            "projection": json.dumps(part(defended.projection)),
            "detector": json.dumps(part(det, None if det is None else {"threshold": det.threshold, "fpr": det.fpr}))}
    state = {f"generative.{k}": v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}
    return write_safetensors(path, state, meta, sidecar=sidecar, what="the defended model")


@model_loaders.register("defended")
def load_defended(state: dict, meta: dict, device: str | torch.device = "cpu") -> Defended:
    """Rebuild a :class:`Defended` written by :func:`save_defended` (the loader ``models.io.load_weights``
    dispatches to for files whose metadata says ``loader: defended``). Loads the base classifier by its spec."""
    try:
        gen = build_generative(json.loads(meta["generative"]))
        prefix = "generative."
        gen.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        bounds = tuple(json.loads(meta["bounds"]))
        proj_spec, det_spec = json.loads(meta["projection"]), json.loads(meta["detector"])
        reject = meta["reject"]
    except (KeyError, ValueError, RuntimeError) as e:
        raise WeightsError(f"a defended model file with broken metadata or weights ({e}); write it with "
                           "save_defended") from e
    if reject not in REJECT:
        raise WeightsError(f"a defended model file with an unknown reject rule {reject!r}")
    gen = gen.to(device).eval()
    clf = load_model(meta["base"], device)

    def build(spec, **kw):
        if spec is None:
            return None
        cls = SAVEABLE.get(spec["class"])
        if cls is None:
            raise unknown_name("saved projection or detector", spec["class"], SAVEABLE)
        return cls.from_generative(gen, **kw, **spec["options"])

    proj = build(proj_spec, bounds=bounds)
    det = build(det_spec)
    if det is not None:
        det.threshold, det.fpr = det_spec["threshold"], det_spec["fpr"]
    model = Defended(clf, proj, det, reject=reject)
    model.name = meta.get("name", model.name)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------------------
# the zoo's defended LeNets

#: how :func:`make_zoo_defense` builds each shipped defended model
ZOO_DEFENSES = {
    "lenet-fmnist-magnet": {"base": "zoo:lenet-fmnist", "generative": "autoencoder", "epochs": 5, "noise": 0.1,
                            "detector_p": 1, "fpr": 0.05},
    "lenet-fmnist-defensegan": {"base": "zoo:lenet-fmnist", "generative": "vae", "epochs": 20, "latent_dim": 16,
                                "restarts": 4, "steps": 50, "lr": 0.05},
}

#: training images (the first ``TRAIN_N`` of the train split) and held-out clean images for the detector's
#: threshold (``THRESHOLD_SLICE`` of the train split, never used for training)
TRAIN_N = 20000
THRESHOLD_SLICE = (50000, 55000)


def make_zoo_defense(name: str, *, out_dir: str | Path | None = None, seed: int = 0, train_n: int = TRAIN_N,
                     save: bool = True) -> Defended:
    """Train and (``save=True``) save a shipped defended model (:data:`ZOO_DEFENSES`) into ``out_dir``
    (default the package's weights folder), with its training record as ``NAME.json``.

    ``lenet-fmnist-magnet``: :func:`fit_autoencoder` on the first ``train_n`` Fashion-MNIST training images,
    the reconstruction detector's threshold at 5% FPR on training images 50,000–54,999 (held out).
    ``lenet-fmnist-defensegan``: :func:`fit_vae` on the same images. One call, the current thread count.
    """
    from .. import data

    if name not in ZOO_DEFENSES:
        raise unknown_name("shipped defended model", name, ZOO_DEFENSES)
    spec = ZOO_DEFENSES[name]
    x, _ = data.load("fashion-mnist", "train")
    clf = load_model(spec["base"])
    t0 = time.perf_counter()
    if spec["generative"] == "autoencoder":
        gen = fit_autoencoder(x[:train_n], epochs=spec["epochs"], noise=spec["noise"], seed=seed)
        det = ReconstructionDetector(gen, p=spec["detector_p"]).fit_threshold(x[slice(*THRESHOLD_SLICE)],
                                                                              fpr=spec["fpr"])
        model = Defended(clf, MagNetReformer(gen, clf.bounds), det)
        objective = (f"MagNet (Meng & Chen 2017): denoising autoencoder (noise {spec['noise']}, MSE, Adam 1e-3) "
                     f"on {train_n} training images; reformer + reconstruction detector (L{spec['detector_p']}) "
                     f"at {spec['fpr']:.0%} FPR on training images {THRESHOLD_SLICE[0]}-{THRESHOLD_SLICE[1] - 1}")
    else:
        gen = fit_vae(x[:train_n], epochs=spec["epochs"], seed=seed, latent_dim=spec["latent_dim"])
        model = Defended(clf, GenerativeProjection.from_vae(gen, restarts=spec["restarts"], steps=spec["steps"],
                                                            lr=spec["lr"], bounds=clf.bounds))
        objective = (f"Defense-GAN-style projection (Samangouei et al. 2018) onto a VAE decoder (latent "
                     f"{spec['latent_dim']}, negative ELBO, Adam 1e-3) trained on {train_n} training images; "
                     f"R={spec['restarts']} random starts + the encoder mean, L={spec['steps']} Adam steps, "
                     f"lr {spec['lr']}")
    wall = time.perf_counter() - t0
    model.name = name
    if save:
        out = Path(out_dir) if out_dir is not None else WEIGHTS_DIR
        cmd = (f"OMP_NUM_THREADS=1 python -c \"from georobust.defenses.projections import make_zoo_defense; "
               f"make_zoo_defense('{name}')\"")
        record = {"arch": "lenet", "defense": spec["generative"], "base": spec["base"], "data": "fashion-mnist",
                  "seed": seed, "epochs": spec["epochs"], "train_n": train_n, "objective": objective,
                  "command": cmd, "train_wall_s": round(wall, 1), "threads": torch.get_num_threads(),
                  "history": [round(h, 5) for h in gen.history], "settings": spec}
        if model.detector is not None:
            record.update(threshold=model.detector.threshold, fpr=model.detector.fpr)
        save_defended(model, out / f"{name}.safetensors", base=spec["base"], sidecar=record)
        log.info("%s: trained in %.0f s, saved to %s", name, wall, out)
    return model


#: test images :func:`measure_zoo_defense` uses per model (``None``: the whole test split); the generative
#: projection costs ``(restarts + 1) · steps`` generator passes per image
MEASURE_N = {"lenet-fmnist-magnet": None, "lenet-fmnist-defensegan": 1000}


def measure_zoo_defense(name: str, *, out_dir: str | Path | None = None, n: int | None = -1) -> dict:
    """Measure a saved defended model's clean accuracy on the Fashion-MNIST test split (the first ``n`` images;
    default :data:`MEASURE_N`) and record it in its ``NAME.json``: ``test_accuracy`` (a rejected input counts
    as an error), ``n_test``, ``test_rejected`` (fraction the detector flags), ``test_accuracy_accepted``,
    ``test_accuracy_first200`` (what ``tests/test_projections.py`` recomputes), the base classifier's accuracy on
    the same images and the wall time. Returns the measured fields."""
    from .. import data

    if name not in ZOO_DEFENSES:
        raise unknown_name("shipped defended model", name, ZOO_DEFENSES)
    n = MEASURE_N[name] if n == -1 else n
    path = (Path(out_dir) if out_dir is not None else WEIGHTS_DIR) / f"{name}.safetensors"
    model = load_model(str(path))
    x, y = data.load("fashion-mnist", "test", limit=n)
    t0 = time.perf_counter()
    pred = model.predict(x, batch_size=500)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        base = torch.cat([model.classifier(x[i:i + 1000]).argmax(1) for i in range(0, x.shape[0], 1000)])
    rejected = pred == model.reject_class if model.rejects else torch.zeros_like(y, dtype=torch.bool)
    ok = pred == y
    out = {"test_accuracy": round(float(ok.double().mean()), 4), "n_test": int(x.shape[0]),
           "test_rejected": round(float(rejected.double().mean()), 4),
           "test_accuracy_accepted": round(float(ok[~rejected].double().mean()), 4),
           "test_accuracy_first200": round(float(ok[:200].double().mean()), 4),
           "base_test_accuracy_same_images": round(float((base == y).double().mean()), 4),
           "predict_wall_s": round(wall, 1), "predict_threads": torch.get_num_threads()}
    side = path.with_suffix(".json")
    record = json.loads(side.read_text()) if side.exists() else {}
    atomic_write_text(side, json.dumps({**record, **out}, indent=2))
    log.info("%s: %s", name, out)
    return out
