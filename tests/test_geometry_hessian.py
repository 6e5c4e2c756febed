"""Hessian-vector products and batched Lanczos against known Hessians and dense autograd Hessians."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from georobust.errors import OptionError
from georobust.geometry.hessian import HVP, averaged_hvp, dense_hessian, hessian_eigs, lanczos, logit_diff_fn, loss_fn


def _quadratic(n=3, d=25, seed=0, rank=None):
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        a = torch.randn(n, d, d, generator=g, dtype=torch.float64)
        a = (a + a.transpose(1, 2)) / 2
    else:
        u = torch.randn(n, d, rank, generator=g, dtype=torch.float64)
        a = u @ u.transpose(1, 2)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return a, x, (lambda z: 0.5 * torch.einsum("ni,nij,nj->n", z, a, z) + z.sum(1))


def test_quadratic_eigenvalues_exact():
    a, x, fn = _quadratic()
    ev = torch.linalg.eigvalsh(a)
    top = hessian_eigs(fn, x, k=5, steps=25, vectors=True)
    assert torch.allclose(top.values, ev.flip(1)[:, :5], atol=1e-4)
    # Ritz vectors are eigenvectors: A v = λ v
    av = torch.einsum("nij,nkj->nki", a, top.vectors)
    assert (av - top.values[..., None] * top.vectors).norm(dim=2).max() < 1e-4
    bottom = hessian_eigs(fn, x, k=4, which="smallest", steps=25)
    assert torch.allclose(bottom.values, ev[:, :4], atol=1e-4)
    mag = hessian_eigs(fn, x, k=3, which="magnitude", steps=25)
    ref = ev.gather(1, ev.abs().argsort(1, descending=True)[:, :3])
    assert torch.allclose(mag.values, ref, atol=1e-4)


def test_low_rank_breakdown_gives_exact_zeros():
    # rank-3 Hessians: the Krylov space is exhausted after 4 steps; the restarts must give exact zeros
    a, x, fn = _quadratic(n=4, d=30, rank=3, seed=1)
    ev = torch.linalg.eigvalsh(a).flip(1)
    e = hessian_eigs(fn, x, k=6, steps=20)
    assert torch.allclose(e.values[:, :3], ev[:, :3], rtol=1e-8, atol=1e-8)
    assert e.values[:, 3:].abs().max() < 1e-8
    assert torch.isfinite(e.values).all()


def test_steps_equal_dimension_is_exact():
    a, x, fn = _quadratic(n=2, d=12)
    e = hessian_eigs(fn, x, k=12, steps=12)
    assert torch.allclose(e.values, torch.linalg.eigvalsh(a).flip(1), atol=1e-8)


def _small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 4)).double().eval()


def test_lanczos_matches_dense_hessian_small_network():
    net = _small_net()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g)
    for fn in (loss_fn(net, y), logit_diff_fn(net, y, (y + 1) % 4)):
        h = dense_hessian(fn, x)
        ref = torch.linalg.eigvalsh(h)
        e = hessian_eigs(fn, x, k=3, steps=10)
        assert torch.allclose(e.values, ref.flip(1)[:, :3], atol=1e-8)
        e = hessian_eigs(fn, x, k=2, which="smallest", steps=10)
        assert torch.allclose(e.values, ref[:, :2], atol=1e-8)
        # and each HVP equals the dense product
        v = torch.randn(5, 10, generator=g, dtype=torch.float64)
        assert torch.allclose(HVP(fn, x)(v), torch.einsum("nij,nj->ni", h, v), atol=1e-10)


def test_relu_loss_hessian_low_rank_matches_dense(mlp_digits, digits_test):
    x, y = digits_test
    clf = mlp_digits.double()
    try:
        x, y = x[:3].double(), y[:3]
        fn = loss_fn(clf, y)
        ref = torch.linalg.eigvalsh(dense_hessian(fn, x)).flip(1)
        e = hessian_eigs(fn, x, k=10)
        assert ((e.values[:, 0] - ref[:, 0]).abs() / ref[:, 0]).max() < 1e-6
        # rank <= K - 1 = 9: the 10th eigenvalue is zero up to round-off
        assert (e.values[:, 9].abs() / ref[:, 0]).max() < 1e-8
        assert (ref[:, 9].abs() / ref[:, 0]).max() < 1e-8
    finally:
        clf.float()


def test_averaged_operator_matches_mean_of_dense():
    net = _small_net(1)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(7, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    fn = loss_fn(net, y)
    hbar = dense_hessian(fn, x).mean(0)
    for bs in (7, 3):  # one cached batch, and rebuilt chunks
        mv = averaged_hvp(fn, x, batch_size=bs)
        v = torch.randn(1, 10, generator=g, dtype=torch.float64)
        assert torch.allclose(mv(v), v @ hbar, atol=1e-10)
        e = lanczos(mv, 1, 10, k=3, steps=10, dtype=torch.float64, vectors=True)
        assert torch.allclose(e.values[0], torch.linalg.eigvalsh(hbar).flip(0)[:3], atol=1e-8)
        assert e.vectors.shape == (1, 3, 10)


def test_tangent_projection():
    a, x, fn = _quadratic(n=2, d=15, seed=5)
    nvec = torch.nn.functional.normalize(torch.randn(2, 15, dtype=torch.float64), dim=1)
    # an orthonormal basis of the tangent space n^perp, and the Hessian restricted to it
    q = torch.linalg.qr(torch.cat([nvec[:, :, None], torch.randn(2, 15, 14, dtype=torch.float64)], 2))[0][:, :, 1:]
    ref = torch.linalg.eigvalsh(q.transpose(1, 2) @ a @ q)
    e = hessian_eigs(fn, x, k=4, steps=14, project=nvec, vectors=True)
    assert torch.allclose(e.values, ref.flip(1)[:, :4], atol=1e-8)
    assert (e.vectors @ nvec[:, :, None]).abs().max() < 1e-10  # principal directions are tangent
    e = hessian_eigs(fn, x, k=3, steps=14, project=nvec, which="smallest")
    assert torch.allclose(e.values, ref[:, :3], atol=1e-8)


def test_affine_model_has_zero_hessian(affine, affine_data):
    y = torch.zeros(affine_data.shape[0], dtype=torch.long)
    e = hessian_eigs(logit_diff_fn(affine, y, y + 1), affine_data, k=3)
    assert e.values.abs().max() == 0


def test_seed_reproducible_and_errors():
    a, x, fn = _quadratic(n=2, d=20)
    e1 = hessian_eigs(fn, x, k=2, steps=6, seed=7, vectors=True)
    e2 = hessian_eigs(fn, x, k=2, steps=6, seed=7, vectors=True)
    assert torch.equal(e1.values, e2.values) and torch.equal(e1.vectors, e2.vectors)
    with pytest.raises(OptionError):
        hessian_eigs(fn, x, which="biggest")
    with pytest.raises(OptionError):
        hessian_eigs(fn, x, k=0)
    with pytest.raises(OptionError):
        HVP(lambda z: z, x)
