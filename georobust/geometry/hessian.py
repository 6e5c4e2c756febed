"""Hessians of scalar functions of the input, without ever forming them: Hessian-vector products (HVPs) for a
whole batch at once, and Lanczos with full re-orthogonalisation for the extreme eigenpairs of each sample.

The scalar functions are those the geometric analyses need: the loss ``ℓ(f(x), y)`` (CURE's curvature
profile, Moosavi-Dezfooli et al., "Robustness via curvature regularization, and vice versa", CVPR 2019) and a
logit difference ``f_k(x) − f_l(x)`` whose zero set is the decision boundary (Fawzi, Moosavi-Dezfooli &
Frossard, "Robustness of classifiers: from adversarial to random noise", NIPS 2016; Moosavi-Dezfooli et al.,
"Universal adversarial perturbations", CVPR 2017 and "Robustness of classifiers to universal perturbations:
a geometric perspective", ICLR 2018).

HVPs use double backward: one forward and one backward with ``create_graph=True`` build ``g = ∇ₓφ``, and every
product ``H v = ∇ₓ⟨g, v⟩`` is then one more backward through that retained graph. Samples never mix (the model
is in eval mode), so the sum over the batch gives each sample its own product.

Lanczos (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, §10.1) runs on ``N`` independent symmetric
operators at once: ``matvec`` maps ``(N, d) → (N, d)``. Every new Lanczos vector is orthogonalised twice
against all previous ones ("twice is enough"), so the Ritz values are not duplicated. When the Krylov space
of a sample is exhausted (``β_j ≈ 0`` — e.g. the input Hessian of the loss of a ReLU network, which is
``Jᵀ(diag p − ppᵀ)J`` of rank ≤ K−1), the sample restarts with a random vector orthogonal to all previous
ones and a zero coupling; the tridiagonal matrix is then block diagonal and its eigenvalues are still exact
eigenvalues of the operator restricted to an invariant subspace (the zeros of a low-rank Hessian appear as
zeros, as they should). The dense Hessian (:func:`dense_hessian`) exists only as a test oracle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import check_positive
from ..errors import OptionError

log = logging.getLogger(__name__)

ScalarFn = Callable[[torch.Tensor], torch.Tensor]  # (N, ...) -> (N,)
MatVec = Callable[[torch.Tensor], torch.Tensor]  # (N, d) -> (N, d)


# ------------------------------------------------------------------------------------ scalar functions
class LossFn:
    """``x ↦ CE(model(x), y)`` per sample (the loss whose input Hessian CURE's curvature profile studies)."""

    def __init__(self, model, y: torch.Tensor):
        self.model, self.y = model, y.clone()  # a clone is never an inference tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), self.y, reduction="none")

    def subset(self, idx) -> LossFn:
        """The same function for the samples ``x[idx]``."""
        return LossFn(self.model, self.y[idx])


class LogitDiffFn:
    """``x ↦ f_k(x) − f_l(x)`` per sample; its zero set is the boundary between classes ``k`` and ``l``."""

    def __init__(self, model, k: torch.Tensor, l: torch.Tensor):  # noqa: E741
        self.model, self.k, self.l = model, k.clone(), l.clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return z.gather(1, self.k[:, None]).squeeze(1) - z.gather(1, self.l[:, None]).squeeze(1)

    def subset(self, idx) -> LogitDiffFn:
        return LogitDiffFn(self.model, self.k[idx], self.l[idx])


def loss_fn(model, y: torch.Tensor) -> LossFn:
    """``x ↦ CE(model(x), y)`` per sample."""
    return LossFn(model, y)


def logit_diff_fn(model, k: torch.Tensor, l: torch.Tensor) -> LogitDiffFn:  # noqa: E741
    """``x ↦ f_k(x) − f_l(x)`` per sample."""
    return LogitDiffFn(model, k, l)


def _subset(fn: ScalarFn, x: torch.Tensor, idx: slice) -> ScalarFn:
    if hasattr(fn, "subset"):
        return fn.subset(idx)  # type: ignore[attr-defined]
    if idx.start == 0 and idx.stop >= x.shape[0]:
        return fn
    return lambda z: _padded(fn, z, idx, x)


def _padded(fn: ScalarFn, z: torch.Tensor, idx: slice, x: torch.Tensor) -> torch.Tensor:
    # a plain callable is built for the whole batch: evaluate it where only rows idx vary, keep those rows
    full = torch.cat([x[: idx.start].detach(), z, x[idx.stop :].detach()])
    return fn(full)[idx]


# ------------------------------------------------------------------------------------------------ HVPs
def gradient(fn: ScalarFn, x: torch.Tensor) -> torch.Tensor:
    """``∇φ_i(x_i)`` for every sample (one backward of the summed per-sample values)."""
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xr).sum(), xr)
    return g.detach()


