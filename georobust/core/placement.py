"""Placing a patch on images, and the random placements of expectation over transformation (EOT).

Pure torch, differentiable in the patch. A patch is a ``(C, h, w)`` tensor (``h == w``) with a **mask shape**,
``"circle"`` (the disc inscribed in the square) or ``"square"``. A placement says where one copy of it goes:

=================  ===============================================================================================
``center``         ``(N, 2)`` ``(x, y)`` of the patch centre in image pixels, measured from the image's top-left
                   corner (pixel ``j``'s centre is at ``j + 0.5``); ``x`` right, ``y`` down
``side``           ``(N,)`` side of the (unrotated) patch square in image pixels (the circle's diameter)
``angle``          ``(N,)`` rotation in radians, counter-clockwise as displayed (as :mod:`georobust.core.transforms`)
``corners``        ``(N, 4, 2)`` or ``None``: a perspective distortion, the offsets of the patch's corners
                   (top-left, top-right, bottom-right, bottom-left) in units of the half-side
``brightness``     ``(N,)`` or ``None``: added to the patch's values
``contrast``       ``(N,)`` or ``None``: multiplies the patch's values (before the brightness)
``noise``          half-width of uniform per-pixel noise added to the placed patch (drawn at :func:`apply_patch`)
=================  ===============================================================================================

**How a patch is placed.** Each placement is a homography ``M = T(center) · R(angle) · S(side/2) · P(corners)``
from the patch's normalised coordinates ``u ∈ [−1, 1]²`` (``grid_sample``'s, ``align_corners=False``: ``±1`` are
the patch's outer edges) to the image's centred pixel coordinates (those of
:func:`georobust.core.transforms.pixel_coordinates`). Every image pixel centre ``q`` is mapped back,
``u = M⁻¹ q``; the pixel is *covered* when ``u`` lies in the mask shape (``max(|u₁|, |u₂|) ≤ 1`` for a square,
``‖u‖₂ ≤ 1`` for a circle) — an exact, analytic test, so a placed patch covers exactly the pixel centres inside
the transformed shape — and a covered pixel takes the patch's value at ``u`` by bilinear interpolation
(``grid_sample``), which is differentiable in the patch. The patched image is ``(1 − m)·x + m·patch(u)``.

Why not :func:`georobust.core.transforms.warp`: it maps an image onto an image of the same size and reads
zeros (or the border) outside; placing a patch needs the patch's own normalised coordinates, to test the mask
shape analytically, and would otherwise mean padding the patch to the whole frame for every placement. The
coordinate convention is the same (it uses ``transforms.pixel_coordinates``).

Two samplers give the placements: :func:`sample_placements` (Brown et al., "Adversarial patch", 2017: a random
location anywhere in the image, a random scale and rotation, optionally perspective) and :func:`box_placements`
(Thys, Van Ranst & Goedemé, "Fooling automated surveillance cameras", CVPRW 2019: the patch scaled to a person's
box, centred on it, with jitter, rotation, brightness, contrast and noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError, OptionError, unknown_name
from .transforms import pixel_coordinates

MASKS = ("circle", "square")

#: the corners of the patch square in normalised coordinates: top-left, top-right, bottom-right, bottom-left
_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


@dataclass
class Placements:
    """``N`` placements of a patch (see the module docstring for each field's meaning and units)."""

    center: torch.Tensor
    side: torch.Tensor
    angle: torch.Tensor
    corners: torch.Tensor | None = None
    brightness: torch.Tensor | None = None
    contrast: torch.Tensor | None = None
    noise: float = 0.0

    def __len__(self) -> int:
        return int(self.side.shape[0])

    def __getitem__(self, idx) -> Placements:
        def pick(t):
            return None if t is None else t[idx]

        return Placements(self.center[idx], self.side[idx], self.angle[idx], pick(self.corners),
                          pick(self.brightness), pick(self.contrast), self.noise)

    def homographies(self, image_size: tuple[int, int]) -> torch.Tensor:
        """``(N, 3, 3)`` float64: patch-normalised coordinates → the image's centred pixel coordinates."""
        h, w = image_size
        dev = self.side.device
        n = len(self)
        c = self.center.to(torch.float64)
        a = self.angle.to(torch.float64)
        half = self.side.to(torch.float64) / 2
        m = torch.zeros(n, 3, 3, dtype=torch.float64, device=dev)
        cos, sin = torch.cos(a), torch.sin(a)
        # y points down: (x, y) -> (x cos + y sin, -x sin + y cos) turns the picture counter-clockwise as displayed
        m[:, 0, 0], m[:, 0, 1] = half * cos, half * sin
        m[:, 1, 0], m[:, 1, 1] = -half * sin, half * cos
        m[:, 0, 2] = c[:, 0] - w / 2
        m[:, 1, 2] = c[:, 1] - h / 2
        m[:, 2, 2] = 1.0
        if self.corners is not None:
            m = m @ perspective_matrix(self.corners.to(torch.float64))
        return m

    def to(self, device) -> Placements:
        def mv(t):
            return None if t is None else t.to(device)

        return Placements(mv(self.center), mv(self.side), mv(self.angle), mv(self.corners), mv(self.brightness),
                          mv(self.contrast), self.noise)


def perspective_matrix(offsets: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)``: the homography taking the corners of ``[−1, 1]²`` to the corners moved by ``offsets``
    ``(N, 4, 2)`` (the direct linear transform: four correspondences, eight unknowns, ``h₃₃ = 1``)."""
    src = torch.tensor(_CORNERS, dtype=offsets.dtype, device=offsets.device).expand(offsets.shape[0], 4, 2)
    dst = src + offsets
    n = offsets.shape[0]
    a = torch.zeros(n, 8, 8, dtype=offsets.dtype, device=offsets.device)
    b = torch.zeros(n, 8, dtype=offsets.dtype, device=offsets.device)
    for i in range(4):
        x, y = src[:, i, 0], src[:, i, 1]
        u, v = dst[:, i, 0], dst[:, i, 1]
        a[:, 2 * i, 0], a[:, 2 * i, 1], a[:, 2 * i, 2] = x, y, 1.0
        a[:, 2 * i, 6], a[:, 2 * i, 7] = -u * x, -u * y
        a[:, 2 * i + 1, 3], a[:, 2 * i + 1, 4], a[:, 2 * i + 1, 5] = x, y, 1.0
        a[:, 2 * i + 1, 6], a[:, 2 * i + 1, 7] = -v * x, -v * y
        b[:, 2 * i], b[:, 2 * i + 1] = u, v
    sol = torch.linalg.solve(a, b)
    return torch.cat([sol, torch.ones(n, 1, dtype=sol.dtype, device=sol.device)], 1).reshape(n, 3, 3)


# ------------------------------------------------------------------------------------------------ checks
def check_mask(mask: str) -> str:
    if mask not in MASKS:
        raise unknown_name("patch mask", str(mask), MASKS)
    return mask


def check_scale(scale) -> tuple[float, float]:
    """``scale`` as ``(lo, hi)`` with ``0 < lo ≤ hi ≤ 1`` (one number: a fixed scale)."""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        scale = (float(scale), float(scale))
    try:
        lo, hi = (float(s) for s in scale)
    except (TypeError, ValueError):
        raise OptionError(f"scale must be a number or a pair (min, max) in (0, 1], got {scale!r}") from None
    if not (0 < lo <= hi <= 1) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptionError(f"scale must lie in (0, 1] with min <= max (the patch's side as a fraction of the "
                          f"image's shorter side), got ({lo:g}, {hi:g})")
    return lo, hi


def _check_fraction(value, name: str, upper: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= upper):
        raise OptionError(f"{name} must be a number in [0, {upper:g}], got {value!r}")
    return float(value)


def check_patch(patch, image_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``patch`` must be a finite floating ``(C, h, w)`` tensor with ``h == w``; with ``image_shape``
    ``(C, H, W)``, its channels must match and it may not be larger than the image."""
    if not isinstance(patch, torch.Tensor) or not patch.is_floating_point() or patch.ndim != 3:
        got = f"{tuple(patch.shape)} {patch.dtype}" if isinstance(patch, torch.Tensor) else type(patch).__name__
        raise InputError(f"a patch must be a floating-point tensor (C, h, w), got {got}")
    if patch.shape[1] != patch.shape[2] or patch.shape[1] < 1:
        raise InputError(f"a patch must be square (C, h, h), got {tuple(patch.shape)}")
    if not torch.isfinite(patch).all():
        raise InputError("the patch contains NaN or inf")
    if image_shape is not None:
        c, h, w = image_shape[-3:]
        if patch.shape[0] != c:
            raise InputError(f"the patch has {patch.shape[0]} channels, the images {c}; give it the images' channels")
        if patch.shape[1] > min(h, w):
            raise InputError(f"the patch ({patch.shape[1]}×{patch.shape[2]} pixels) is larger than the images "
                             f"({h}×{w}); use a patch of at most {min(h, w)} pixels a side (it is scaled when placed)")
    return patch


def _check_images(x) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"images must be a floating-point tensor (N, C, H, W), got {got}")


