"""The spatial grid and worst-of-k attacks (Engstrom et al., ICML 2019): equal to a brute-force loop over the
same transforms, the same transform as Foolbox's SpatialAttack, the grid radius and its curve, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import ROUNDOFF, CountingLinear, fmnist_model, needs_fmnist, relative_margin

from georobust.attacks.spatial_grid import (
    apply_transforms,
    grid_radius,
    grid_transforms,
    spatial_grid,
    spatial_worst_of_k,
)
from georobust.errors import InputError, OptionError


def test_grid_points_and_radius():
    g = grid_transforms(3.0, 30.0, 5, 31)
    assert g.shape == (775, 3)
    assert sorted(set(g[:, 0].tolist())) == [-3.0, -1.5, 0.0, 1.5, 3.0]
    assert g[:, 2].min() == -30 and g[:, 2].max() == 30 and len(set(g[:, 2].tolist())) == 31
    r = grid_radius(g, 3.0, 30.0)
    assert float(r.max()) == 1.0 and int((r == 0).sum()) == 1
    assert grid_radius(torch.tensor([[1.5, -0.3, 6.0]]), 3.0, 30.0).item() == pytest.approx(0.5)
    assert grid_radius(torch.tensor([[0.0, 0.0, 6.0]]), 0.0, 30.0).item() == pytest.approx(0.2)  # no translation term
    assert grid_transforms(2.0, 10.0, 1, 3)[:, :2].abs().max() == 0  # one point per axis: no translation


def test_identity_and_integer_translation():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = apply_transforms(x, torch.zeros(2, 3))
    assert torch.allclose(out, x, atol=1e-5)
    out = apply_transforms(x, torch.tensor([[2.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    assert torch.allclose(out[0, :, :, 2:], x[0, :, :, :-2], atol=1e-5)   # +2 px in x: the picture moves right
    assert torch.allclose(out[0, :, :, :2], torch.zeros(1, 8, 2), atol=1e-6)
    assert torch.allclose(out[1, :, :-1], x[1, :, 1:], atol=1e-5)          # −1 px in y: the picture moves up


def test_same_transform_as_foolbox():
    """Foolbox's SpatialAttack samples the input at ``R(φ)p + t`` with ``t`` given in units of half the image
    side (3 "px" there is 3·(W−1)/W pixels); our ``[tx, ty, angle]`` is its ``φ = angle``, ``t = −(tx, ty)``."""
    fb_t = pytest.importorskip("foolbox.attacks.spatial_attack_transformations")
    import eagerpy as ep

    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    for dx, dy, phi in ((3.0, -1.5, 14.0), (0.0, 3.0, -30.0), (-1.5, 0.0, 0.0)):
        want = fb_t.rotate_and_shift(ep.astensor(x), translation=(dx, dy), rotation=phi).raw
        s = 27 / 28
        ours = apply_transforms(x, torch.tensor([[-dx * s, -dy * s, phi]]).expand(3, 3))
        assert (ours - want).abs().max() < 1e-4


def _brute_force(clf, x, y, grid):
    """Per sample, the first transform of ``grid`` (already in the attack's order) that fools it, one image and
    one transform at a time; and whether any transform puts the sample within round-off of the boundary."""
    first, near = [], []
    for i in range(x.shape[0]):
        f, nb = -1, False
        for j in range(grid.shape[0]):
            xt = apply_transforms(x[i:i + 1], grid[j:j + 1])
            nb = nb or bool(relative_margin(clf, xt, y[i:i + 1]).abs().item() <= ROUNDOFF)
            with torch.no_grad():
                if f < 0 and int(clf(xt).argmax(1)) != int(y[i]):
                    f = j
        first.append(f)
        near.append(nb)
    return first, near


@pytest.fixture(scope="module")
def lenet():
    return fmnist_model("lenet-fmnist-at", 10)


@pytest.mark.slow
@needs_fmnist
def test_grid_equals_brute_force(lenet):
    """A 3 × 3 × 5 grid (±2 px, ±20°) on 10 test images of lenet-fmnist-at: the batched, early-exiting search
    finds, per sample, the same first fooling transform (smallest radius; ties in the stable grid order) as a
    loop over the transforms one by one. Samples that some transform puts within round-off of the boundary are
    left out (their answer is a CPU's luck)."""
    clf, x, y = lenet
    kw = {"max_translation": 2.0, "max_rotation": 20.0, "num_translations": 3, "num_rotations": 5}
    r = spatial_grid(clf, x, y, **kw, forward_batch=7)
    g = grid_transforms(**kw)
    order = torch.sort(grid_radius(g, 2.0, 20.0), stable=True).indices
    g = g[order]
    first, near = _brute_force(clf, x, y, g)
    correct = (r.label_clean == y).tolist()
    checked = 0
    for i in range(x.shape[0]):
        if near[i] or not correct[i]:
            continue
        checked += 1
        assert bool(r.success[i]) == (first[i] >= 0)
        if first[i] >= 0:
            assert r.params["transform"][i] == pytest.approx(g[first[i]].tolist())
            assert float(r.size[i]) == pytest.approx(float(grid_radius(g[first[i]], 2.0, 20.0)))
            assert int(r.iterations[i]) == first[i] + 1
        else:
            assert int(r.iterations[i]) == g.shape[0]
    assert checked >= 6  # measured: 7 (2 misclassified clean, 1 within round-off of the boundary)
    # the result is the same whatever the batching (chunking="position")
    r2 = spatial_grid(clf, x, y, **kw, batch_size=3)
    assert r2.success.tolist() == r.success.tolist()
    assert r2.params["transform"] == r.params["transform"]


@needs_fmnist
def test_radius_curve(lenet):
    """One run gives robust accuracy at every radius: non-increasing, the clean accuracy at 0 and the accuracy
    under the whole grid at 1 (fooled = some transform of the grid fools it)."""
    clf, x, y = lenet
    kw = {"max_translation": 2.0, "max_rotation": 20.0, "num_translations": 3, "num_rotations": 5}
    r = spatial_grid(clf, x, y, **kw)
    acc = r.robust_accuracy([0.0, 0.25, 0.5, 0.75, 1.0])
    assert acc[0] == pytest.approx(float((r.label_clean == y).double().mean()))
    assert all(a >= b for a, b in zip(acc, acc[1:]))
    assert acc[-1] == pytest.approx(float(((r.label_clean == y) & ~r.success).double().mean()))
    # every success is misclassified: the protocol re-ran the model; x_adv is the transform it reports
    tr = torch.tensor(r.params["transform"])
    again = apply_transforms(x, tr)
    assert torch.allclose(again, r.x_adv, atol=1e-5)


@needs_fmnist
def test_worst_of_k(lenet):
    clf, x, y = lenet
    a = spatial_worst_of_k(clf, x, y, k=10, seed=1)
    b = spatial_worst_of_k(clf, x, y, k=10, seed=1)
    assert a.success.tolist() == b.success.tolist() and a.params["transform"] == b.params["transform"]
    tr = torch.tensor(a.params["transform"])
    assert bool((tr[:, :2].abs() <= 3.0).all()) and bool((tr[:, 2].abs() <= 30.0).all())
    assert bool((a.iterations <= 10).all())
    assert torch.allclose(apply_transforms(x, tr), a.x_adv, atol=1e-5)
    assert a.size.tolist() == pytest.approx(grid_radius(tr, 3.0, 30.0).tolist())


@pytest.mark.parametrize("fn, x_shape, kw, err", [
    (spatial_grid, (4, 16), {}, InputError),                               # flat (N, D): no image to rotate
    (spatial_grid, (4, 1, 4, 4), {"num_translations": 0}, OptionError),    # a grid with zero points
    (spatial_grid, (4, 1, 4, 4), {"num_rotations": 0}, OptionError),
    (spatial_grid, (4, 1, 4, 4), {"max_rotation": -5.0}, OptionError),
    (spatial_grid, (4, 1, 4, 4), {"max_rotation": 270.0}, OptionError),
    (spatial_grid, (4, 1, 4, 4), {"max_translation": 0.0, "max_rotation": 0.0}, OptionError),
    (spatial_grid, (4, 1, 4, 4), {"padding": "wrap"}, OptionError),
    (spatial_worst_of_k, (4, 16), {}, InputError),
    (spatial_worst_of_k, (4, 1, 4, 4), {"k": 0}, OptionError),
    (spatial_worst_of_k, (4, 1, 4, 4), {"seed": "a"}, OptionError),
])
def test_bad_input_refused_before_work(fn, x_shape, kw, err):
    m = CountingLinear().eval()
    with pytest.raises(err) as e:
        fn(m, torch.rand(*x_shape), **kw)
    assert m.calls == 0
    assert len(str(e.value)) > 20


def test_unknown_option_through_registry():
    from georobust import registry

    with pytest.raises(OptionError, match="max_rotaton|unknown|not an option"):
        registry.attacks.get("spatial-grid").check_options({"max_rotaton": 10})
