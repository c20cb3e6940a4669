"""dual_projection and dual_mirror_step vs fairlit.ops.reference (values, gradients), opcheck, torch.compile,
bad inputs.

The properties of the projection itself (feasibility, idempotence, the QP oracle) are tested through
`project_dual` in tests/methods/test_fairdual_projection.py.
"""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairlit import ops
from fairlit.ops import reference
from tests.conftest import devices
from tests.ops.helpers import HAS_OP, dtypes, tol

METRICS = ("weighted", "euclid")
LAMS = ("zero", "tiny", "huge", "random", "per_row")
SHAPES = ("random", "positive", "negative", "ties")


@st.composite
def cases(draw):
    """(rows, groups, λ kind, μ kind, seed); G = 1000 and 1500 cover the CUDA kernel's sorted-rows path (> 1024)."""
    rows = draw(st.integers(1, 6))
    groups = draw(st.one_of(st.integers(1, 40), st.sampled_from([1000, 1500])))
    return rows, groups, draw(st.sampled_from(LAMS)), draw(st.sampled_from(SHAPES)), draw(st.integers(0, 2**16))


def make_inputs(rows, groups, lam_kind, shape, seed, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(rows, groups, generator=gen, dtype=torch.float64) * 2
    if shape == "positive":
        mu = mu.abs()
    elif shape == "negative":
        mu = -mu.abs() - 0.01
    elif shape == "ties":  # repeated keys in both metrics: equal μ and equal m̂ on a block of entries
        mu[:, : (groups + 1) // 2] = -1.25
    mhat = torch.rand(groups, generator=gen, dtype=torch.float64) * 2 + 0.25
    if shape == "ties":
        mhat[: (groups + 1) // 2] = 0.5
    mass = (mhat * mu.clamp(max=0)).sum(-1).neg()  # λ above this leaves the row unchanged
    lam = {"zero": torch.zeros(rows, dtype=torch.float64), "tiny": torch.full((rows,), 1e-30, dtype=torch.float64),
           "huge": torch.full((rows,), 1e30, dtype=torch.float64),
           "random": torch.full((rows,), float(torch.rand((), generator=gen, dtype=torch.float64)) * 3),
           "per_row": mass * torch.rand(rows, generator=gen, dtype=torch.float64) * 1.5}[lam_kind]
    return tuple(t.to(dtype).to(device) for t in (mu, mhat, lam))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
@given(case=cases(), dtype=dtypes)
def test_matches_reference(device, metric, case, dtype):
    mu, mhat, lam = make_inputs(*case, dtype=dtype, device=device)
    out = ops.dual_projection(mu, mhat, lam, metric)
    want = reference.dual_projection(mu.cpu(), mhat.cpu(), lam.cpu(), metric == "weighted")
    assert out.dtype == dtype and out.shape == mu.shape
    torch.testing.assert_close(out.cpu(), want, **tol(dtype, 8))
    assert torch.equal(out[mu >= 0], mu[mu >= 0])  # entries >= 0 are never touched


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
@given(case=cases())
def test_gradients_match_reference(device, metric, case):
    rows, groups, lam_kind, shape, seed = case
    if shape == "ties":  # ties sit on the kinks, where the reference's autograd picks an arbitrary side
        shape = "random"
    mu, mhat, lam = make_inputs(rows, groups, lam_kind, shape, seed, device=device)
    mu.requires_grad_()
    lam.requires_grad_()
    upstream = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed), dtype=mu.dtype).to(device)
    grads = torch.autograd.grad(ops.dual_projection(mu, mhat, lam, metric), (mu, lam), upstream)
    ref = torch.autograd.grad(reference.dual_projection(mu, mhat, lam, metric == "weighted"), (mu, lam), upstream)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, **tol(torch.float64, 100))