# ------------------------------------------------------------------------------------------------ samplers
def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else "cpu"
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64, device=dev)


def _corner_offsets(n: int, perspective: float, generator) -> torch.Tensor | None:
    """Each corner moved inwards by up to ``perspective`` half-sides along each axis (as torchvision's
    ``RandomPerspective``, which ART uses)."""
    if perspective <= 0:
        return None
    mag = _uniform(n * 8, 0.0, perspective, generator).reshape(n, 4, 2)
    inward = -torch.tensor(_CORNERS, dtype=torch.float64, device=mag.device)
    return mag * inward


def _extent(pl: Placements) -> torch.Tensor:
    """``(N, 2)`` the half-width and half-height of the placed square's bounding box around its centre."""
    m = pl.homographies((0, 0))
    m[:, 0, 2] = 0.0
    m[:, 1, 2] = 0.0
    cor = torch.tensor([[*c, 1.0] for c in _CORNERS], dtype=torch.float64, device=m.device)
    q = torch.einsum("nij,kj->nki", m, cor)
    return (q[..., :2] / q[..., 2:]).abs().amax(1)


def sample_placements(n: int, image_size: tuple[int, int], *, scale=(0.1, 0.4), rotation: float = 22.5,
                      perspective: float = 0.0, brightness: float = 0.0, contrast: float = 0.0, noise: float = 0.0,
                      generator: torch.Generator | None = None, device=None) -> Placements:
    """``n`` random placements for expectation over transformation (Brown et al., 2017).

    Args:
        n: how many.
        image_size: ``(H, W)``.
        scale: the patch's side as a fraction of the image's shorter side, uniform in ``(min, max)`` (one number:
            fixed); within ``(0, 1]`` (as ART's ``scale_min``/``scale_max``).
        rotation: the angle is uniform in ``[−rotation, rotation]`` degrees (ART's ``rotation_max``, 22.5).
        perspective: each corner moves inwards by up to this fraction of the half-side along each axis (``[0, 1)``,
            ART's ``distortion_scale_max``; 0: none).
        brightness, contrast, noise: additive offset uniform in ``±brightness``, gain uniform in
            ``1 ± contrast``, per-pixel noise uniform in ``±noise`` (0: none; Thys et al. use 0.1, 0.2, 0.1).
        generator: the source of randomness (its device is where the draws are made).
        device: where the placements live (default: the generator's).

    The location is uniform over the centres that keep the placed square's bounding box inside the image (the
    image centre along an axis where it does not fit).
    """
    lo, hi = check_scale(scale)
    rotation = _check_fraction(rotation, "rotation (degrees)", 180.0)
    perspective = _check_fraction(perspective, "perspective")
    if perspective >= 1:
        raise OptionError(f"perspective must be below 1 (a corner would reach the opposite one), got {perspective}")
    brightness = _check_fraction(brightness, "brightness")
    contrast = _check_fraction(contrast, "contrast")
    noise = _check_fraction(noise, "noise")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise OptionError(f"the number of placements must be a non-negative integer, got {n!r}")
    h, w = (int(v) for v in image_size)
    side = _uniform(n, lo, hi, generator) * min(h, w)
    angle = _uniform(n, -rotation, rotation, generator) * (math.pi / 180)
    corners = _corner_offsets(n, perspective, generator)
    bright = _uniform(n, -brightness, brightness, generator) if brightness > 0 else None
    contr = _uniform(n, 1 - contrast, 1 + contrast, generator) if contrast > 0 else None
    pl = Placements(torch.zeros(n, 2, dtype=torch.float64, device=side.device), side, angle, corners, bright, contr,
                    noise)
    ext = _extent(pl)
    size = torch.tensor([w, h], dtype=torch.float64, device=side.device)
    room = (size / 2 - ext).clamp_min(0)  # how far the centre may move from the image centre along each axis
    pl.center = size / 2 + (2 * _uniform(2 * n, 0, 1, generator).reshape(n, 2) - 1) * room
    return pl if device is None else pl.to(device)


