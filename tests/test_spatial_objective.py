"""The ``spatial-adversarial`` objective (Engstrom et al., ICML 2019, spatial adversarial training): its inner
maximisation is the worst of its candidate transforms (checked against a brute-force loop, one image and one
transform at a time), its loss is never below the clean loss when the identity is a candidate, a few steps of
``fit`` with it run, and bad options are refused before any work."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from georobust import Classifier, registry
from georobust.attacks.spatial_grid import apply_transforms, grid_transforms
from georobust.defenses import fit, make_objective
from georobust.defenses.spatial_objectives import SpatialAdversarial
from georobust.errors import InputError, OptionError


def _tiny(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).double()
    return Classifier(net, bounds=(0.0, 1.0), input_shape=(1, 8, 8)).eval()


def _data(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 8, 8, dtype=torch.float64)
    x[:, :, 2:6, 1:5] = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)  # off-centre: transforms matter
    return x, torch.randint(0, 3, (n,), generator=g)


def _brute(clf, x, y, theta):
    """CE of every (image, transform) pair, one forward pass each."""
    n, c = theta.shape[:2]
    out = torch.empty(n, c, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n):
            for j in range(c):
                xt = apply_transforms(x[i:i + 1], theta[i, j:j + 1], "zeros", 0.0)
                out[i, j] = F.cross_entropy(clf(xt), y[i:i + 1])
    return out


def test_registered_with_options():
    assert "spatial-adversarial" in registry.objectives
    obj = make_objective("spatial-adversarial", k="4", grid="false")
    assert isinstance(obj, SpatialAdversarial) and obj.k == 4 and obj.grid is False
    cfg = obj.config()
    assert cfg["name"] == "spatial-adversarial" and cfg["k"] == 4 and cfg["max_translation"] == 3.0


@pytest.mark.parametrize("grid", [False, True])
def test_inner_max_is_the_worst_of_its_transforms(grid):
    clf, (x, y) = _tiny(), _data()
    obj = SpatialAdversarial(k=7, grid=grid, num_translations=3, num_rotations=5, forward_batch=5)
    torch.manual_seed(3)
    theta = obj.candidates(x)
    assert theta.shape == (6, 1 + (7 if not grid else 3 * 3 * 5), 3)
    assert torch.equal(theta[:, 0], torch.zeros(6, 3, dtype=torch.float64))  # the identity first
    if grid:
        assert torch.equal(theta[0, 1:], grid_transforms(3.0, 30.0, 3, 5))
    else:  # uniform draws inside the box
        assert bool((theta[..., :2].abs() <= 3.0).all()) and bool((theta[..., 2].abs() <= 30.0).all())
    xw, chosen, loss = obj.worst(clf, x, y, theta)
    brute = _brute(clf, x, y, theta)
    # float64, batched vs one at a time: affine_grid's sample positions differ by round-off (measured up to
    # 3e-12 in the CE, ~1e4 ulps: a position on a pixel's edge amplifies it through the bilinear weights)
    tol = 1e-9
    assert torch.allclose(loss, brute, rtol=0, atol=tol)
    worst_brute = brute.max(1).values
    picked = brute.gather(1, loss.argmax(1, keepdim=True)).squeeze(1)
    assert torch.allclose(picked, worst_brute, rtol=0, atol=2 * tol)
    # the returned images are the chosen transforms applied, and the chosen transforms are candidates
    for i in range(6):
        assert any(torch.equal(chosen[i], t) for t in theta[i])
        ref = apply_transforms(x[i:i + 1], chosen[i:i + 1], "zeros", 0.0)
        assert torch.allclose(xw[i:i + 1], ref, rtol=0, atol=tol)
    with torch.no_grad():
        ce_w = F.cross_entropy(clf(xw), y, reduction="none")
    assert torch.allclose(ce_w, worst_brute, rtol=0, atol=2 * tol)


def test_draws_follow_the_global_generator():
    x, _ = _data()
    obj = SpatialAdversarial(k=10)
    torch.manual_seed(5)
    a = obj.candidates(x)
    torch.manual_seed(5)
    b = obj.candidates(x)
    torch.manual_seed(6)
    c = obj.candidates(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_at_least_the_clean_loss():
    clf, (x, y) = _tiny(2), _data(8, 4)
    with torch.no_grad():
        clean = float(F.cross_entropy(clf(x), y))
    for seed in range(3):
        torch.manual_seed(seed)
        loss, terms = SpatialAdversarial(k=3)(clf, x, y)
        # the identity is a candidate: per image the worst CE >= its clean CE (float64 round-off only)
        assert float(loss.detach()) >= clean - 1e-9
        assert math.isclose(terms["ce_spatial"], float(loss.detach()), rel_tol=1e-12)
    # a pure-translation box (rotation 0) still searches; the loss is still >= clean
    torch.manual_seed(0)
    loss, _ = SpatialAdversarial(k=5, max_rotation=0.0)(clf, x, y)
    assert float(loss.detach()) >= clean - 1e-9
    # mixing in the clean CE: (1 - w) worst + w clean
    torch.manual_seed(1)
    l0, t0 = SpatialAdversarial(k=4)(clf, x, y)
    torch.manual_seed(1)
    l1, t1 = SpatialAdversarial(k=4, clean_weight=0.25)(clf, x, y)
    assert math.isclose(float(l1.detach()), 0.75 * float(l0.detach()) + 0.25 * clean, rel_tol=1e-10)
    assert math.isclose(t1["ce"], clean, rel_tol=1e-12)


@pytest.mark.slow
def test_fit_runs_and_is_reproducible():
    x, y = _data(16, 7)
    outs = []
    for _ in range(2):
        clf = _tiny(9)
        hist = fit(clf, (x, y), "spatial-adversarial", epochs=2, batch_size=8, lr=1e-2, seed=11,
                   objective_options={"k": 3})
        outs.append((hist, [p.detach().clone() for p in clf.parameters()]))
    assert len(outs[0][0].epochs) == 2
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))  # seeded draws: the same training


def test_option_errors_before_work():
    with pytest.raises(OptionError, match="k"):
        SpatialAdversarial(k=0)
    with pytest.raises(OptionError, match="max_translation"):
        SpatialAdversarial(max_translation=-1)
    with pytest.raises(OptionError, match="at most 180"):
        SpatialAdversarial(max_rotation=200)
    with pytest.raises(OptionError, match="both 0"):
        SpatialAdversarial(max_translation=0, max_rotation=0)
    with pytest.raises(OptionError, match="num_rotations"):
        SpatialAdversarial(grid=True, num_rotations=0)
    with pytest.raises(OptionError, match="grid"):
        SpatialAdversarial(grid="yes")
    with pytest.raises(OptionError, match="clean_weight"):
        SpatialAdversarial(clean_weight=1.5)
    with pytest.raises(OptionError, match="padding"):
        SpatialAdversarial(padding="wrap")
    with pytest.raises(OptionError, match="unknown|not an option|option"):
        make_objective("spatial-adversarial", radius=3)
    flat = Classifier(nn.Linear(4, 3).double(), bounds=(0.0, 1.0)).eval()
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        SpatialAdversarial()(flat, torch.rand(2, 4, dtype=torch.float64), torch.tensor([0, 1]))
