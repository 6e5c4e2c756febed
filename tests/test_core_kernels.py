"""The shared kernels of georobust.core: the one PGD kernel (analytic answer on an affine model, lean and tracked
runs agree, every iterate in the ball and the box), the one random start, and the DLR loss."""

from __future__ import annotations

import pytest
import torch
from conftest import make_affine

from georobust.core.losses import dlr_loss
from georobust.core.ops import flat_norm, random_start
from georobust.engine.pgd import WorstCase, pgd_kernel


def _binary_affine(d: int = 20, seed: int = 0):
    """A 2-class affine classifier: the CE gradient of either label is ±(w₁ − w₀), so the L2 steepest direction
    is ``w = w₁ − w₀`` (label 0) everywhere."""
    clf = make_affine(d=d, k=2, seed=seed)
    w = (clf.module.w[1] - clf.module.w[0]).detach()
    return clf, w


def test_l2_kernel_large_step_reaches_the_analytic_boundary_direction():
    clf, w = _binary_affine()
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(32, 20, generator=g)
    y = torch.zeros(32, dtype=torch.long)
    w_hat = w / w.norm()
    # one step of a step size far beyond eps: the projection puts the iterate at x + eps·ŵ, then the box clips
    for eps in (0.05, 0.5, 2.0):
        got = pgd_kernel(clf, x, y, eps=eps, norm="2", steps=1, step_size=100 * eps, bounds=(0.0, 1.0))
        want = (x + eps * w_hat).clamp(0, 1)
        assert torch.allclose(got, want, rtol=0, atol=eps * 1e-6), eps
    # inside the box the point is a fixed point of further steps (the gradient direction does not change)
    eps = 0.05
    got = pgd_kernel(clf, x, y, eps=eps, norm="2", steps=5, step_size=100 * eps, bounds=(0.0, 1.0))
    want = x + eps * w_hat
    assert bool(((want > 0) & (want < 1)).all())
    assert torch.allclose(got, want, rtol=0, atol=5 * eps * 1e-6)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_lean_and_tracked_runs_give_the_same_last_iterate(norm):
    clf = make_affine()
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(40, 20, generator=g)
    y = clf(x).argmax(1)
    eps = 1e-3 if norm == "inf" else 3e-3  # far too small to change any prediction
    start = (x + random_start(x, eps, norm, torch.Generator().manual_seed(5))).clamp(0, 1)
    kw = dict(eps=eps, norm=norm, steps=7, step_size=eps / 3, bounds=(0.0, 1.0), start=start)
    lean = pgd_kernel(clf, x, y, **kw)
    track = WorstCase(x, early_stop=True)
    tracked = pgd_kernel(clf, x, y, tracker=track, **kw)
    assert not bool(track.success.any())  # the premise: no sample succeeded, so none left the active set
    assert torch.equal(lean, tracked)
    assert track.iterations.tolist() == [7] * 40


