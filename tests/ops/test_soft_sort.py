"""soft_sort family: neuralsort, soft_rank_gain, soft_ndcg, soft_hit.

Oracles: the dense detNeuralSort (`reference.neuralsort_dense`, builds [B, N, N]) and its soft gain; the
properties of fade.md §2.5 / §7 K1. Runs on the compiled kernels when present, else on the reference.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlit import ops
from fairlit.ops import reference as ref
from fairlit.ops._library import has_op

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAST = settings(max_examples=30, deadline=None, derandomize=True)
TAUS = st.sampled_from([0.05, 0.3, 1.0, 4.0])


@st.composite
def score_lists(draw, max_rows=4, max_items=12, ties=None):
    """[B, N] float64 scores; with ties, small integers (many equal values) instead of floats."""
    rows = draw(st.integers(1, max_rows))
    items = draw(st.integers(1, max_items))
    ties = draw(st.booleans()) if ties is None else ties
    elem = st.integers(-2, 2).map(float) if ties else st.floats(-3, 3, allow_nan=False, width=32)
    values = draw(st.lists(elem, min_size=rows * items, max_size=rows * items))
    return torch.tensor(values, dtype=torch.float64).reshape(rows, items)


def separated(rows, items, gap=1.0, seed=0):
    """Distinct scores at least `gap` apart, in random order."""
    g = torch.Generator().manual_seed(seed)
    base = torch.stack([torch.randperm(items, generator=g) for _ in range(rows)]).double() * gap
    return base + 0.1 * gap * torch.rand(rows, items, generator=g, dtype=torch.float64)


# ---- streaming == dense -------------------------------------------------------------------------------

@FAST
@given(score_lists(), TAUS, st.data())
def test_neuralsort_matches_dense_fp64(s, tau, data):
    k = data.draw(st.integers(1, s.shape[1]))
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    p, pd = ops.neuralsort(s1, tau, k), ref.neuralsort_dense(s2, tau, k)
    torch.testing.assert_close(p, pd, rtol=1e-10, atol=1e-12)
    w = torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (p * w).sum().backward()
    (pd * w).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-10)


@FAST
@given(score_lists(), TAUS, st.data())
def test_soft_rank_gain_matches_dense_fp64(s, tau, data):
    k = data.draw(st.integers(1, s.shape[1]))
    gen = torch.Generator().manual_seed(2)
    gains = torch.rand(s.shape, dtype=torch.float64, generator=gen)
    disc = torch.rand(k, dtype=torch.float64, generator=gen)
    args1 = [t.clone().requires_grad_() for t in (s, gains, disc)]
    args2 = [t.clone().requires_grad_() for t in (s, gains, disc)]
    out = ops.soft_rank_gain(args1[0], args1[1], tau, k, args1[2])
    dense = ref.soft_rank_gain_dense(args2[0], args2[1], tau, k, args2[2])
    torch.testing.assert_close(out, dense, rtol=1e-10, atol=1e-12)
    w = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    (out * w).sum().backward()
    (dense * w).sum().backward()
    for a, b in zip(args1, args2):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(score_lists(ties=False), st.sampled_from([0.5, 1.0, 4.0]), st.data())
def test_fp32_matches_dense_fp64(s, tau, data):
    k = data.draw(st.integers(1, s.shape[1]))
    gains = torch.rand(s.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ops.neuralsort(s.float(), tau, k).double(), ref.neuralsort_dense(s, tau, k),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ops.soft_rank_gain(s.float(), gains.float(), tau, k).double(),
                               ref.soft_rank_gain_dense(s, gains, tau, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(dtype):
    s = separated(5, 40, gap=0.05, seed=4).to(dtype)
    gains = torch.rand(5, 40, generator=torch.Generator().manual_seed(5)).to(dtype)
    p = ops.neuralsort(s, 0.5, 6)
    assert p.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(p.double(), ref.neuralsort_dense(s.double(), 0.5, 6), rtol=tol, atol=tol / 10)
    out = ops.soft_rank_gain(s, gains, 0.5, 6)
    torch.testing.assert_close(out.double(), ref.soft_rank_gain_dense(s.double(), gains.double(), 0.5, 6),
                               rtol=tol, atol=tol / 10)


@FAST
@given(score_lists(ties=True))
def test_abs_rowsum_with_ties(s):
    dense = (s.unsqueeze(-1) - s.unsqueeze(-2)).abs().sum(-1)
    torch.testing.assert_close(ref.abs_rowsum(s), dense, rtol=0, atol=1e-12)
    g = torch.randn(s.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x = s.clone().requires_grad_()
    ((x.unsqueeze(-1) - x.unsqueeze(-2)).abs().sum(-1) * g).sum().backward()
    torch.testing.assert_close(ref.abs_rowsum_vjp(s, g), x.grad, rtol=0, atol=1e-12)


# ---- properties (fade.md §7 K1) -------------------------------------------------------------------------

@FAST
@given(score_lists(), TAUS)
def test_rows_sum_to_one(s, tau):
    torch.testing.assert_close(ops.neuralsort(s, tau).sum(-1), torch.ones(s.shape, dtype=s.dtype))


@FAST
@given(st.integers(1, 20), st.integers(0, 10**6), st.sampled_from([0.01, 1.0, 100.0]))
def test_argmax_is_rth_largest(items, seed, tau):
    s = separated(3, items, seed=seed)
    p = ops.neuralsort(s, tau)
    assert torch.equal(p.argmax(-1), s.argsort(-1, descending=True))


@FAST
@given(score_lists(), TAUS, st.floats(-100, 100))
def test_shift_invariance(s, tau, c):
    torch.testing.assert_close(ops.neuralsort(s + c, tau), ops.neuralsort(s, tau), rtol=1e-7, atol=1e-9)


@FAST
@given(score_lists(), TAUS, st.sampled_from([0.25, 2.0, 10.0]))
def test_scale_equals_temperature(s, tau, c):
    torch.testing.assert_close(ops.neuralsort(c * s, tau), ops.neuralsort(s, tau / c), rtol=1e-9, atol=1e-12)


@FAST
@given(score_lists(), TAUS, st.integers(0, 10**6))
def test_permutation_equivariance(s, tau, seed):
    perm = torch.randperm(s.shape[1], generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(ops.neuralsort(s[:, perm], tau), ops.neuralsort(s, tau)[:, :, perm])


def test_small_tau_gives_hard_permutation():
    s = separated(4, 9, seed=7)
    hard = torch.nn.functional.one_hot(s.argsort(-1, descending=True), 9).double()
    torch.testing.assert_close(ops.neuralsort(s, 1e-3), hard, rtol=0, atol=1e-12)
    torch.testing.assert_close(ops.soft_hit(s, s.argmax(-1), 1e-3), torch.ones(4, dtype=s.dtype))


def test_large_scores_do_not_overflow():
    s = torch.tensor([[1e4, -3e4, 2e4, 0.0]])
    for dtype in (torch.float32, torch.float64):
        p = ops.neuralsort(s.to(dtype), 1e-3)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(1, 4, dtype=dtype))
        assert torch.isfinite(ops.soft_rank_gain(s.to(dtype), torch.ones_like(s, dtype=dtype), 1e-3, 4)).all()


def test_single_item_and_empty_batch():
    s = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    p = ops.neuralsort(s, 0.5)
    assert torch.equal(p, torch.ones(3, 1, 1, dtype=torch.float64))
    p.sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    assert torch.equal(ops.soft_hit(s, 0, 0.5), torch.ones(3, dtype=torch.float64))
    assert ops.neuralsort(torch.empty(0, 4), 1.0, 2).shape == (0, 2, 4)
    assert ops.soft_rank_gain(torch.empty(0, 4), torch.empty(0, 4), 1.0, 2).shape == (0,)


# ---- helpers --------------------------------------------------------------------------------------------

def soft_ndcg_stream(s, y, tau, k):
    """fade.md §7 K1 reference for binary relevance."""
    n = s.shape[-1]
    a = ref.abs_rowsum(s)
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=s.dtype))
    acc = s.new_zeros(s.shape[:-1])
    for r in range(1, k + 1):
        acc = acc + disc[r - 1] * (torch.softmax(((n + 1 - 2 * r) * s - a) / tau, -1) * y).sum(-1)
    idcg = torch.cat([disc.new_zeros(1), disc.cumsum(0)])[y.sum(-1).clamp(max=k).long()]
    return acc / idcg


def test_soft_ndcg():
    gen = torch.Generator().manual_seed(8)
    s = torch.randn(6, 15, dtype=torch.float64, generator=gen)
    y = (torch.rand(6, 15, generator=gen) < 0.3).double()
    y[0] = 0
    y[1, 3] = 1
    got = ops.soft_ndcg(s, y, 0.5, 5)
    keep = y.sum(-1) > 0
    torch.testing.assert_close(got[keep], soft_ndcg_stream(s[keep], y[keep], 0.5, 5))
    assert got[0] == 0
    x = s.clone().requires_grad_()
    ops.soft_ndcg(x, y, 0.5, 5).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[0], torch.zeros(15, dtype=torch.float64))
    descending = torch.arange(15.0, 0, -1, dtype=torch.float64).expand(6, 15)
    ideal_order = y.sort(-1, descending=True).values  # relevant items first = a perfect ranking
    torch.testing.assert_close(ops.soft_ndcg(descending, ideal_order, 1e-3, 5)[keep],
                               torch.ones(int(keep.sum()), dtype=torch.float64))
    assert (ops.soft_ndcg(descending, y, 1e-3, 5) <= 1 + 1e-12).all()


@FAST
@given(score_lists(), TAUS, st.data())
def test_soft_hit_is_mass_of_positive(s, tau, data):
    k = data.draw(st.integers(1, s.shape[1]))
    pos = torch.tensor(data.draw(st.lists(st.integers(0, s.shape[1] - 1), min_size=s.shape[0],
                                          max_size=s.shape[0])))
    want = ref.neuralsort_dense(s, tau, k).sum(1).gather(1, pos[:, None]).squeeze(1)
    torch.testing.assert_close(ops.soft_hit(s, pos, tau, k), want)


def test_soft_hit_constant_scores_and_monotone():
    assert torch.allclose(ops.soft_hit(torch.zeros(2, 5, dtype=torch.float64), 0, 0.3),
                          torch.full((2,), 0.2, dtype=torch.float64))
    rest = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    own = torch.linspace(-4, 4, 81, dtype=torch.float64)
    dh = ops.soft_hit(torch.cat([own[:, None], rest.expand(81, 4)], 1), 0, 0.5)
    assert (dh.diff() >= -1e-15).all()


# ---- autograd, registration, compile --------------------------------------------------------------------

def test_gradcheck():
    gen = torch.Generator().manual_seed(10)
    s = separated(3, 7, gap=0.3, seed=10).requires_grad_()
    gains = torch.rand(3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    disc = torch.rand(4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.neuralsort(x, 0.7, 5), (s,))
    assert torch.autograd.gradcheck(lambda x, g, d: ops.soft_rank_gain(x, g, 0.7, 4, d), (s, gains, disc))
    assert torch.autograd.gradcheck(lambda x: ops.soft_hit(x, 2, 0.7, 2), (s,))


def _sample_args(device):
    gen = torch.Generator().manual_seed(11)
    s = torch.randint(-3, 4, (4, 9), generator=gen).double().to(device)
    gains = torch.rand(4, 9, dtype=torch.float64, generator=gen).to(device)
    disc = torch.rand(3, dtype=torch.float64, generator=gen).to(device)
    return s, gains, disc


@pytest.mark.skipif(not has_op("neuralsort"), reason="compiled library unavailable")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    s, gains, disc = _sample_args(device)
    p = torch.ops.fairlit.neuralsort(s, 0.5, 3)
    _, lse, dots = torch.ops.fairlit.soft_rank_gain(s, gains, 0.5, 3, disc)
    cases = [
        (torch.ops.fairlit.neuralsort.default, (s.requires_grad_(), 0.5, 3)),
        (torch.ops.fairlit.neuralsort_backward.default, (torch.randn_like(p), p, s.detach(), 0.5)),
        (torch.ops.fairlit.soft_rank_gain.default,
         (s, gains.requires_grad_(), 0.5, 3, disc.requires_grad_())),
        (torch.ops.fairlit.soft_rank_gain_backward.default,
         (torch.randn(4, dtype=torch.float64, device=device), s.detach(), gains.detach(), 0.5, 3,
          disc.detach(), lse, dots)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compile_fullgraph_matches_eager():
    s, gains, _ = _sample_args("cpu")

    def loss(x, g):
        return ops.neuralsort(x, 0.5, 3, validate=False).square().sum() + ops.soft_ndcg(x, g, 0.5, 4,
                                                                                        validate=False).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x1, x2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    l1, l2 = loss(x1, gains), compiled(x2, gains)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(x1.grad, x2.grad)


# ---- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda s: ops.neuralsort(s, 0.0), "tau"),
    (lambda s: ops.neuralsort(s, -1.0), "tau"),
    (lambda s: ops.neuralsort(s, 1.0, 6), "k"),
    (lambda s: ops.neuralsort(s, 1.0, 0), "k"),
    (lambda s: ops.neuralsort(s.clone().index_fill_(1, torch.tensor([2]), float("nan")), 1.0), "NaN"),
    (lambda s: ops.neuralsort(s[0], 1.0), "scores"),
    (lambda s: ops.soft_rank_gain(s, s[:, :3], 1.0, 2), "gains"),
    (lambda s: ops.soft_rank_gain(s, s.float(), 1.0, 2), "gains"),
    (lambda s: ops.soft_rank_gain(s, s, 1.0, 2, torch.ones(3, dtype=s.dtype)), "discounts"),
    (lambda s: ops.soft_rank_gain(s, s.index_fill(1, torch.tensor([0]), float("nan")), 1.0, 2), "`gains` contains NaN"),
    (lambda s: ops.soft_rank_gain(s, s, 1.0, 2, torch.tensor([1.0, float("inf")], dtype=s.dtype)),
     "`discounts` contains inf"),
    (lambda s: ops.soft_ndcg(s, s.abs().index_fill(1, torch.tensor([0]), float("nan")), 1.0, 3),
     "`relevance` contains NaN"),
    (lambda s: ops.soft_hit(s, torch.tensor([0, 5]), 1.0), "pos_index"),
    (lambda s: ops.soft_hit(s, 7, 1.0), "pos_index"),
])
def test_errors_name_the_argument(call, match):
    s = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        call(s)


@pytest.mark.skipif(not has_op("neuralsort"), reason="compiled library unavailable")
def test_kernel_rejects_nan_without_validation():
    s = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.fairlit.neuralsort(s, 1.0, 2)


# ---- CUDA: every kernel path (warp, block, tiled) against the CPU kernel ---------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("items", [1, 5, 64, 101, 1001, 9000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(items, dtype):
    gen = torch.Generator().manual_seed(12)
    rows, k = (3, min(items, 20)) if items > 1000 else (13, min(items, 7))
    s = torch.randint(-20, 20, (rows, items), generator=gen).to(dtype) / 4  # ties included
    gains = torch.rand(rows, items, generator=gen).to(dtype)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-3)
    if dtype == torch.float32:
        tol = dict(rtol=1e-4, atol=1e-5)
    results = []
    for device in ("cpu", "cuda"):
        x = s.to(device).requires_grad_()
        g = gains.to(device).requires_grad_()
        p = ops.neuralsort(x, 0.7, k)
        out = ops.soft_rank_gain(x, g, 0.7, k)
        w = torch.linspace(-1, 1, p.numel(), device=device).reshape(p.shape).to(dtype)
        gp, = torch.autograd.grad((p * w).sum(), x)
        gs, gg = torch.autograd.grad(out.sum(), (x, g))
        results.append([t.detach().cpu().double() for t in (p, out, gp, gs, gg)])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **tol)
