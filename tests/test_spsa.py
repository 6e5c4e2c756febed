"""SPSA (Uesato et al., ICML 2018): exact query counting through the score oracle, budgets, the analytic affine
case (L∞ and L2), a gradient-masking model PGD cannot break, bad input."""

import pytest
import torch
from conftest import ImageAffine, analytic_distance

from georobust import registry
from georobust.attacks.pgd import pgd
from georobust.attacks.spsa import spsa
from georobust.errors import OptionError


def inner_points(n=200, seed=1):
    """Inputs in [0.3, 0.7]: the ε-balls below (and the probes, δ = 0.01 further) stay inside the box [0, 1]."""
    return 0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_spsa_is_registered_as_a_bounded_score_attack():
    e = registry.attacks.get("spsa")
    assert e.threat == "bounded-lp" and "inf" in e.norms and e.chunking == "remaining"


@pytest.mark.parametrize("max_queries", [None, 5 * 33 + 7])
def test_spsa_counts_every_query_and_keeps_the_budget(max_queries):
    m = ImageAffine().eval()
    x = inner_points(30)
    with torch.no_grad():
        y = m(x).argmax(1)
    y[:3] = (y[:3] + 1) % 5               # already misclassified: never queried
    m.seen = 0
    r0 = spsa(m, x, y, eps=0.0)           # eps = 0 queries nothing: what the model sees is the protocol's overhead
    assert int(r0.queries.sum()) == 0
    base = m.seen
    m.seen = 0
    steps, samples = 20, 32
    r = spsa(m, x, y, eps=0.004, steps=steps, samples=samples, max_queries=max_queries)
    assert m.seen - base == int(r.queries.sum())
    budget = max_queries or steps * (samples + 1)
    assert r.params["max_queries"] == budget
    assert int(r.queries.max()) <= budget
    assert r.queries[:3].tolist() == [0, 0, 0]
    # every step costs its point plus the estimate; a sample stops at its first adversarial point (1 query)
    q = r.queries[3:]
    assert bool((((q - 1) % (samples + 1) == 0) | (q % (samples + 1) == 0)).all())
    unbroken = ~r.success[3:]
    assert int(unbroken.sum()) > 0 and int(r.success[3:].sum()) > 0
    full = (budget // (samples + 1)) * (samples + 1)
    assert bool((q[unbroken] == full).all())           # not broken: every affordable step was taken
    with torch.no_grad():
        assert torch.equal(r.label_adv, m(r.x_adv).argmax(1))


def test_spsa_linf_breaks_the_affine_model_where_the_analytic_distance_allows():
    m = ImageAffine().eval()
    x = inner_points()
    d = analytic_distance(m, x, "inf")
    eps = float(d.median())
    r = spsa(m, x, eps=eps, seed=0)
    assert float(r.linf.max()) <= eps * (1 + 1e-5)
    near, far = d < 0.5 * eps, d > 1.001 * eps
    assert int(near.sum()) >= 30 and int(far.sum()) >= 50
    assert float(r.success[near].float().mean()) >= 0.9
    assert int(r.success[far].sum()) == 0               # exact: nothing in the ε-cube crosses the boundary


def test_spsa_l2_stays_in_the_ball_and_breaks_the_near_samples():
    m = ImageAffine().eval()
    x = inner_points()
    d = analytic_distance(m, x, "2")
    eps = float(d.median())
    r = spsa(m, x, eps=eps, norm=2, lr=0.001, steps=50, seed=0)
    assert float(r.l2.max()) <= eps * (1 + 1e-5)
    near, far = d < 0.5 * eps, d > 1.001 * eps
    assert float(r.success[near].float().mean()) >= 0.9
    assert int(r.success[far].sum()) == 0


def test_spsa_breaks_a_gradient_masking_model_that_pgd_cannot():
    m = ImageAffine(levels=4).eval()      # forward quantises the input to 4 levels: every input gradient is zero
    x = torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    rp = pgd(m, x, eps=0.1, steps=20, random_start=False)
    assert int(rp.success.sum()) == 0
    rs = spsa(m, x, eps=0.1, steps=50)
    assert float(rs.success.float().mean()) >= 0.5


def test_spsa_is_deterministic_given_a_seed():
    m = ImageAffine().eval()
    x = inner_points(20)
    a = spsa(m, x, eps=0.005, steps=10, samples=16, seed=1)
    b = spsa(m, x, eps=0.005, steps=10, samples=16, seed=1)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)


def test_spsa_refuses_bad_input_before_any_query():
    m = ImageAffine().eval()
    x = inner_points(4)
    for kw, msg in [(dict(samples=0), "samples"), (dict(samples=7), "even"), (dict(norm="1"), "norm"),
                    (dict(max_queries=0), "max_queries"), (dict(max_queries=100), "cannot pay for one SPSA step"),
                    (dict(steps=0), "steps"), (dict(delta=0.0), "delta"), (dict(lr=-1.0), "lr")]:
        m.seen = 0
        with pytest.raises(OptionError, match=msg):
            spsa(m, x, **{"eps": 0.05, **kw})
        assert m.seen == 0