class _Recorder(torch.nn.Module):
    """Passes inputs to ``clf`` and keeps every input it was called on (the kernel's iterates)."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.clf(x)


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("seed", range(6))
def test_every_iterate_stays_in_the_ball_and_the_box(norm, seed):
    clf = make_affine(seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(16, 20, generator=g)  # near the faces of the box too
    y = torch.randint(0, 5, (16,), generator=g)
    eps = float(torch.empty(()).uniform_(0.02, 0.6, generator=g)) * (1 if norm == "inf" else 3)
    start = (x + random_start(x, eps, norm, g)).clamp(0, 1)
    rec = _Recorder(clf)
    # lean, and tracked without early stop (every sample stays in the batch, so row i is always sample i)
    for tracker in (None, WorstCase(x, early_stop=False)):
        rec.seen.clear()
        last = pgd_kernel(rec, x, y, eps=eps, norm=norm, steps=6, step_size=0.8 * eps, bounds=(0.0, 1.0),
                          start=start, tracker=tracker)
        assert len(rec.seen) == (6 if tracker is None else 7)  # 6 gradient steps (+ the last iterate's score)
        for xa in [*rec.seen, last]:
            assert xa.shape == x.shape
            assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
            assert float(flat_norm(xa - x, norm).max()) <= eps * (1 + 1e-6) + 1e-7


def test_random_start_l2_radius_is_uniform_on_zero_eps_and_linf_in_the_cube():
    n, d, eps = 4000, 50, 0.7
    like = torch.zeros(n, d)
    delta = random_start(like, eps, "2", torch.Generator().manual_seed(0))
    u = (flat_norm(delta, "2") / eps).sort().values
    assert float(u.max()) <= 1 + 1e-6
    ecdf_hi = torch.arange(1, n + 1, dtype=u.dtype) / n
    ecdf_lo = torch.arange(0, n, dtype=u.dtype) / n
    ks = float(torch.maximum(ecdf_hi - u, u - ecdf_lo).max())  # sup |F_n − F| for the uniform law on [0, 1]
    assert ks < 0.03
    # the direction is isotropic: the mean of the unit directions is near 0 (each coordinate ~ N(0, 1/(d·n)))
    dirs = delta / flat_norm(delta, "2")[:, None].clamp_min(1e-12)
    assert float(dirs.mean(0).abs().max()) < 5 / (d * n) ** 0.5
    # L∞: uniform in the cube, every coordinate within eps, and filling it
    delta = random_start(like, eps, "inf", torch.Generator().manual_seed(1))
    assert float(delta.abs().max()) <= eps
    assert float(delta.abs().max()) > 0.99 * eps and abs(float(delta.mean())) < 0.01
    # per-sample radii are honoured
    e = torch.linspace(0.1, 1.0, n)
    delta = random_start(like, e, "2", torch.Generator().manual_seed(2))
    assert bool((flat_norm(delta, "2") <= e * (1 + 1e-6)).all())


def test_dlr_is_invariant_to_positive_affine_maps_of_the_logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (64,), generator=g)
    t = (y + 1 + torch.randint(0, 9, (64,), generator=g)) % 10
    for a, b in ((0.01, 0.0), (7.5, -3.0), (250.0, 40.0)):
        shift = b + torch.randn(64, 1, generator=g, dtype=torch.float64)  # a per-sample shift as well
        for target in (None, t):
            ref = dlr_loss(z, y, target)
            got = dlr_loss(a * z + shift, y, target)
            assert torch.allclose(got, ref, rtol=1e-5, atol=0), (a, b, target is None)


def test_dlr_equals_the_formula_on_a_hand_example():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    # untargeted: −(z_y − max_{i≠y} z_i)/(z_π1 − z_π3) = −(3 − 2)/(3 − 1)
    assert float(dlr_loss(z, y)) == pytest.approx(-0.5, abs=1e-12)
    # targeted at class 1: −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2) = −(3 − 1)/(3 − 0.75)
    assert float(dlr_loss(z, y, torch.tensor([1]))) == pytest.approx(-2 / 2.25, abs=1e-12)
    # a misclassified sample (y = 2 is not the top class): −(2 − 3)/(3 − 1) = +0.5
    assert float(dlr_loss(z, torch.tensor([2]))) == pytest.approx(0.5, abs=1e-12)


def test_a_checkpoint_from_before_fast_at_had_one_spelling_still_resumes():
    """``Adversarial`` lost its ``fast`` option (fast AT is ``fast-adversarial``): a checkpoint whose objective
    config says ``fast: false`` still matches the plain objective; ``fast: true`` is refused with the new name."""
    from pathlib import Path

    from georobust.defenses.objectives import make_objective
    from georobust.defenses.train import _legacy_settings
    from georobust.errors import CheckpointError

    now = make_objective("adversarial", eps=0.1, steps=10).config()
    assert "fast" not in now
    old = {"objective": {**now, "fast": False}, "epochs": 3}
    assert _legacy_settings(old, Path("ck")) == {"objective": now, "epochs": 3}
    with pytest.raises(CheckpointError, match="fast-adversarial"):
        _legacy_settings({"objective": {**now, "fast": True}, "epochs": 3}, Path("ck"))
    other = {"objective": make_objective("fast-adversarial", eps=0.1).config()}
    assert _legacy_settings(other, Path("ck")) == other
