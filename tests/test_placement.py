"""core.placement: the EOT sampler and the pasting of a patch (issue 15, item 3), against brute-force geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from georobust.core.placement import (
    Placements,
    apply_patch,
    box_placements,
    coverage,
    perspective_matrix,
    sample_placements,
)
from georobust.errors import InputError, OptionError

#: a pixel centre closer than this (in pixels) to the patch's outline is left out of exact comparisons: which
#: side of the outline it falls on is decided by float64 round-off (1e-12), not by geometry
EDGE = 1e-9


def _brute(pl: Placements, h: int, w: int, mask: str) -> tuple[np.ndarray, np.ndarray]:
    """Covered pixel centres by direct geometry in numpy (no homography inverse): rotate each pixel centre's offset
    from the patch centre back by the angle and compare it with the half-side. Returns (covered, near_edge)."""
    cov = np.zeros((len(pl), h, w), bool)
    near = np.zeros_like(cov)
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    for k in range(len(pl)):
        cx, cy = pl.center[k].tolist()
        half, a = float(pl.side[k]) / 2, float(pl.angle[k])
        dx, dy = jj - cx, ii - cy
        # the forward map sends (u, v) to (u cos + v sin, −u sin + v cos)·half: invert the rotation
        u = (dx * math.cos(a) - dy * math.sin(a)) / half
        v = (dx * math.sin(a) + dy * math.cos(a)) / half
        if mask == "square":
            r = np.maximum(np.abs(u), np.abs(v))
        else:
            r = np.hypot(u, v)
        cov[k] = r <= 1
        near[k] = np.abs(r - 1) * half < EDGE
    return cov, near


@pytest.mark.parametrize("mask", ["square", "circle"])
def test_zero_patch_covers_exactly_the_mask_at_the_sampled_place(mask):
    g = torch.Generator().manual_seed(3)
    h, w = 24, 32
    pl = sample_placements(40, (h, w), scale=(0.2, 0.9), rotation=45.0, generator=g)
    x = torch.ones(40, 2, h, w, dtype=torch.float64)
    xp, cov = apply_patch(x, torch.zeros(2, 9, 9, dtype=torch.float64), pl, mask=mask)
    want, near = _brute(pl, h, w, mask)
    zero = (xp == 0).all(1).numpy()
    assert ((xp == 0) | (xp == 1)).all()  # a covered pixel reads the patch, an uncovered one the image
    assert (zero == cov[:, 0].numpy()).all()
    assert (zero[~near] == want[~near]).all() and near.sum() <= 2
    # the covered area is the shape's area up to the pixels along its outline
    area = pl.side.numpy() ** 2 * (1 if mask == "square" else math.pi / 4)
    per = 4 * pl.side.numpy() * (1 if mask == "square" else math.pi / 4)
    inside = (xp[:, 0] == 0).sum((1, 2)).numpy()
    assert (np.abs(inside - area) <= per + 4).all()


def test_placements_stay_in_the_image_and_in_the_scale_range():
    g = torch.Generator().manual_seed(0)
    h, w = 20, 30
    pl = sample_placements(500, (h, w), scale=(0.1, 0.5), rotation=30.0, generator=g)
    s = pl.side / min(h, w)
    assert float(s.min()) >= 0.1 and float(s.max()) <= 0.5
    assert float(pl.angle.abs().max()) <= math.radians(30.0) + 1e-12
    # the rotated square's bounding box: half-extent side/2·(|cos| + |sin|) on each axis
    ext = pl.side / 2 * (pl.angle.cos().abs() + pl.angle.sin().abs())
    assert bool((pl.center[:, 0] - ext >= -1e-9).all() and (pl.center[:, 0] + ext <= w + 1e-9).all())
    assert bool((pl.center[:, 1] - ext >= -1e-9).all() and (pl.center[:, 1] + ext <= h + 1e-9).all())
    # a fixed scale; a different seed gives other placements, the same seed the same ones
    fixed = sample_placements(5, (h, w), scale=0.3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(fixed.side, torch.full((5,), 0.3 * 20, dtype=torch.float64))
    again = sample_placements(500, (h, w), scale=(0.1, 0.5), rotation=30.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.center, pl.center) and torch.equal(again.side, pl.side)


def test_pixel_aligned_placement_reproduces_the_patch_and_rotates_as_rot90():
    """A patch of s pixels placed with side s on the pixel grid is copied exactly; at 90° it is torch.rot90 (k=1,
    counter-clockwise as displayed)."""
    p = torch.arange(2 * 6 * 6, dtype=torch.float64).reshape(2, 6, 6) / 72
    x = torch.full((2, 2, 16, 16), -1.0, dtype=torch.float64)
    pl = Placements(center=torch.tensor([[7.0, 5.0], [7.0, 5.0]], dtype=torch.float64),
                    side=torch.tensor([6.0, 6.0], dtype=torch.float64),
                    angle=torch.tensor([0.0, math.pi / 2], dtype=torch.float64))
    xp, cov = apply_patch(x, p, pl, mask="square")
    # the patch spans pixels 4..9 (x) and 2..7 (y); rows are y
    assert torch.allclose(xp[0, :, 2:8, 4:10], p, atol=1e-12)
    assert torch.allclose(xp[1, :, 2:8, 4:10], torch.rot90(p, 1, dims=(1, 2)), atol=1e-12)
    assert int(cov[0].sum()) == 36 and bool((xp[0][:, ~cov[0, 0]] == -1).all())


def test_gradient_reaches_every_covered_pixel_once():
    """Bilinear weights sum to one per pixel: d(sum of the placed patch)/d(patch) sums to the covered count."""
    g = torch.Generator().manual_seed(5)
    pl = sample_placements(6, (28, 28), scale=(0.3, 0.8), rotation=90.0, perspective=0.3, generator=g)
    p = torch.rand(1, 12, 12, dtype=torch.float64, generator=g).requires_grad_(True)
    xp, cov = apply_patch(torch.zeros(6, 1, 28, 28, dtype=torch.float64), p, pl, mask="circle")
    xp.sum().backward()
    assert abs(float(p.grad.sum()) - float(cov.sum())) < 1e-9 and float(cov.sum()) > 0


def test_perspective_matrix_moves_the_corners():
    off = torch.tensor([[[0.1, 0.2], [-0.3, 0.05], [-0.2, -0.1], [0.25, -0.15]]], dtype=torch.float64)
    m = perspective_matrix(off)
    src = torch.tensor([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=torch.float64)
    q = (m[0] @ src.T).T
    assert torch.allclose(q[:, :2] / q[:, 2:], src[:, :2] + off[0], atol=1e-12)


def test_box_placements_follow_the_box():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 100.0], [0.0, 0.0, 8.0, 6.0]])
    pl = box_placements(boxes, relative_size=0.2, offset=0.1)
    assert torch.allclose(pl.side, 0.2 * torch.tensor([math.hypot(30, 80), 10.0], dtype=torch.float64))
    assert torch.allclose(pl.center, torch.tensor([[25.0, 60.0 + 8.0], [4.0, 3.6]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    jit = box_placements(boxes.repeat(100, 1), jitter=0.1, rotation=10.0, brightness=0.1, contrast=0.2,
                         noise=0.1, generator=g)
    d = (jit.center - pl.center.repeat(100, 1) + torch.tensor([0.0, 0.1]) * (boxes[:, 3] - boxes[:, 1]).repeat(100)[:, None])
    assert bool((d.abs() <= 0.1 * jit.side[:, None] + 1e-9).all())
    assert float(jit.brightness.abs().max()) <= 0.1 and float((jit.contrast - 1).abs().max()) <= 0.2
    # several placements on one image: pasted in order, the covered pixels are the union
    x = torch.ones(2, 3, 120, 60)
    three = torch.tensor([[10.0, 20.0, 40.0, 100.0], [0.0, 0.0, 8.0, 6.0], [30.0, 10.0, 60.0, 50.0]])
    xp, cov = apply_patch(x, torch.zeros(3, 10, 10), box_placements(three), image_index=torch.tensor([0, 0, 1]),
                          mask="square")
    single = [coverage(box_placements(b[None]), (120, 60), "square")[0, 0] for b in three]
    assert torch.equal(cov[0, 0], single[0] | single[1]) and torch.equal(cov[1, 0], single[2])
    assert torch.equal((xp == 0).all(1), cov[:, 0])


def test_brightness_contrast_noise_change_the_patch_values_only():
    pl = Placements(torch.tensor([[8.0, 8.0]], dtype=torch.float64), torch.tensor([8.0], dtype=torch.float64),
                    torch.zeros(1, dtype=torch.float64), brightness=torch.tensor([0.1], dtype=torch.float64),
                    contrast=torch.tensor([0.5], dtype=torch.float64))
    xp, cov = apply_patch(torch.zeros(1, 1, 16, 16), torch.full((1, 4, 4), 0.6), pl, mask="square")
    assert torch.allclose(xp[0, 0][cov[0, 0]], torch.tensor(0.6 * 0.5 + 0.1))
    pl.noise = 0.05
    xn, _ = apply_patch(torch.zeros(1, 1, 16, 16), torch.full((1, 4, 4), 0.6), pl, mask="square",
                        generator=torch.Generator().manual_seed(0), bounds=(0.0, 0.38))
    vals = xn[0, 0][cov[0, 0]]
    assert float(vals.max()) <= 0.38 and float((vals - 0.4).abs().max()) <= 0.05 + 1e-6 and float(vals.std()) > 0


@pytest.mark.parametrize("scale", [0.0, 1.5, -0.1, (0.5, 0.2), (0.1, 1.01), "big", float("nan")])
def test_scale_outside_unit_interval_is_refused(scale):
    with pytest.raises(OptionError, match="scale"):
        sample_placements(3, (10, 10), scale=scale)


def test_bad_input_is_refused():
    pl = sample_placements(2, (10, 10), scale=0.5, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(2, 1, 10, 10)
    with pytest.raises(InputError, match="larger than the images"):
        apply_patch(x, torch.zeros(1, 11, 11), pl)
    with pytest.raises(InputError, match="square"):
        apply_patch(x, torch.zeros(1, 4, 5), pl)
    with pytest.raises(InputError, match="channels"):
        apply_patch(x, torch.zeros(3, 4, 4), pl)
    with pytest.raises(InputError, match="NaN"):
        apply_patch(x, torch.full((1, 4, 4), float("nan")), pl)
    with pytest.raises(InputError, match="placements for"):
        apply_patch(torch.zeros(3, 1, 10, 10), torch.zeros(1, 4, 4), pl)
    with pytest.raises(InputError, match="image_index"):
        apply_patch(x, torch.zeros(1, 4, 4), pl, image_index=torch.tensor([0, 2]))
    with pytest.raises(OptionError, match="patch mask"):
        apply_patch(x, torch.zeros(1, 4, 4), pl, mask="star")
    with pytest.raises(InputError, match="images must be"):
        apply_patch(torch.zeros(2, 100), torch.zeros(1, 4, 4), pl)
    with pytest.raises(OptionError, match="perspective"):
        sample_placements(2, (10, 10), perspective=1.0)
    with pytest.raises(OptionError, match="rotation"):
        sample_placements(2, (10, 10), rotation=200.0)
    with pytest.raises(InputError, match="x2 > x1"):
        box_placements(torch.tensor([[5.0, 5.0, 4.0, 9.0]]))