def test_lam_forms_and_batch_shapes():
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) * 2
    mhat = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    lam = torch.rand(2, 3, generator=gen, dtype=torch.float64)
    rows = mu.reshape(6, 5)
    for metric in METRICS:
        weighted = metric == "weighted"
        torch.testing.assert_close(ops.dual_projection(mu, mhat, lam, metric),
                                   reference.dual_projection(rows, mhat, lam.reshape(6), weighted).reshape(mu.shape))
        torch.testing.assert_close(ops.dual_projection(mu, mhat, 0.7, metric),
                                   ops.dual_projection(mu, mhat, torch.tensor(0.7, dtype=torch.float64), metric))
        per_slice = ops.dual_projection(mu, mhat, lam[:, :1], metric)  # broadcast along the second batch dim
        torch.testing.assert_close(per_slice[:, 2], ops.dual_projection(mu[:, 2], mhat, lam[:, 0], metric))
        single = ops.dual_projection(mu[1, 2], mhat, float(lam[1, 2]), metric)  # [G] input
        torch.testing.assert_close(single, ops.dual_projection(mu, mhat, lam, metric)[1, 2])
    assert ops.dual_projection(torch.zeros(0, 4), torch.ones(4), 1.0).shape == (0, 4)
    wide = torch.randn(5, 6, generator=gen, dtype=torch.float64)  # non-contiguous [R, G] rows
    torch.testing.assert_close(ops.dual_projection(wide.t(), mhat, 0.3, "euclid"),
                               ops.dual_projection(wide.t().contiguous(), mhat, 0.3, "euclid"))


def test_hand_computed():
    # weighted, m̂ = 1: b = (3, 1), λ = 2 -> θ = (4 - 2) / 2 = 1 -> (-2, 0); the positive entry stays.
    mu, ones = torch.tensor([[-3.0, -1.0, 2.0]]), torch.ones(3)
    torch.testing.assert_close(ops.dual_projection(mu, ones, 2.0), torch.tensor([[-2.0, 0.0, 2.0]]))
    # euclid, m̂ = (2, 1): Σ m̂ relu(b - θ m̂) = 2 (3 - 2θ) = 2 -> θ = 1 (entry 2 clipped) -> (-1, 0).
    out = ops.dual_projection(torch.tensor([-3.0, -0.5]), torch.tensor([2.0, 1.0]), 2.0, "euclid")
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0]))
    # the output never aliases the input, even when the input is feasible
    feasible = torch.tensor([-0.1, 1.0])
    assert ops.dual_projection(feasible, torch.ones(2), 5.0).data_ptr() != feasible.data_ptr()


