"""Architectures by name, built for any input shape and class count, and the shipped pretrained models.

============== ===================================================================================
name           architecture
============== ===================================================================================
linear         one affine layer on the flattened input (a multi-class linear classifier)
mlp            flatten → 256 → ReLU → 256 → ReLU → K
fc500-150-10   flatten → 500 → ReLU → 150 → ReLU → K (DeepFool's MNIST "FC500-150-10"; sigmoid
               in Szegedy et al., ReLU here)
lenet          Caffe LeNet as in DeepFool's MNIST experiments: conv5(20) → max-pool → conv5(50) →
               max-pool → 500 → ReLU → K. On inputs smaller than 20 pixels the convolutions are
               padded ("same") so that 8×8 digits still fit.
resnet-small   a pre-activation ResNet (He et al., 2016) with three stages of two basic blocks
               (16, 32, 64 channels), for 28×28/32×32 inputs (any size works: global pooling)
convnet        a configurable small CNN for studies of what makes a network robust (``georobust
               study``): ``depth`` blocks conv3×3 → [batch-norm] → ReLU → max-pool (channels
               ``width``, ``2·width``, ``4·width``, ...), then [dropout] → linear. Options (``build(...,
               width=, depth=, batch_norm=, dropout=)``): width 16, depth 2, batch_norm False, dropout 0.
============== ===================================================================================
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from .. import registry
from ..errors import OptionError

Shape = tuple[int, ...]


def _flat(shape: Shape) -> int:
    return int(math.prod(shape))


@registry.architectures.register("linear")
def linear(input_shape: Shape, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), num_classes))


@registry.architectures.register("mlp")
def mlp(input_shape: Shape, num_classes: int, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    d = _flat(input_shape)
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


@registry.architectures.register("fc500-150-10")
def fc500_150_10(input_shape: Shape, num_classes: int) -> nn.Module:
    return mlp(input_shape, num_classes, hidden=(500, 150))


def _image_shape(input_shape: Shape, arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise OptionError(f"{arch} needs image inputs (C, H, W), got input shape {input_shape}")
    return input_shape  # type: ignore[return-value]


@registry.architectures.register("lenet")
def lenet(input_shape: Shape, num_classes: int) -> nn.Module:
    c, h, w = _image_shape(input_shape, "lenet")
    pad = 2 if min(h, w) < 20 else 0
    body = nn.Sequential(
        nn.Conv2d(c, 20, 5, padding=pad), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5, padding=pad), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        d = body(torch.zeros(1, c, h, w)).shape[1]
    return nn.Sequential(*body, nn.Linear(d, 500), nn.ReLU(), nn.Linear(500, num_classes))


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        sc = self.short(out) if self.short is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + sc


class PreActResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths=(16, 32, 64), blocks=2):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for i, wdt in enumerate(widths):
            for b in range(blocks):
                layers.append(_PreActBlock(cin, wdt, 2 if (b == 0 and i > 0) else 1))
                cin = wdt
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(x))
        out = torch.relu(self.bn(out)).mean((2, 3))
        return self.fc(out)


@registry.architectures.register("resnet-small")
def resnet_small(input_shape: Shape, num_classes: int) -> nn.Module:
    c, _, _ = _image_shape(input_shape, "resnet-small")
    return PreActResNet(c, num_classes)


@registry.architectures.register("convnet")
def convnet(input_shape: Shape, num_classes: int, width: int = 16, depth: int = 2, batch_norm: bool = False,
            dropout: float = 0.0) -> nn.Module:
    """``depth`` blocks conv3×3 (padding 1) → [BatchNorm2d] → ReLU → max-pool 2 (while the map is at least
    2×2), channels ``width · 2**i``; then flatten → [Dropout(``dropout``)] → linear. The factors of the
    "what makes a network robust" study (architecture width, depth, batch-norm, dropout) as options."""
    c, h, w = _image_shape(input_shape, "convnet")
    for name, v in (("width", width), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OptionError(f"convnet {name} must be a positive integer, got {v!r}")
    if not isinstance(batch_norm, bool):
        raise OptionError(f"convnet batch_norm must be true or false, got {batch_norm!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise OptionError(f"convnet dropout must be a probability in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = []
    cin = c
    for i in range(depth):
        cout = width * 2 ** i
        layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU())
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        cin = cout
    layers.append(nn.Flatten())
    if dropout > 0:
        layers.append(nn.Dropout(float(dropout)))
    layers.append(nn.Linear(cin * h * w, num_classes))
    return nn.Sequential(*layers)


def build(arch: str, input_shape: Shape, num_classes: int, seed: int | None = None, **options) -> nn.Module:
    """Build architecture ``arch`` for inputs of ``input_shape`` (without batch) and ``num_classes``;
    ``options`` go to the builder (``convnet``: width, depth, batch_norm, dropout), an unknown one is an
    :class:`~georobust.errors.OptionError` naming the valid ones."""
    builder = registry.architectures.get(arch).fn
    if num_classes < 2:
        raise OptionError(f"num_classes must be >= 2, got {num_classes}")
    if options:
        valid = list(inspect.signature(builder).parameters)[2:]
        bad = sorted(set(options) - set(valid))
        if bad:
            raise OptionError(f"architecture {arch!r} has no option {', '.join(map(repr, bad))}; its options are "
                              f"{', '.join(valid) or 'none'}")
    input_shape = tuple(int(s) for s in input_shape)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder(input_shape, num_classes, **options)
    return builder(input_shape, num_classes, **options)


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNetSmall(nn.Module):
    """A small U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): ``len(widths) − 1`` poolings (three by default,
    so an 8×8 bottleneck on 64×64 inputs: context enough to tell items apart by silhouette), skip connections,
    per-pixel logits ``(N, K, H, W)``. ``H, W`` must be divisible by ``2**(len(widths) − 1)``."""

    def __init__(self, in_channels: int, num_classes: int, widths=(8, 16, 32, 64)):
        super().__init__()
        self.enc = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.enc.append(_DoubleConv(c, w))
            c = w
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(len(widths) - 1)))
        self.dec = nn.ModuleList(_DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


@registry.architectures.register("unet-small")
def unet_small(input_shape: Shape, num_classes: int) -> nn.Module:
    """Dense prediction (segmentation): logits ``(N, K, H, W)`` for inputs ``(N, C, H, W)``, ``H, W`` divisible by 8."""
    c, h, w = _image_shape(input_shape, "unet-small")
    if h % 8 or w % 8:
        raise OptionError(f"unet-small pools three times: height and width must be divisible by 8, got {h}x{w}")
    return UNetSmall(c, num_classes)
