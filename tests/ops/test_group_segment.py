"""group_sum / group_mean / group_bpr_loss vs fairlit.ops.reference (values and gradients)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairlit import ops
from fairlit.ops import reference
from tests.conftest import devices
from tests.ops.helpers import HAS_OP, dtypes, magnitudes, make_values, tol

shapes = st.tuples(st.integers(0, 300), st.sampled_from([None, 1, 5]), st.integers(1, 12))


def _groups(n, g, seed, device="cpu", skip_last=True):
    # Leave the last group empty when G > 1, so empty groups are always exercised.
    hi = g - 1 if (skip_last and g > 1) else g
    return torch.randint(0, hi, (n,), generator=torch.Generator().manual_seed(seed + 1)).to(device)


@pytest.mark.parametrize("device", devices())
@given(shape=shapes, dtype=dtypes, noncontig=st.booleans(), magnitude=magnitudes, seed=st.integers(0, 2**16))
def test_group_sum_and_mean_match_reference(device, shape, dtype, noncontig, magnitude, seed):
    n, d, g = shape
    values = make_values((n,) if d is None else (n, d), dtype, noncontig=noncontig, magnitude=magnitude,
                         seed=seed, device=device)
    groups = _groups(n, g, seed, device)
    scale = magnitude * max(n, 1) ** 0.5
    torch.testing.assert_close(ops.group_sum(values, groups, g), reference.group_sum(values.cpu(), groups.cpu(), g)
                               .to(device), **tol(dtype, scale))
    mean, count = ops.group_mean(values, groups, g)
    ref_mean, ref_count = reference.group_mean(values.cpu(), groups.cpu(), g)
    torch.testing.assert_close(mean.cpu(), ref_mean, **tol(dtype, magnitude))
    assert torch.equal(count.cpu(), ref_count)
    assert not torch.isnan(mean).any()


@pytest.mark.parametrize("device", devices())
@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_group_sum_and_mean_gradients_match_reference(device, shape, dtype, seed):
    n, d, g = shape
    values = make_values((n,) if d is None else (n, d), dtype, noncontig=False, magnitude=1.0, seed=seed,
                         device=device).requires_grad_()
    groups = _groups(n, g, seed, device)
    for op, ref in ((lambda v: ops.group_sum(v, groups, g), lambda v: reference.group_sum(v, groups, g)),
                    (lambda v: ops.group_mean(v, groups, g)[0], lambda v: reference.group_mean(v, groups, g)[0])):
        out = op(values)
        upstream = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, values, upstream)
        (ref_grad,) = torch.autograd.grad(ref(values), values, upstream)
        torch.testing.assert_close(grad, ref_grad, **tol(dtype))


@pytest.mark.parametrize("device", devices())
@given(n=st.integers(0, 300), m=st.sampled_from([None, 1, 4]), g=st.integers(1, 6), dtype=dtypes,
       weighted=st.booleans(), noncontig=st.booleans(), magnitude=magnitudes, seed=st.integers(0, 2**16))
def test_group_bpr_loss_matches_reference(device, n, m, g, dtype, weighted, noncontig, magnitude, seed):
    pos = make_values((n,), dtype, noncontig=noncontig, magnitude=magnitude, seed=seed, device=device)
    neg = make_values((n,) if m is None else (n, m), dtype, noncontig=noncontig, magnitude=magnitude,
                      seed=seed + 7, device=device)
    weight = make_values((n,), dtype, noncontig=False, magnitude=1.0, seed=seed + 9, device=device).abs() \
        if weighted else None
    groups = _groups(n, g, seed, device)
    leaves = [t.requires_grad_() for t in (pos, neg) + ((weight,) if weighted else ())]
    loss, count = ops.group_bpr_loss(pos, neg, groups, g, weight)
    ref_loss, ref_count = reference.group_bpr_loss(pos, neg, groups, g, weight)
    assert loss.dtype == ref_loss.dtype
    torch.testing.assert_close(loss, ref_loss, **tol(dtype, magnitude * max(n, 1) ** 0.5))
    assert torch.equal(count, ref_count)
    if n:
        upstream = torch.randn_like(loss)
        grads = torch.autograd.grad(loss, leaves, upstream)
        ref_grads = torch.autograd.grad(ref_loss, leaves, upstream)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, **tol(dtype, 4 * magnitude))


def test_empty_group_mean_has_zero_gradient_and_no_nan():
    values = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    mean, count = ops.group_mean(values, torch.tensor([0, 0, 2]), 3)
    assert mean.tolist() == [1.5, 0.0, 4.0] and count.tolist() == [2, 0, 1]
    mean.sum().backward()
    assert values.grad.tolist() == [0.5, 0.5, 1.0]


def test_group_sum_hand_computed_and_bitwise_reproducible_across_thread_counts():
    torch.testing.assert_close(ops.group_sum(torch.tensor([[1.0, 2], [3, 4], [5, 6]]), torch.tensor([1, 0, 1]), 2),
                               torch.tensor([[3.0, 4], [6, 8]]))
    values = torch.randn(200_003, 3)
    groups = torch.randint(0, 17, (200_003,))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.group_sum(values, groups, 17)
        torch.set_num_threads(max(2, threads))
        many = ops.group_sum(values, groups, 17)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many) and torch.equal(many, ops.group_sum(values, groups, 17))


def test_group_bpr_loss_hand_computed():
    # softplus(1 - 0) = log(1 + e), softplus(-1) = log(1 + 1/e); sample 1 has weight 2
    loss, count = ops.group_bpr_loss(torch.tensor([0.0, 1.0]), torch.tensor([[1.0], [0.0]]), torch.tensor([0, 0]), 2,
                                     torch.tensor([1.0, 2.0]))
    expected = torch.log1p(torch.tensor(1.0).exp()) + 2 * torch.log1p(torch.tensor(-1.0).exp())
    torch.testing.assert_close(loss, torch.stack([expected, torch.tensor(0.0)]))
    assert count.tolist() == [2, 0]


def _samples():
    v = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randint(0, 5, (40,))
    pos = torch.randn(40, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(40, 4, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(40, dtype=torch.float64) + 0.1).requires_grad_()  # > 0 with margin: gradcheck perturbs it
    return v, g, pos, neg, w


def test_gradcheck_float64():
    v, g, pos, neg, w = _samples()
    assert torch.autograd.gradcheck(lambda x: ops.group_sum(x, g, 6), (v,))
    assert torch.autograd.gradcheck(lambda x: ops.group_mean(x, g, 6)[0], (v,))
    assert torch.autograd.gradcheck(lambda p, n, w: ops.group_bpr_loss(p, n, g, 6, w)[0], (pos, neg, w))
    assert torch.autograd.gradcheck(lambda p, n: ops.group_bpr_loss(p, n[:, 0], g, 6)[0], (pos, neg))


@pytest.mark.skipif(not HAS_OP, reason="opcheck needs the compiled library")
def test_opcheck():
    v, g, pos, neg, w = _samples()
    torch.library.opcheck(torch.ops.fairlit.group_sum, (v, g, 6))
    torch.library.opcheck(torch.ops.fairlit.group_sum, (v[:, 0], g, 6))
    torch.library.opcheck(torch.ops.fairlit.group_mean, (v, g, 6))
    torch.library.opcheck(torch.ops.fairlit.group_bpr_loss, (pos, neg, g, 6, w))
    torch.library.opcheck(torch.ops.fairlit.group_bpr_loss, (pos, neg, g, 6, None))
    torch.library.opcheck(torch.ops.fairlit.group_bpr_loss_backward,
                          (torch.randn(6, dtype=torch.float64), pos.detach(), neg.detach(), g, w.detach()))


def test_torch_compile_fullgraph_matches_eager():
    v, g, pos, neg, w = _samples()

    def fn(v, pos, neg, w):
        mean, count = ops.group_mean(v, g, 6)
        loss, _ = ops.group_bpr_loss(pos, neg, g, 6, w)
        return ops.group_sum(v, g, 6).sum() + mean.sum() + (loss / count.clamp(min=1)).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(v, pos, neg, w)
    torch.testing.assert_close(out, fn(v, pos, neg, w))
    grads = torch.autograd.grad(out, (v, pos, neg, w))
    ref = torch.autograd.grad(fn(v, pos, neg, w), (v, pos, neg, w))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)


NAN, INF, G2 = float("nan"), float("inf"), torch.tensor([0, 1])


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.group_sum(torch.ones(3), torch.tensor([0, 5, 1]), 3), ValueError, "`groups` contains group id 5"),
    (lambda: ops.group_sum(torch.ones(3), torch.tensor([0, -1, 1]), 3), ValueError, "expected ids in \\[0, 3\\)"),
    (lambda: ops.group_sum(torch.ones(3), torch.tensor([0, 1]), 3), ValueError, "`values` has 3 rows"),
    (lambda: ops.group_sum(torch.ones(3, dtype=torch.long), torch.tensor([0, 1, 1]), 3), TypeError,
     "`values` must be a floating tensor"),
    (lambda: ops.group_sum(torch.ones(3), torch.tensor([0, 1, 1], dtype=torch.int32), 3), TypeError,
     "`groups` must be an int64 tensor"),
    (lambda: ops.group_mean(torch.ones(3), torch.tensor([0, 1, 1]), 0), ValueError, "`num_groups` must be an int >= 1"),
    (lambda: ops.group_bpr_loss(torch.ones(3), torch.ones(2, 4), torch.tensor([0, 1, 1]), 2), ValueError,
     "`neg` has 2 rows"),
    (lambda: ops.group_bpr_loss(torch.ones(3), torch.ones(3, 4, dtype=torch.float64), torch.tensor([0, 1, 1]), 2),
     TypeError, "`neg` has dtype"),
    (lambda: ops.group_bpr_loss(torch.ones(3), torch.ones(3), torch.tensor([0, 1, 1]), 2, torch.ones(2)), ValueError,
     "`weight` must have shape"),
    (lambda: ops.group_bpr_loss(torch.tensor([NAN, 1.0]), torch.zeros(2), G2, 2), ValueError, "`pos` contains NaN"),
    (lambda: ops.group_bpr_loss(torch.zeros(2), torch.tensor([[INF], [0.0]]), G2, 2), ValueError, "`neg` contains inf"),
    (lambda: ops.group_bpr_loss(torch.zeros(2), torch.zeros(2), G2, 2, torch.tensor([NAN, 1.0])), ValueError,
     "`weight` contains NaN"),
    (lambda: ops.group_bpr_loss(torch.zeros(2), torch.zeros(2), G2, 2, torch.tensor([-1.0, 1.0])), ValueError,
     "`weight` must be >= 0, got min -1.0"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_ids_even_without_validation():
    with pytest.raises(RuntimeError, match="`groups` contains 7"):
        ops.group_sum(torch.ones(3), torch.tensor([0, 7, 1]), 3, validate=False)


def test_backward_gather_gives_out_of_range_ids_zero_and_never_indexes_them():
    # group_sum/group_mean's backward reads the per-group gradient at each row's id. The CUDA kernels skip
    # out-of-range ids under validate=False (tests/ops/test_cuda.py runs that end to end); here, the gather alone.
    from fairlit.ops.group_segment import _rows_of_groups

    grad = torch.tensor([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]])
    ids = torch.tensor([2, -1, 3, 0, 2**40, -(2**40), 1])
    expected = torch.tensor([[3.0, -3.0], [0, 0], [0, 0], [1.0, -1.0], [0, 0], [0, 0], [2.0, -2.0]])
    assert torch.equal(_rows_of_groups(grad, ids), expected)
    assert torch.equal(_rows_of_groups(grad[:, 0], ids), expected[:, 0])
    # a non-finite group gradient stays with its own rows
    grad[2, 0] = float("inf")
    assert torch.equal(_rows_of_groups(grad[:, 0], ids), torch.tensor([float("inf"), 0, 0, 1, 0, 0, 2]))
