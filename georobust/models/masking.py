"""Models that mask gradients on purpose, built around any base classifier: the test bench of the
gradient-masking alarms (:mod:`georobust.evaluation.alarms`).

Each is a :class:`~georobust.models.classifier.Classifier` (the base's bounds and input shape, created in
eval mode; the base must be in eval mode too, the rule every attack applies), so every attack, metric and
alarm accepts it. They reproduce the three kinds of obfuscated gradients of Athalye, Carlini & Wagner,
"Obfuscated gradients give a false sense of security" (ICML 2018):

* :class:`Quantized` — *shattered* gradients: the forward pass quantises its input to ``levels`` values per
  pixel (a rounding, as in thermometer/bit-depth defences), so the input gradient is exactly zero almost
  everywhere;
* :class:`Saturated` — *vanishing* gradients: the base's logits are multiplied by a huge temperature behind a
  softmax, so the softmax is one-hot in floating point and the cross-entropy's gradient is exactly zero (and,
  with ``output="probabilities"``, every loss's);
* :class:`Randomized` — *stochastic* gradients: random noise and/or a random resize-and-pad (Xie et al.,
  "Mitigating adversarial effects through randomization", ICLR 2018) at every forward pass.

They are for tests and demonstrations, never defences: each is broken by the matching adaptive attack
(BPDA or a gradient-free attack for :class:`Quantized`, a margin/DLR loss or a score-based attack for
:class:`Saturated`, a label-only attack for its ``"probabilities"`` form, EOT for :class:`Randomized`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .classifier import Classifier, as_classifier

#: what :class:`Saturated` may return
SATURATED_OUTPUTS = ("log_softmax", "probabilities")


def _base(base: nn.Module, what: str) -> Classifier:
    if not isinstance(base, nn.Module):
        raise ModelError(f"{what} wraps a torch.nn.Module (the base classifier), got {type(base).__name__}")
    clf = as_classifier(base)
    training = [n or type(m).__name__ for n, m in clf.named_modules() if m.training]
    if training:
        raise ModelError(f"{what}: the base model is in training mode ({', '.join(training[:3])}); call "
                         "base.eval() first")
    return clf


class _Masked(Classifier):
    """A :class:`Classifier` whose module is ``transform`` then the base (the base keeps its own
    normalisation: the transformation acts in input space)."""

    def __init__(self, base: Classifier, name: str):
        super().__init__(_Pipeline(self, base), bounds=base.bounds, name=name, input_shape=base.input_shape)
        self.train(False)

    @property
    def base(self) -> Classifier:
        """The wrapped base classifier."""
        return self.module.base

    def transform(self, x: torch.Tensor) -> torch.Tensor:  # overridden
        return x

    def train(self, mode: bool = True):
        # switch the wrapper only: the base keeps the mode its owner gave it (checked to be eval at creation)
        self.training = mode
        return self


class _Pipeline(nn.Module):
    def __init__(self, owner: _Masked, base: Classifier):
        super().__init__()
        self.base = base
        self._owner = [owner]  # a list, so the owner is not registered as a submodule (no module cycle)
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._owner[0].post(self.base(self._owner[0].transform(x)))


class Quantized(_Masked):
    """The base classifier on its input quantised to ``levels`` equally spaced values per feature in the
    bounds ``[lo, hi]``: ``x ↦ lo + round((x − lo)/(hi − lo)·(levels − 1))·(hi − lo)/(levels − 1)``.

    ``torch.round`` has a zero derivative, so the input gradient of every loss is exactly zero (shattered
    gradients, Athalye et al., ICML 2018); a gradient attack makes no progress while a gradient-free one
    (or BPDA with the identity as backward pass) still can.
    """

    def __init__(self, base: nn.Module, levels: int = 4):
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ModelError(f"levels must be an integer >= 2 (the number of values per feature), got {levels!r}")
        clf = _base(base, "Quantized")
        super().__init__(clf, f"quantized{levels}({clf.name})")
        self.levels = levels

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        q = self.levels - 1
        return lo + torch.round((x - lo) / (hi - lo) * q) * ((hi - lo) / q)

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def extra_repr(self) -> str:
        return super().extra_repr() + f", levels={self.levels}"


class Saturated(_Masked):
    """The base's logits ``z`` behind a softmax at a huge temperature ``T`` (vanishing gradients, as in
    defensive distillation evaluated at temperature 1: Carlini & Wagner, "Defensive distillation is not robust
    to adversarial examples", 2016).

    Returns, for ``output="log_softmax"`` (default), ``log_softmax(T·z)`` computed stably
    (``T·z − logsumexp(T·z)``): logits up to a per-sample constant, scaled by ``T``. Its cross-entropy is the
    base's at temperature ``T``, whose gradient with respect to the outputs, ``softmax(T·z) − onehot(y)``, is
    exactly zero in float32 once ``T·(z_y − z_j) > 104`` for every other class ``j`` (``exp`` underflows) and
    below round-off once it exceeds about 17: with ``T = 10⁴``, on every correctly classified input whose top two
    logits differ by more than ``10⁻²`` — so CE attacks (FGSM, PGD, APGD-CE) stall, while the margin and
    the DLR loss (invariant to the scale ``T``) and score-based attacks see the base model. The probabilities
    alarm stays silent; the gradients alarm fires (on the CE).

    For ``output="probabilities"``, ``softmax(T·z)``: probabilities, one-hot in floating point, whose backward
    pass ``p ⊙ (g − ⟨p, g⟩)`` is then exactly zero for *every* loss (CE and margin alike), and whose scores are
    flat — only a label-only (decision) attack sees anything. Both the probabilities and the gradients alarms
    fire.

    Predictions are the base's in both cases (the arg-max is unchanged).
    """

    def __init__(self, base: nn.Module, temperature: float = 1e4, output: str = "log_softmax"):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
                or temperature == float("inf"):
            raise ModelError(f"temperature must be a finite number > 0, got {temperature!r}")
        if output not in SATURATED_OUTPUTS:
            raise ModelError(f"output must be one of {', '.join(SATURATED_OUTPUTS)}, got {output!r}")
        clf = _base(base, "Saturated")
        super().__init__(clf, f"saturated({clf.name}, T={temperature:g})")
        self.temperature = float(temperature)
        self.output = output

    def post(self, z: torch.Tensor) -> torch.Tensor:
        if self.output == "probabilities":
            return torch.softmax(self.temperature * z, dim=1)
        return torch.log_softmax(self.temperature * z, dim=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", temperature={self.temperature:g}, output={self.output!r}"


class Randomized(_Masked):
    """The base classifier on a randomly transformed input, a new draw at every forward pass (stochastic
    gradients): first a random resize-and-pad (Xie et al., ICLR 2018), then Gaussian noise.

    * ``resize=s_min`` (in ``(0, 1]``, images only): each input is shrunk by a factor ``s ~ U[s_min, 1]`` and
      placed at a uniformly random offset inside the original frame, the rest filled with the lower bound —
      one batched ``affine_grid``/``grid_sample`` (bilinear), differentiable; ``None`` or ``1``: no resizing;
    * ``sigma``: the standard deviation of Gaussian noise added to every feature (then clamped into the
      bounds); ``0``: no noise.

    The draws come from the model's own generator (``seed``), so a run is reproducible from construction
    while two passes on the same input differ.
    """

    def __init__(self, base: nn.Module, sigma: float = 0.1, resize: float | None = 0.8, seed: int = 0):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < float("inf"):
            raise ModelError(f"sigma must be a finite number >= 0 (the noise's standard deviation), got {sigma!r}")
        if resize is not None and (isinstance(resize, bool) or not isinstance(resize, (int, float))
                                   or not 0 < resize <= 1):
            raise ModelError(f"resize must be None or the smallest scale factor, in (0, 1], got {resize!r}")
        if resize is not None and resize < 1 and base_shape_is_flat(base):
            raise ModelError("resize needs image inputs (C, H, W); this base model takes flat inputs: "
                             "use resize=None (noise only)")
        if sigma == 0 and (resize is None or resize == 1):
            raise ModelError("Randomized needs some randomness: give sigma > 0 or resize < 1")
        clf = _base(base, "Randomized")
        super().__init__(clf, f"randomized({clf.name}, sigma={sigma:g}, resize={resize})")
        self.sigma = float(sigma)
        self.resize = None if resize is None or resize == 1 else float(resize)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _rand(self, *shape, normal: bool = False, like: torch.Tensor) -> torch.Tensor:
        f = torch.randn if normal else torch.rand
        return f(*shape, generator=self.generator, dtype=torch.float64).to(device=like.device, dtype=like.dtype)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        if self.resize is not None:
            if x.ndim != 4:
                raise ModelError(f"Randomized(resize=...) needs image batches (N, C, H, W), got shape "
                                 f"{tuple(x.shape)}; use resize=None")
            n = x.shape[0]
            s = self.resize + (1 - self.resize) * self._rand(n, like=x)       # scale factor per sample
            room = 1 / s - 1                                                  # |offset| keeping the image inside
            t = (2 * self._rand(n, 2, like=x) - 1) * room[:, None]
            theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
            theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
            theta[:, :, 2] = t
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x - lo, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + lo
        if self.sigma > 0:
            x = (x + self.sigma * self._rand(*x.shape, normal=True, like=x)).clamp(lo, hi)
        return x

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sigma={self.sigma:g}, resize={self.resize}"


def base_shape_is_flat(base: nn.Module) -> bool:
    """Whether ``base`` declares flat inputs ``(D,)`` (its ``input_shape`` has one dimension)."""
    shape = getattr(base, "input_shape", None)
    return shape is not None and len(tuple(shape)) == 1


__all__ = ["Quantized", "Saturated", "Randomized", "SATURATED_OUTPUTS"]