class HVP:
    """Batched Hessian-vector products of a per-sample scalar function ``fn`` at ``x`` (double backward).

    ``HVP(fn, x)(v)`` returns ``∇²φ_i(x_i) v_i`` for every sample ``i``, shape ``x.shape``; ``v`` may also be
    flat ``(N, d)``. The graph of ``∇φ`` is built once and reused for every product. ``value`` and ``grad``
    hold ``φ(x)`` and ``∇φ(x)``. A function with a constant gradient (an affine model) has a zero Hessian.
    """

    def __init__(self, fn: ScalarFn, x: torch.Tensor):
        self.shape = x.shape
        with torch.enable_grad():
            self._x = x.detach().clone().requires_grad_(True)
            val = fn(self._x)
            if val.shape != (x.shape[0],):
                raise OptionError(f"the scalar function must return one value per sample, got {tuple(val.shape)}")
            (g,) = torch.autograd.grad(val.sum(), self._x, create_graph=True)
        self._g = g
        self.value = val.detach()
        self.grad = g.detach()
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        v = v.reshape(self.shape).to(self._g.dtype)
        if not self._g.requires_grad:
            return torch.zeros_like(v)
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(self._g, self._x, grad_outputs=v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.detach()

    def flat(self, v: torch.Tensor) -> torch.Tensor:
        """The product on flat vectors ``(N, d) → (N, d)`` (the form :func:`lanczos` takes)."""
        return self(v).flatten(1)


def averaged_hvp(fn: ScalarFn, x: torch.Tensor, *, batch_size: int = 256,
                 weights: torch.Tensor | None = None) -> MatVec:
    """The operator ``v ↦ (1/N) Σ_i ∇²φ_i(x_i) v`` of the *averaged* Hessian, on flat vectors ``(1, d)``.

    ``fn`` is a per-sample scalar function of the whole batch (:func:`loss_fn`, :func:`logit_diff_fn`, whose
    ``subset`` gives the function of a slice). The sum runs over batches of ``batch_size``; each batch's gradient graph is kept when the
    whole set fits in one batch, else rebuilt per product. ``weights`` (``(N,)``) replaces the uniform mean
    by ``Σ_i w_i ∇²φ_i``. This is the operator of the "curved model" of universal perturbations (ICLR 2018):
    feed it to :func:`lanczos` with ``N = 1``.
    """
    n = x.shape[0]
    check_positive(batch_size, "batch_size", integer=True)
    w = weights if weights is not None else torch.full((n,), 1.0 / n, device=x.device, dtype=x.dtype)
    slices = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    cached = HVP(_subset(fn, x, slices[0]), x[slices[0]]) if len(slices) == 1 else None

    def matvec(v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(1, -1)
        out = torch.zeros_like(v)
        for sl in slices:
            h = cached if cached is not None else HVP(_subset(fn, x, sl), x[sl])
            m = sl.stop - sl.start
            hv = h.flat(v.expand(m, -1).reshape(m, *x.shape[1:]))
            out = out + (w[sl].to(hv.dtype)[:, None] * hv).sum(0, keepdim=True)
        return out

    return matvec


# --------------------------------------------------------------------------------------------- Lanczos
@dataclass
class Eigen:
    """Eigenpairs per sample: ``values`` ``(N, k)`` (sorted as asked), ``vectors`` ``(N, k, d)`` (unit,
    flat; ``None`` unless asked for), and the number of operator products used."""

    values: torch.Tensor
    vectors: torch.Tensor | None
    matvecs: int


def _orth(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Remove from ``w`` ``(N, d)`` its components on the rows of ``q`` ``(N, j, d)`` — twice."""
    for _ in range(2):
        w = w - torch.einsum("nj,njd->nd", torch.einsum("njd,nd->nj", q, w), q)
    return w


def lanczos(matvec: MatVec, n: int, d: int, *, k: int = 10, which: str = "largest", steps: int | None = None,
            vectors: bool = False, generator: torch.Generator | None = None, seed: int | None = 0,
            device=None, dtype=torch.float32, tol: float | None = None,
            deflate: torch.Tensor | None = None) -> Eigen:
    """Extreme eigenpairs of ``n`` symmetric ``d × d`` operators at once (Lanczos, full re-orthogonalisation).

    Args:
        matvec: ``(n, d) → (n, d)``, the ``n`` operators applied row-wise (e.g. ``HVP(fn, x).flat``).
        k: eigenpairs per operator; which: ``"largest"`` (algebraic), ``"smallest"`` or ``"magnitude"``.
        steps: Lanczos steps (the Krylov dimension); default ``min(d, max(2k + 20, 40))``. Eigenvalues at the
            ends of the spectrum converge first; ``steps = d`` is exact.
        vectors: also return the Ritz vectors ``(n, k, d)``.
        generator / seed: the random starting vectors (and restart vectors after a breakdown).
        tol: a step whose residual norm falls below ``tol · max(|α|, β)`` counts as a breakdown: the sample
            restarts with a fresh random vector orthogonal to the basis, coupled by ``β = 0``. Default
            ``1e-10`` in float64, ``1e-5`` in float32 (round-off of the products).
        deflate: ``(n, j, d)`` orthonormal vectors per operator kept out of the Krylov space (the operator is
            then studied on their orthogonal complement, which it must leave invariant — e.g. ``P H P`` on a
            tangent space); at most ``d − j`` steps.
    """
    check_positive(k, "k", integer=True)
    if which not in ("largest", "smallest", "magnitude"):
        raise OptionError(f"which must be 'largest', 'smallest' or 'magnitude', got {which!r}")
    if tol is None:
        tol = 1e-10 if dtype == torch.float64 else 1e-5
    dim = d - (0 if deflate is None else deflate.shape[1])
    if k > dim:
        raise OptionError(f"k = {k} eigenpairs asked for, but the operator acts on a space of dimension {dim}"
                          f"{'' if deflate is None else f' (d = {d} minus {deflate.shape[1]} deflated)'}; "
                          f"use k <= {dim}")
    m = min(dim, steps if steps is not None else max(2 * k + 20, 40))
    m = max(m, k)
    if generator is None:
        generator = torch.Generator(device=device or "cpu")
        generator.manual_seed(0 if seed is None else seed)

    def rand() -> torch.Tensor:
        r = torch.randn(n, d, generator=generator, device=generator.device, dtype=dtype).to(device)
        return r if deflate is None else _orth(r, deflate.to(device, dtype))

    def orth(w: torch.Tensor, j: int) -> torch.Tensor:
        if deflate is not None:
            w = _orth(w, deflate.to(device, dtype))
        return _orth(w, q[:, : j + 1])

    q = torch.zeros(n, m, d, device=device, dtype=dtype)
    alpha = torch.zeros(n, m, device=device, dtype=torch.float64)
    beta = torch.zeros(n, max(m - 1, 0), device=device, dtype=torch.float64)
    v = rand()
    q[:, 0] = v / v.norm(dim=1, keepdim=True)
    scale = torch.zeros(n, device=device, dtype=torch.float64)
    restarts = torch.zeros(n, dtype=torch.long, device=device)
    for j in range(m):
        w = matvec(q[:, j]).to(dtype)
        a = (w * q[:, j]).sum(1)
        alpha[:, j] = a.double()
        if j == m - 1:
            break
        w = orth(w, j)
        b = w.norm(dim=1)
        scale = torch.maximum(scale, torch.maximum(a.double().abs(), b.double()))
        broken = b.double() <= tol * scale.clamp_min(1e-30)
        r = orth(rand(), j)
        r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-30)
        q[:, j + 1] = torch.where(broken[:, None], r, w / b.clamp_min(1e-30)[:, None])
        beta[:, j] = torch.where(broken, torch.zeros_like(b), b).double()
        restarts += broken.long()
    t = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    theta, s = torch.linalg.eigh(t)  # ascending
    if which == "largest":
        idx = torch.arange(m - 1, m - 1 - k, -1, device=theta.device).expand(n, k)
    elif which == "smallest":
        idx = torch.arange(k, device=theta.device).expand(n, k)
    else:
        idx = theta.abs().argsort(dim=1, descending=True)[:, :k]
    vals = theta.gather(1, idx)
    vecs = None
    if vectors:
        sk = s.gather(2, idx[:, None, :].expand(n, m, k))  # (n, m, k)
        vecs = torch.einsum("nmk,nmd->nkd", sk.to(dtype), q)
        vecs = vecs / vecs.norm(dim=2, keepdim=True).clamp_min(1e-30)
    if n and bool((restarts > 0).any()):
        log.debug("lanczos: Krylov space exhausted and restarted in %d sample(s)", int((restarts > 0).sum()))
    return Eigen(values=vals.to(dtype), vectors=vecs, matvecs=m)


def hessian_eigs(fn: ScalarFn, x: torch.Tensor, *, k: int = 10, which: str = "largest", steps: int | None = None,
                 vectors: bool = False, seed: int | None = 0, generator: torch.Generator | None = None,
                 project: torch.Tensor | None = None) -> Eigen:
    """Top-/bottom-``k`` eigenpairs of the input Hessian ``∇²φ_i(x_i)`` of every sample, batched.

    ``project`` (``(N, d)`` unit vectors ``n_i``) restricts each Hessian to the orthogonal complement of
    ``n_i``: the operator ``P H P`` with ``P = I − n nᵀ`` on the tangent space of a level set (as the principal
    curvatures need); ``n_i`` is deflated, so the ``d − 1`` eigenvalues are those of the tangent space only.
    """
    h = HVP(fn, x)
    d = x[0].numel()
    nvec = None
    if project is None:
        mv = h.flat
    else:
        nvec = project.reshape(x.shape[0], d).to(x.dtype)

        def proj(v):
            return v - (v * nvec).sum(1, keepdim=True) * nvec

        def mv(v):
            return proj(h.flat(proj(v)))
    deflate = None if project is None else nvec[:, None, :]
    return lanczos(mv, x.shape[0], d, k=k, which=which, steps=steps, vectors=vectors, seed=seed,
                   generator=generator, device=x.device, dtype=x.dtype, deflate=deflate)


def dense_hessian(fn: ScalarFn, x: torch.Tensor) -> torch.Tensor:
    """Dense ``(N, d, d)`` input Hessians, one sample at a time (``torch.autograd.functional.hessian``).

    A test oracle and a benchmark baseline only: it costs ``d`` backward passes per sample.
    """
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach()
        f = _subset(fn, x, slice(i, i + 1))
        hi = torch.autograd.functional.hessian(lambda z, f=f: f(z).sum(), xi)
        out.append(hi.reshape(xi.numel(), xi.numel()))
    return torch.stack(out)
