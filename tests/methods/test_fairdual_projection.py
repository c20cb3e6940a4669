"""`project_dual` (spec §2.5): property tests and an independent QP oracle over the power set (G ≤ 8)."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize

from fairlit.methods._fairdual_projection import project_dual

METRICS = ("weighted", "euclid")


@st.composite
def cases(draw, max_groups=12):
    """(μ̃ [G], m̂ [G], λ) in float64."""
    g = draw(st.integers(1, max_groups))
    floats = st.floats(-5, 5, allow_nan=False, width=32)
    mu = torch.tensor(draw(st.lists(floats, min_size=g, max_size=g)), dtype=torch.float64)
    mhat = torch.tensor(draw(st.lists(st.floats(0.1, 4), min_size=g, max_size=g)), dtype=torch.float64)
    return mu, mhat, draw(st.floats(0, 6))


def neg_mass(mu, mhat):
    return float((mhat * mu.clamp(max=0)).sum())


def metric_dot(a, b, mhat, metric):
    return float(((mhat ** 2 if metric == "weighted" else 1) * a * b).sum())


@pytest.mark.parametrize("metric", METRICS)
@given(case=cases())
def test_properties(metric, case):
    mu, mhat, lam = case
    p = project_dual(mu, mhat, lam, metric)
    assert neg_mass(p, mhat) >= -lam - 1e-9                                   # feasible
    torch.testing.assert_close(project_dual(p, mhat, lam, metric), p)           # idempotent
    assert torch.equal(p[mu >= 0], mu[mu >= 0])                                  # entries >= 0 untouched
    neg = mu < 0
    assert bool(((p[neg] >= mu[neg] - 1e-12) & (p[neg] <= 0)).all())             # move into [μ̃, 0]
    if neg_mass(mu, mhat) >= -lam:
        assert torch.equal(p, mu)                                                # identity on feasible input
    perm = torch.randperm(len(mu))
    torch.testing.assert_close(project_dual(mu[perm], mhat[perm], lam, metric), p[perm])
    torch.testing.assert_close(project_dual(2.5 * mu, mhat, 2.5 * lam, metric), 2.5 * p)
    # Variational inequality <μ̃ − P, y − P>_metric <= 0 for feasible y (random points of M).
    for _ in range(5):
        y = torch.randn_like(mu) * 3
        y = project_dual(y, mhat, lam, metric)
        assert metric_dot(mu - p, y - p, mhat, metric) <= 1e-8
    if metric == "weighted":  # order is preserved in v = m̂⊙μ space
        v, w = mhat * mu, mhat * p
        i, j = torch.meshgrid(torch.arange(len(mu)), torch.arange(len(mu)), indexing="ij")
        assert bool((w[i] >= w[j] - 1e-12)[v[i] >= v[j]].all())


@pytest.mark.parametrize("metric", METRICS)
def test_limits(metric):
    mu = torch.tensor([-3.0, 1.0, -0.5, 2.0], dtype=torch.float64)
    mhat = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.equal(project_dual(mu, mhat, 0.0, metric), mu.clamp(min=0))
    assert torch.equal(project_dual(mu, mhat, 1e9, metric), mu)


def test_metrics_coincide_for_unit_weights():
    mu = torch.randn(50, 7, dtype=torch.float64) * 2
    ones = torch.ones(7, dtype=torch.float64)
    torch.testing.assert_close(project_dual(mu, ones, 1.3, "weighted"), project_dual(mu, ones, 1.3, "euclid"))


def test_batched_rows_equal_single_rows():
    mu, lam = torch.randn(6, 5, dtype=torch.float64) * 2, torch.rand(6, dtype=torch.float64) * 3
    mhat = torch.rand(5, dtype=torch.float64) + 0.2
    out = project_dual(mu, mhat, lam)
    for r in range(6):
        torch.testing.assert_close(out[r], project_dual(mu[r], mhat, float(lam[r])))


def qp_oracle(mu, mhat, lam, metric):
    """SLSQP with one constraint Σ_{g∈S} m̂_g x_g ≥ −λ per nonempty subset S (the paper's definition of M)."""
    mu, mhat = mu.numpy(), mhat.numpy()
    w = mhat ** 2 if metric == "weighted" else np.ones_like(mu)
    subsets = [np.array(s) for r in range(1, len(mu) + 1) for s in itertools.combinations(range(len(mu)), r)]
    cons = [{"type": "ineq", "fun": lambda x, s=s: mhat[s] @ x[s] + lam, "jac": lambda x, s=s: np.where(
        np.isin(np.arange(len(mu)), s), mhat, 0.0)} for s in subsets]
    res = minimize(lambda x: w @ (x - mu) ** 2, np.zeros_like(mu), jac=lambda x: 2 * w * (x - mu),
                   constraints=cons, method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    return res.x


@pytest.mark.parametrize("metric", METRICS)
def test_matches_qp_oracle(metric):
    gen = np.random.default_rng(0)
    for g in [2, 3, 4, 5, 6, 7, 8] + [3, 5, 6] * 2:      # the power set has 2^G − 1 constraints
        mu = torch.tensor(gen.normal(0, 2, g))
        mhat = torch.tensor(gen.uniform(0.2, 3, g))
        lam = float(gen.uniform(0, 4))
        np.testing.assert_allclose(project_dual(mu, mhat, lam, metric).numpy(), qp_oracle(mu, mhat, lam, metric),
                                   atol=2e-5)


def test_no_host_sync_shapes_and_dtype():
    mu = torch.randn(3, 1000, dtype=torch.float32)
    out = project_dual(mu, torch.ones(1000), torch.tensor([0.0, 1.0, 50.0]))
    assert out.shape == mu.shape and out.dtype == torch.float32


def test_bad_metric():
    with pytest.raises(ValueError, match="metric"):
        project_dual(torch.zeros(3), torch.ones(3), 1.0, "l1")