def test_rows_are_independent_of_thread_count():
    mu, mhat, lam = make_inputs(64, 300, "per_row", "random", 11, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.dual_projection(mu, mhat, lam, "euclid")
        torch.set_num_threads(max(2, threads))
        many = ops.dual_projection(mu, mhat, lam, "euclid")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    torch.testing.assert_close(one[5], ops.dual_projection(mu[5], mhat, lam[5], "euclid"))


def _samples(metric):
    """float64 inputs away from the kinks: distinct keys, λ strictly inside (0, negative mass)."""
    mu, mhat, lam = make_inputs(4, 7, "per_row", "random", 5)
    lam = lam.clamp(min=0.05)
    return mu.requires_grad_(), mhat, lam.requires_grad_(), metric == "weighted"


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_float64(metric):
    mu, mhat, lam, _ = _samples(metric)
    assert torch.autograd.gradcheck(lambda m, l: ops.dual_projection(m, mhat, l, metric), (mu, lam))


@pytest.mark.skipif(not HAS_OP, reason="opcheck needs the compiled library")
@pytest.mark.parametrize("metric", METRICS)
def test_opcheck(metric):
    mu, mhat, lam, weighted = _samples(metric)
    torch.library.opcheck(torch.ops.fairlit.dual_projection, (mu, mhat, lam, weighted))
    torch.library.opcheck(torch.ops.fairlit.dual_projection, (mu.detach().float(), mhat.float(),
                                                              lam.detach().float(), weighted))
    torch.library.opcheck(torch.ops.fairlit.dual_projection_backward,
                          (torch.randn_like(mu), mu.detach(), mhat, lam.detach(), weighted))


def test_torch_compile_fullgraph_matches_eager():
    mu, mhat, lam, _ = _samples("weighted")

    def fn(mu, lam):
        return (ops.dual_projection(mu, mhat, lam, "weighted") ** 2).sum() + ops.dual_projection(
            mu, mhat, 0.5, "euclid").sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(mu, lam)
    torch.testing.assert_close(out, fn(mu, lam))
    for got, want in zip(torch.autograd.grad(out, (mu, lam)), torch.autograd.grad(fn(mu, lam), (mu, lam))):
        torch.testing.assert_close(got, want)


def _mu():
    return torch.tensor([[-1.0, 2.0, -0.5]])


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.dual_projection(_mu(), torch.ones(3), 1.0, "l1"), ValueError, "`metric` must be one of"),
    (lambda: ops.dual_projection(_mu().long(), torch.ones(3), 1.0), TypeError, "`mu` must be a floating tensor"),
    (lambda: ops.dual_projection(torch.tensor(1.0), torch.ones(1), 1.0), ValueError, "`mu` must be \\[..., G\\]"),
    (lambda: ops.dual_projection(_mu(), torch.ones(4), 1.0), ValueError, "`mhat` must be \\[G\\] with G = 3"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3, dtype=torch.float64), 1.0), TypeError, "`mhat` has dtype"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3, device="meta"), 1.0), ValueError, "`mhat` is on meta"),
    (lambda: ops.dual_projection(_mu(), torch.tensor([1.0, 0.0, 1.0]), 1.0), ValueError, "`mhat` must be > 0"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3, requires_grad=True), 1.0), ValueError, "`mhat`"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3), -1.0), ValueError, "`lam` must be >= 0"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3), float("nan")), ValueError, "`lam` must be >= 0 and not NaN"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3), torch.tensor([-0.5])), ValueError, "`lam` must be >= 0"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3), torch.tensor([float("nan")])), ValueError, "got NaN"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3), torch.ones(2)), ValueError, "`lam` must be .* broadcastable"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3), torch.ones(1, dtype=torch.float64)), TypeError,
     "`lam` has dtype"),
    (lambda: ops.dual_projection(_mu(), torch.ones(3), "1"), TypeError, "`lam` must be a float or a tensor"),
    (lambda: ops.dual_projection(torch.tensor([float("nan"), 1.0]), torch.ones(2), 1.0), ValueError,
     "`mu` contains NaN"),
    (lambda: ops.dual_projection(torch.tensor([float("inf"), 1.0]), torch.ones(2), 1.0), ValueError,
     "`mu` contains inf"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_validate_false_skips_value_checks():
    out = ops.dual_projection(torch.tensor([float("nan"), -2.0]), torch.ones(2), 1.0, validate=False)
    assert torch.isnan(out[0]) and out.shape == (2,)


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_shapes_and_mhat():
    mu, lam = _mu(), torch.ones(1)
    with pytest.raises(RuntimeError, match="`mhat` must be > 0"):
        torch.ops.fairlit.dual_projection(mu, torch.tensor([1.0, -1.0, 1.0]), lam, True)
    with pytest.raises(RuntimeError, match="`lam` must be \\[R\\]"):
        torch.ops.fairlit.dual_projection(mu, torch.ones(3), torch.ones(2), True)
    with pytest.raises(RuntimeError, match="`grad` must have the shape"):
        torch.ops.fairlit.dual_projection_backward(torch.ones(2), mu, torch.ones(3), lam, False)


# ------------------------------------------------------------------------------ dual_mirror_step
TARGETS = ("remaining", "constant")


def mirror_state(groups, seed, dtype=torch.float64, device="cpu"):
    """(mu, gmom, gamma, share, batch_fraction, rho, mhat) of a FairDual-like state [G]."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(groups, generator=gen, dtype=torch.float64)
    gmom = torch.randn(groups, generator=gen, dtype=torch.float64) * 0.1
    rho = torch.rand(groups, generator=gen, dtype=torch.float64) + 0.1
    gamma = rho * torch.rand(groups, generator=gen, dtype=torch.float64)
    share = torch.rand(groups, generator=gen, dtype=torch.float64)
    share = share / share.sum()
    mhat = torch.rand(groups, generator=gen, dtype=torch.float64) * 2 + 0.25
    fraction = torch.rand((), generator=gen, dtype=torch.float64) * 0.1
    return tuple(t.to(dtype).to(device) for t in (mu, gmom, gamma, share, fraction, rho, mhat))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("target", TARGETS)
@given(groups=st.one_of(st.integers(1, 40), st.sampled_from([1000, 1500])), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]), lam=st.sampled_from([0.0, 1e-3, 0.5, 2.0, 1e6]),
       eta=st.sampled_from([1e-3, 0.1, 10.0]), alpha=st.sampled_from([0.2, 1.0]), steps=st.integers(1, 3))
def test_mirror_step_matches_reference(device, metric, target, groups, seed, dtype, lam, eta, alpha, steps):
    state = mirror_state(groups, seed, dtype, device)
    want = [t.cpu().clone() for t in state]
    for _ in range(steps):  # the state carries over: later steps start from projected, partly negative duals
        out = ops.dual_mirror_step(*state, lam, eta, alpha, metric, target)
        reference.dual_mirror_step(*want, lam, eta, alpha, metric == "weighted", target == "remaining")
    assert out is state[0]
    for name, got, ref in zip(("mu", "gmom", "gamma"), state, want):
        torch.testing.assert_close(got.cpu(), ref, **tol(dtype, 8), msg=name)
    if target == "constant":
        torch.testing.assert_close(state[2].cpu(), mirror_state(groups, seed, dtype)[2])  # γ untouched


@pytest.mark.parametrize("device", devices())
def test_mirror_step_hand_computed(device):
    def state():
        t = [torch.tensor(v, dtype=torch.float64, device=device) for v in
             ([0.5, -0.25], [0.1, -0.2], [1.0, 0.5], [0.6, 0.4], 0.5, [0.5, 0.5], [1.0, 2.0])]
        return t

    # remaining, weighted: γ = (1, .5) - .5 (.6, .4) = (.7, .3); g̃ = γ - d = (.1, -.1); g = (.1, -.15);
    # μ̃ = μ - g / m̂² = (.4, -.2125); v = m̂ μ̃ = (.4, -.425), Σ relu(.425 - θ) = .2 -> θ = .225 -> μ_1 = -.2 / 2.
    mu, gmom, gamma, *rest = state()
    ops.dual_mirror_step(mu, gmom, gamma, *rest, lam=0.2, eta=1.0, alpha=0.5)
    for got, want in ((mu, [0.4, -0.1]), (gmom, [0.1, -0.15]), (gamma, [0.7, 0.3])):
        torch.testing.assert_close(got.cpu(), torch.tensor(want, dtype=torch.float64))
    # constant, euclid: g̃ = ρ - d = (-.1, .1); g = (0, -.05); μ̃ = (.5, -.2); 2 relu(.2 - 2θ) = .2 -> θ = .05.
    mu, gmom, gamma, *rest = state()
    ops.dual_mirror_step(mu, gmom, gamma, *rest, lam=0.2, eta=1.0, alpha=0.5, metric="euclid", target="constant")
    for got, want in ((mu, [0.5, -0.1]), (gmom, [0.0, -0.05]), (gamma, [1.0, 0.5])):
        torch.testing.assert_close(got.cpu(), torch.tensor(want, dtype=torch.float64))


@pytest.mark.skipif(not HAS_OP, reason="opcheck needs the compiled library")
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("target", TARGETS)
def test_mirror_step_opcheck(metric, target):
    for dtype in (torch.float64, torch.float32):
        torch.library.opcheck(torch.ops.fairlit.dual_mirror_step,
                              (*mirror_state(7, 3, dtype), 0.5, 0.1, 0.2, metric == "weighted", target == "remaining"))


def test_mirror_step_torch_compile_fullgraph_matches_eager():
    def fn(state):
        for _ in range(2):
            ops.dual_mirror_step(*state, 0.5, 0.1, 0.2)
        return state[0] * 2

    eager, traced = mirror_state(9, 1), mirror_state(9, 1)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(traced), fn(eager))
    for got, want in zip(traced[:3], eager[:3]):
        torch.testing.assert_close(got, want)


def _mirror(**changes):
    names = ("mu", "gmom", "gamma", "share", "batch_fraction", "rho", "mhat")
    args = dict(zip(names, mirror_state(3, 0))) | dict(lam=0.5, eta=0.1, alpha=0.2)
    return lambda: ops.dual_mirror_step(**(args | changes))


@pytest.mark.parametrize("call, error, message", [
    (_mirror(metric="l1"), ValueError, "`metric` must be one of"),
    (_mirror(target="budget"), ValueError, "`target` must be one of"),
    (_mirror(lam=-1.0), ValueError, "`lam` must be >= 0"),
    (_mirror(eta=0.0), ValueError, "`eta` must be > 0"),
    (_mirror(alpha=1.5), ValueError, "`alpha` must be in \\(0, 1\\]"),
    (_mirror(alpha=float("nan")), ValueError, "`alpha` must be in \\(0, 1\\]"),
    (_mirror(mu=torch.zeros(3, dtype=torch.long)), TypeError, "`mu` must be a floating tensor"),
    (_mirror(mu=torch.zeros(1, 3, dtype=torch.float64)), ValueError, "`mu` must be a \\[G\\]"),
    (_mirror(gmom=torch.zeros(4, dtype=torch.float64)), ValueError, "`gmom` must be \\[G\\] like `mu`"),
    (_mirror(share=torch.zeros(3)), TypeError, "`share` has dtype"),
    (_mirror(rho=torch.zeros(3, dtype=torch.float64, device="meta")), ValueError, "`rho` is on meta"),
    (_mirror(batch_fraction=torch.zeros(2, dtype=torch.float64)), ValueError,
     "`batch_fraction` must be a float or one"),
    (_mirror(share=torch.tensor([0.5, float("nan"), 0.5], dtype=torch.float64)), ValueError, "`share` contains NaN"),
    (_mirror(share=torch.tensor([-1.0, 0.5, 0.5], dtype=torch.float64)), ValueError, "`share` must be >= 0"),
    (_mirror(batch_fraction=-0.5), ValueError, r"`batch_fraction` must be in \[0, 1\], got -0.5"),
    (_mirror(batch_fraction=torch.tensor(5.0, dtype=torch.float64)), ValueError,
     r"`batch_fraction` must be in \[0, 1\], got max 5.0"),
    (_mirror(mhat=torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)), ValueError, "`mhat` must be > 0"),
    (_mirror(rho=torch.tensor([float("nan"), 0.5, 0.5], dtype=torch.float64), target="constant"), ValueError,
     "`rho` contains NaN"),
    (_mirror(rho=torch.tensor([-5.0, 0.5, 0.5], dtype=torch.float64), target="constant"), ValueError,
     "`rho` must be >= 0, got min -5.0"),
])
def test_mirror_step_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_mirror_step_kernel_checks():
    mu, gmom, gamma, share, fraction, rho, mhat = mirror_state(4, 0)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.fairlit.dual_mirror_step(torch.zeros(4, 2, dtype=torch.float64)[:, 0], gmom, gamma, share, fraction,
                                           rho, mhat, 0.5, 0.1, 0.2, True, True)
    with pytest.raises(RuntimeError, match="`mhat` must be > 0"):
        torch.ops.fairlit.dual_mirror_step(mu, gmom, gamma, share, fraction, rho, -mhat, 0.5, 0.1, 0.2, True, True)
    with pytest.raises(RuntimeError, match="`rho` must be a Double tensor shaped like `mu`"):
        torch.ops.fairlit.dual_mirror_step(mu, gmom, gamma, share, fraction, rho[:3], mhat, 0.5, 0.1, 0.2, True, True)
    with pytest.raises(RuntimeError, match="no derivative"):  # state that requires grad, under grad mode
        torch.ops.fairlit.dual_mirror_step(mu.requires_grad_(), gmom, gamma, share, fraction, rho, mhat, 0.5, 0.1,
                                           0.2, True, True)
