"""Houdini (Cisse et al., NeurIPS 2017): the loss's value and its paper gradient on a hand-computed example, the
gradient against finite differences of the smoothed objective, and the attacks on a per-pixel linear segmenter
whose answer is known."""

import math

import pytest
import torch
from torch import nn

import georobust as gr
from georobust.attacks.houdini import HoudiniFunction, dense_ce_loss, houdini_loss, iou_weights, pixel_weights


def Phi(v):
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def phi(v):
    return math.exp(-v * v / 2) / math.sqrt(2 * math.pi)


# two classes, four pixels in a row; the last pixel is ignored (-100)
Z = torch.tensor([[2.0, 0.3, 0.0, 5.0], [0.5, 1.0, 0.0, -5.0]], dtype=torch.float64).view(1, 2, 1, 4)


def test_hand_computed_targeted():
    """Targeted: y = target [1, 1, 0, ·], ŷ = arg-max [0, 1, 0, ·]; only pixel 0 is off target: δ = 0.5 − 2 = −1.5,
    ℓ_H = (1 − Φ(−1.5)) · 1/3, gradient −φ(−1.5)/3 on z[1], +φ(−1.5)/3 on z[0], zero elsewhere."""
    z = Z.clone().requires_grad_(True)
    y = torch.tensor([[[0, 1, 0, -100]]])
    target = torch.tensor([[[1, 1, 0, 0]]])
    loss = houdini_loss(z, y, target)  # the attack ascends −ℓ_H
    want = (1 - Phi(-1.5)) / 3
    assert loss.shape == (1,) and loss.item() == pytest.approx(-want, abs=1e-12)
    (g,) = torch.autograd.grad(loss.sum(), z)
    expect = torch.zeros_like(Z)
    expect[0, 1, 0, 0] = +phi(-1.5) / 3  # gradient of −ℓ_H
    expect[0, 0, 0, 0] = -phi(-1.5) / 3
    assert torch.allclose(g, expect, atol=1e-12)


def test_hand_computed_untargeted():
    """Untargeted: ŷ is the strongest competing label; δ = (1.5, 0.7, 0) on the three counted pixels,
    ℓ_H = Σ (1 − Φ(δ_p)) / 3, gradient −φ(δ_p)/3 on z[y_p] and +φ(δ_p)/3 on z[ŷ_p]."""
    z = Z.clone().requires_grad_(True)
    y = torch.tensor([[[0, 1, 0, -100]]])
    loss = houdini_loss(z, y)
    deltas = (1.5, 0.7, 0.0)
    assert loss.item() == pytest.approx(sum(1 - Phi(d) for d in deltas) / 3, abs=1e-12)
    (g,) = torch.autograd.grad(loss.sum(), z)
    expect = torch.zeros_like(Z)
    for p, (d, yp) in enumerate(zip(deltas, (0, 1, 0))):
        expect[0, yp, 0, p] = -phi(d) / 3
        expect[0, 1 - yp, 0, p] = +phi(d) / 3
    assert torch.allclose(g, expect, atol=1e-12)