def box_placements(boxes: torch.Tensor, *, relative_size: float = 0.2, offset: float = 0.0, jitter: float = 0.0,
                   rotation: float = 0.0, brightness: float = 0.0, contrast: float = 0.0, noise: float = 0.0,
                   generator: torch.Generator | None = None) -> Placements:
    """One placement per box ``(x1, y1, x2, y2)`` (pixels from the image's top-left corner), as Thys et al. place
    their patch on each person: the side is ``relative_size · √(w² + h²)`` of the box (their code's 0.2),
    the centre is the box centre moved down by ``offset · h`` (towards the torso) and by a uniform jitter of up
    to ``± jitter · side`` along each axis; rotation, brightness, contrast, noise as :func:`sample_placements`."""
    if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise InputError(f"boxes must be a floating-point tensor (M, 4) of (x1, y1, x2, y2), got {got}")
    if not torch.isfinite(boxes).all() or bool((boxes[:, 2:] <= boxes[:, :2]).any()):
        raise InputError("boxes must be finite with x2 > x1 and y2 > y1")
    if isinstance(relative_size, bool) or not isinstance(relative_size, (int, float)) or relative_size <= 0:
        raise OptionError(f"relative_size must be a positive number, got {relative_size!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not (-0.5 <= offset <= 0.5):
        raise OptionError(f"offset must be a number in [-0.5, 0.5] (a fraction of the box height), got {offset!r}")
    jitter = _check_fraction(jitter, "jitter")
    rotation = _check_fraction(rotation, "rotation (degrees)", 180.0)
    brightness = _check_fraction(brightness, "brightness")
    contrast = _check_fraction(contrast, "contrast")
    noise = _check_fraction(noise, "noise")
    b = boxes.detach().to(torch.float64)
    n = b.shape[0]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = relative_size * torch.sqrt(bw**2 + bh**2)
    center = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2 + offset * bh], 1)
    dev = boxes.device

    def draw(k, lo, hi):
        return _uniform(k, lo, hi, generator).to(dev)

    if jitter > 0:
        center = center + (2 * draw(2 * n, 0, 1).reshape(n, 2) - 1) * (jitter * side)[:, None]
    angle = draw(n, -rotation, rotation) * (math.pi / 180)
    bright = draw(n, -brightness, brightness) if brightness > 0 else None
    contr = draw(n, 1 - contrast, 1 + contrast) if contrast > 0 else None
    return Placements(center, side, angle, None, bright, contr, noise)