def test_iou_weights_by_hand():
    """pred = ref = [0, 1, 0]: |U_0| = 2, |U_1| = 1, two classes present → weights 1/(2·2), 1/(2·1), 1/(2·2)."""
    pred = torch.tensor([[[0, 1, 0, 1]]])
    ref = torch.tensor([[[0, 1, 0, 0]]])
    counted = torch.tensor([[[True, True, True, False]]])
    w = iou_weights(pred, ref, counted, 2)
    assert torch.allclose(w, torch.tensor([[[0.25, 0.5, 0.25, 0.0]]], dtype=torch.float64))
    assert torch.allclose(pixel_weights(pred, ref, counted, 2), torch.tensor([[[1 / 3, 1 / 3, 1 / 3, 0.0]]],
                                                                             dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_finite_differences_of_the_smoothed_objective(seed):
    """With ŷ and w held fixed (the paper's gradient treats them as constants) the objective
    Σ (1 − Φ(z[ref] − z[ŷ])) w is smooth; its central differences equal the custom backward."""
    g = torch.Generator().manual_seed(seed)
    n, k, h, w = 2, 4, 3, 3
    z = torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    ref = torch.randint(0, k, (n, h, w), generator=g)
    yhat = torch.randint(0, k, (n, h, w), generator=g)
    wt = torch.rand(n, h, w, generator=g, dtype=torch.float64)

    def f(t):
        return HoudiniFunction.apply(t, ref, yhat, wt).sum()

    zr = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(zr), zr)
    fd = torch.zeros_like(z)
    hstep = 1e-6
    for idx in range(z.numel()):
        e = torch.zeros(z.numel(), dtype=torch.float64)
        e[idx] = hstep
        e = e.view_as(z)
        fd.view(-1)[idx] = (f(z + e) - f(z - e)) / (2 * hstep)
    # central differences: O(h²) truncation (|f'''| ≤ 1) plus round-off ~1e-16/h
    assert torch.allclose(grad, fd, atol=1e-8)
    # and the same as autograd through the normal CDF written out
    zz = z.clone().requires_grad_(True)
    d = zz.gather(1, ref[:, None])[:, 0] - zz.gather(1, yhat[:, None])[:, 0]
    (auto,) = torch.autograd.grad(((1 - torch.special.ndtr(d)) * wt).sum(), zz)
    assert torch.allclose(grad, auto, atol=1e-14)


def test_gradient_through_a_model_matches_finite_differences():
    """Through a small conv segmenter, w.r.t. the input, ŷ and w frozen at x: a directional derivative."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)).double().eval()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        z0 = model(x)
    y = z0.argmax(1)
    ref = y
    yhat = z0.scatter(1, ref[:, None], float("-inf")).argmax(1)
    wt = torch.full(y.shape, 1 / 25, dtype=torch.float64)

    def f(xx):
        return HoudiniFunction.apply(model(xx), ref, yhat, wt).sum()

    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xr), xr)
    v = torch.randn_like(x)
    hstep = 1e-5
    fd = (f(x + hstep * v) - f(x - hstep * v)) / (2 * hstep)
    assert float((g * v).sum()) == pytest.approx(float(fd.detach()), rel=1e-6, abs=1e-10)


def test_dense_ce_loss_ignores_pixels():
    z = Z.clone()
    y = torch.tensor([[[0, 1, 0, -100]]])
    ce = torch.nn.functional.cross_entropy(z[..., :3], y[..., :3], reduction="mean")
    assert dense_ce_loss(z, y).item() == pytest.approx(ce.item(), abs=1e-12)
    t = torch.tensor([[[1, 1, 1, 1]]])
    ce_t = torch.nn.functional.cross_entropy(z[..., :3], t[..., :3], reduction="mean")
    assert dense_ce_loss(z, y, t).item() == pytest.approx(-ce_t.item(), abs=1e-12)


class PixelLinear(nn.Module):
    """Per pixel: z_0 = x − 0.5, z_1 = 0.5 − x; class 0 iff x > 0.5. Pixel p flips within L∞ radius |x_p − 0.5|."""

    def forward(self, x):
        return torch.cat([x - 0.5, 0.5 - x], 1)


def _scenes(n=3, s=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (n, 1, s, s), generator=g).float()
    return 0.5 + (side * 2 - 1) * (0.1 + 0.1 * torch.rand(n, 1, s, s, generator=g))  # |x − 0.5| in [0.1, 0.2]


@pytest.mark.parametrize("name", ["houdini", "dense-pgd"])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_attacks_on_the_pixel_linear_segmenter(name, norm):
    """Every pixel is within L∞ 0.2 of its boundary and none within 0.1: at ε = 0.25 every pixel flips (success on
    every scene), at ε = 0.09 none can (zero pixels changed) — verified by re-running the model."""
    fn = gr.registry.attacks.get(name).fn
    model = PixelLinear().eval()
    x = _scenes()
    y = model(x).argmax(1)
    big = 0.25 if norm == "inf" else 0.25 * 6  # L2: the ball holding the L∞ 0.25 box's corners of 36 pixels
    r = fn(model, x, y, eps=big, norm=norm, steps=60)
    assert torch.equal(r.label_adv, model(r.x_adv).argmax(1))
    if norm == "inf":
        assert float(r.linf.max()) <= 0.25 + 1e-6
        assert bool(r.success.all()) and float((r.label_adv != y).double().mean()) == 1.0
    else:
        assert float(r.l2.max()) <= big + 1e-5
        assert float((r.label_adv != y).double().mean()) > 0.5  # L2 steps spread unevenly: most, not all
    small = fn(model, x, y, eps=0.09, norm="inf", steps=20)
    assert torch.equal(small.label_adv, y) and not bool(small.success.any())
    s = small.summary()
    assert s["miou_adv"] == pytest.approx(1.0) and s["pixel_accuracy_adv"] == pytest.approx(1.0)


def test_targeted_on_the_pixel_linear_segmenter():
    """A target map reachable within ε = 0.25 everywhere: both attacks put every pixel on it."""
    model = PixelLinear().eval()
    x = _scenes()
    y = model(x).argmax(1)
    target = torch.zeros_like(y)
    target[:, :, :3] = 1  # left half class 1, right half class 0
    for name in ("houdini", "dense-pgd"):
        r = gr.registry.attacks.get(name).fn(model, x, y, eps=0.25, steps=60, target=target)
        assert torch.equal(r.label_adv, target), name
        assert r.summary()["target_agreement"] == 1.0 and bool(r.success.all())