# ------------------------------------------------------------------------------------------------ placing
def patch_coordinates(placements: Placements, image_size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W, 2)`` the patch-normalised coordinates ``u = M⁻¹ q`` of every image pixel centre (``inf``
    where the homography sends a pixel behind its horizon)."""
    h, w = image_size
    m = placements.homographies((h, w))
    q = pixel_coordinates(h, w, dtype=torch.float64, device=m.device)
    u = torch.einsum("nij,hwj->nhwi", torch.linalg.inv(m), q)
    den = u[..., 2:]
    ok = den > 0
    return torch.where(ok, u[..., :2] / torch.where(ok, den, torch.ones_like(den)), torch.full_like(den, math.inf))


def coverage(placements: Placements, image_size: tuple[int, int], mask: str = "circle") -> torch.Tensor:
    """``(N, 1, H, W)`` bool: the image pixels whose centres the placed patch covers (exact, analytic)."""
    mask = check_mask(mask)
    u = patch_coordinates(placements, image_size)
    if mask == "square":
        inside = u.abs().amax(-1) <= 1
    else:
        inside = (u**2).sum(-1) <= 1
    return inside[:, None]


def apply_patch(x: torch.Tensor, patch: torch.Tensor, placements: Placements, *, mask: str = "circle",
                image_index: torch.Tensor | None = None, bounds: tuple[float, float] | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste ``patch`` ``(C, h, w)`` onto the images ``x`` ``(N, C, H, W)`` at ``placements``; differentiable in
    the patch (and in ``x``).

    Without ``image_index`` placement ``i`` goes on image ``i`` (``len(placements) == N``). With it (``(M,)``
    long), placement ``k`` goes on image ``image_index[k]``: several on one image are pasted in order, a later one
    over an earlier one. The patch's values get the placement's contrast, brightness and noise, then are clamped
    into ``bounds`` when given. Returns ``(patched images, covered)``, ``covered`` ``(N, 1, H, W)`` bool: the
    pixels some placement covers.
    """
    _check_images(x)
    check_mask(mask)
    n, c, h, w = x.shape
    check_patch(patch, tuple(x.shape[1:]))
    m = len(placements)
    one_each = image_index is None
    if image_index is None:
        if m != n:
            raise InputError(f"{m} placements for {n} images: give one per image, or image_index")
        image_index = torch.arange(n, device=x.device)
    else:
        if (not isinstance(image_index, torch.Tensor) or image_index.shape != (m,) or image_index.is_floating_point()
                or (m and (int(image_index.min()) < 0 or int(image_index.max()) >= n))):
            raise InputError(f"image_index must be an integer tensor ({m},) with values in [0, {n})")
        image_index = image_index.to(x.device)
    if m == 0:
        return x, torch.zeros(n, 1, h, w, dtype=torch.bool, device=x.device)
    placements = placements.to(x.device)
    u = patch_coordinates(placements, (h, w))
    inside = (u.abs().amax(-1) <= 1) if mask == "square" else ((u**2).sum(-1) <= 1)
    grid = torch.where(torch.isfinite(u), u, torch.full_like(u, 2.0)).to(x.dtype)  # outside: masked anyway
    content = F.grid_sample(patch.to(x.dtype)[None].expand(m, -1, -1, -1), grid, mode="bilinear",
                            padding_mode="border", align_corners=False)
    if placements.contrast is not None:
        content = content * placements.contrast.to(x.dtype)[:, None, None, None]
    if placements.brightness is not None:
        content = content + placements.brightness.to(x.dtype)[:, None, None, None]
    if placements.noise > 0:
        dev = generator.device if generator is not None else "cpu"
        z = torch.rand(content.shape, generator=generator, device=dev, dtype=torch.float32).to(x.device, x.dtype)
        content = content + (2 * z - 1) * placements.noise
    if bounds is not None:
        content = content.clamp(*bounds)
    cover = inside[:, None].to(x.dtype)
    if one_each:  # one placement per image, in order: no bookkeeping
        return x * (1 - cover) + content * cover, inside[:, None]
    # the rank of each placement among those on its image: rank r is pasted in round r
    counts = torch.bincount(image_index, minlength=n)
    ordered, perm = torch.sort(image_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.empty_like(image_index)
    order[perm] = torch.arange(m, device=x.device) - starts[ordered]
    out = x
    for r in range(int(counts.max())):
        sel = (order == r).nonzero().squeeze(1)
        idx = image_index[sel]
        mk = torch.zeros(n, 1, h, w, dtype=x.dtype, device=x.device).index_copy(0, idx, cover[sel])
        ck = torch.zeros_like(x).index_copy(0, idx, content[sel] * cover[sel])
        out = out * (1 - mk) + ck
    covered = torch.zeros(n, 1, h, w, dtype=x.dtype, device=x.device).index_add(0, image_index, cover) > 0
    return out, covered
