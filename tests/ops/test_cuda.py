"""CUDA kernels (csrc/cuda/*.cu) vs fairlit.ops.reference on CPU.

Values and gradients in every dtype, empty groups / N = 0 / repeated ids, chunk and item-tile
boundaries, ties, exclusions and padding; bitwise run-to-run determinism; opcheck on CUDA inputs; and
out-of-range ids with validate=False, which the kernels must skip without faulting the device.
"""
import pytest
import torch
import torch.nn.functional as F

from fairlit import ops
from fairlit.ops import _library, reference
from tests.ops.helpers import DTYPES, HAS_OP, tol

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not HAS_OP, reason="needs the compiled library"),
]

CHUNK_ROWS = 2048          # kChunkRows in group_segment.cu
TILE_ELEMS = (256 << 20) // 8  # B * T of one item tile in ranking.cu


def _rand(shape, dtype, seed, *, magnitude=1.0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    if noncontig:
        return (torch.randn((*shape, 2), generator=g, dtype=torch.float64) * magnitude)[..., 1].to(dtype)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * magnitude).to(dtype)


def _ints(shape, lo, hi, seed, dtype=torch.int64):
    return torch.randint(lo, hi, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _groups(n, g, seed):
    # The last group stays empty when G > 1; ids repeat.
    return _ints((n,), 0, max(g - 1, 1), seed)


def _exclusions(b, i, seed, max_len=6):
    lengths = _ints((b,), 0, min(i, max_len) + 1, seed + 3)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return indptr, _ints((int(indptr[-1]),), 0, i, seed + 4)    # repeated ids allowed


def _csr_rows(indptr, indices, rows):
    parts = [indices[int(indptr[r]):int(indptr[r + 1])] for r in rows]
    lengths = torch.tensor([len(p) for p in parts], dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]), torch.cat(parts)


def _cuda(*tensors):
    return tuple(None if t is None else t.cuda() for t in tensors)


def test_every_op_has_a_cuda_kernel():
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fairlit::")]
    assert len(names) >= 15, names  # every op of csrc/ops.cpp is registered
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name
    assert ops.backend("group_sum") == "cuda"


def test_cuda_inputs_use_the_reference_when_the_library_has_no_cuda_kernels(monkeypatch):
    # What a library built without the toolkit does (fairlit/ops/_library.py): CUDA inputs go to the reference.
    called = []
    real = reference.group_sum
    monkeypatch.setattr(reference, "group_sum", lambda *a, **k: called.append(1) or real(*a, **k))
    values, groups = _rand((50, 3), torch.float32, 0).cuda(), _ints((50,), 0, 4, 1).cuda()
    with_kernels = ops.group_sum(values, groups, 4)
    assert not called
    monkeypatch.setattr(_library, "CUDA_KERNELS", False)
    fallback = ops.group_sum(values, groups, 4)
    assert called and fallback.is_cuda
    torch.testing.assert_close(fallback, with_kernels)


# ---- group_segment ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d, g", [(0, None, 3), (0, 4, 1), (1, None, 1), (300, None, 7), (300, 5, 7),
                                     (300, 40, 3), (5000, None, 3), (5000, 3, 1), (9000, 1, 200), (50, 0, 4)])
@pytest.mark.parametrize("noncontig", [False, True])
def test_group_sum_and_mean_match_reference(dtype, n, d, g, noncontig):
    # n = 5000 / 9000 cross the 2048-row chunks (several chunks per group); d = 40 spans two column tiles.
    values = _rand((n,) if d is None else (n, d), dtype, n + g, noncontig=noncontig)
    groups = _groups(n, g, n)
    values_c, groups_c = _cuda(values, groups)
    scale = max(n, 1) ** 0.5
    out = ops.group_sum(values_c, groups_c, g)
    assert out.dtype == dtype and out.is_cuda
    torch.testing.assert_close(out.cpu(), reference.group_sum(values, groups, g), **tol(dtype, scale))
    mean, count = ops.group_mean(values_c, groups_c, g)
    ref_mean, ref_count = reference.group_mean(values, groups, g)
    torch.testing.assert_close(mean.cpu(), ref_mean, **tol(dtype, 4))
    assert torch.equal(count.cpu(), ref_count)
    assert not torch.isnan(mean).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d", [(0, None), (300, None), (300, 6), (4500, 3)])
def test_group_sum_and_mean_gradients_match_reference(dtype, n, d):
    g = 5
    values = _rand((n,) if d is None else (n, d), dtype, 11 + n)
    groups = _groups(n, g, 3)
    upstream = _rand((g,) if d is None else (g, d), dtype, 5)
    for op, ref in ((ops.group_sum, reference.group_sum), (lambda *a: ops.group_mean(*a)[0],
                                                            lambda *a: reference.group_mean(*a)[0])):
        x = values.cuda().requires_grad_()
        (grad,) = torch.autograd.grad(op(x, groups.cuda(), g), x, upstream.cuda())
        x_ref = values.clone().requires_grad_()
        (ref_grad,) = torch.autograd.grad(ref(x_ref, groups, g), x_ref, upstream)
        torch.testing.assert_close(grad.cpu(), ref_grad, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, m", [(0, None), (0, 3), (1, None), (7, 1), (300, 4), (300, 50), (5000, 2)])
@pytest.mark.parametrize("weighted", [False, True])
def test_group_bpr_loss_and_gradients_match_reference(dtype, n, m, weighted):
    # m = 50 uses a full warp per row in the backward kernel; n = 5000 crosses chunks.
    g = 6
    pos = _rand((n,), dtype, 1, magnitude=3.0)
    neg = _rand((n,) if m is None else (n, m), dtype, 2, magnitude=3.0, noncontig=True)
    weight = _rand((n,), dtype, 3).abs() if weighted else None
    groups = _groups(n, g, 4)
    leaves = [pos, neg] + ([weight] if weighted else [])
    cuda_leaves = [t.cuda().requires_grad_() for t in leaves]
    ref_leaves = [t.clone().requires_grad_() for t in leaves]

    def args(ls):
        return ls[0], ls[1], groups.to(ls[0].device), g, (ls[2] if weighted else None)

    loss, count = ops.group_bpr_loss(*args(cuda_leaves))
    ref_loss, ref_count = reference.group_bpr_loss(*args(ref_leaves))
    expected_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert loss.dtype == expected_dtype and ref_loss.dtype == expected_dtype
    torch.testing.assert_close(loss.cpu(), ref_loss, **tol(dtype, max(n, 1) ** 0.5))
    assert torch.equal(count.cpu(), ref_count)
    if n == 0:
        return
    upstream = _rand((g,), expected_dtype, 9)
    grads = torch.autograd.grad(loss, cuda_leaves, upstream.cuda())
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves, upstream)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.cpu(), want, **tol(dtype, 4))


def test_group_bpr_loss_backward_op_matches_formula():
    pos = _rand((40,), torch.float64, 1)
    neg = _rand((40, 5), torch.float64, 2)
    weight = _rand((40,), torch.float64, 3)
    groups = _groups(40, 4, 4)
    grad_loss = _rand((4,), torch.float64, 5)
    grad_pos, grad_neg = torch.ops.fairlit.group_bpr_loss_backward(*_cuda(grad_loss, pos, neg, groups, weight))
    expected_neg = (grad_loss[groups] * weight / 5).unsqueeze(1) * torch.sigmoid(neg - pos.unsqueeze(1))
    torch.testing.assert_close(grad_neg.cpu(), expected_neg)
    torch.testing.assert_close(grad_pos.cpu(), -expected_neg.sum(1))


@pytest.mark.parametrize("d", [None, 8])
def test_group_reductions_are_bitwise_reproducible(d):
    n, g = 300_000, 37
    values = _rand((n,) if d is None else (n, d), torch.float32, 0, magnitude=100.0).cuda()
    groups = _ints((n,), 0, g, 1).cuda()
    first = ops.group_sum(values, groups, g)
    mean_first = ops.group_mean(values, groups, g)[0]
    for _ in range(3):
        torch.cuda.synchronize()
        assert torch.equal(ops.group_sum(values, groups, g), first)
        assert torch.equal(ops.group_mean(values, groups, g)[0], mean_first)
    pos, neg = _rand((n,), torch.float32, 2).cuda(), _rand((n, 5), torch.float32, 3).cuda()
    weight = _rand((n,), torch.float32, 4).abs().cuda()
    loss_first = ops.group_bpr_loss(pos, neg, groups, g, weight)[0]
    for _ in range(3):
        assert torch.equal(ops.group_bpr_loss(pos, neg, groups, g, weight)[0], loss_first)


# ---- ranking ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, i, c, d", [(0, 5, 3, 4), (4, 5, 0, 4), (6, 9, 7, 1), (6, 9, 7, 7), (5, 30, 20, 64),
                                        (3, 11, 13, 100)])
@pytest.mark.parametrize("shared", [False, True])
def test_score_candidates_and_gradients_match_reference(dtype, b, i, c, d, shared):
    user = _rand((b, d), dtype, 1, noncontig=True)
    item = _rand((i, d), dtype, 2)
    cand = _ints((c,) if shared else (b, c), 0, i, 3)        # repeated ids: items accumulate gradients
    u, it = user.cuda().requires_grad_(), item.cuda().requires_grad_()
    out = ops.score_candidates(u, it, cand.cuda())
    u_ref, it_ref = user.clone().requires_grad_(), item.clone().requires_grad_()
    ref = reference.score_candidates(u_ref, it_ref, cand)
    assert out.shape == (b, c) and out.dtype == dtype
    torch.testing.assert_close(out.cpu(), ref, **tol(dtype, d ** 0.5))
    if out.numel():
        upstream = _rand((b, c), dtype, 4)
        grads = torch.autograd.grad(out, (u, it), upstream.cuda())
        ref_grads = torch.autograd.grad(ref, (u_ref, it_ref), upstream)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got.cpu(), want, **tol(dtype, 4 * (b * c + 1) ** 0.5))


def test_score_candidates_item_gradient_is_bitwise_reproducible():
    user = _rand((512, 32), torch.float32, 0).cuda()
    item = _rand((50, 32), torch.float32, 1).cuda()
    cand = _ints((512, 100), 0, 50, 2).cuda()
    grad = _rand((512, 100), torch.float32, 3).cuda()
    first = torch.ops.fairlit.score_candidates_backward(grad, user, item, cand)
    for _ in range(3):
        again = torch.ops.fairlit.score_candidates_backward(grad, user, item, cand)
        assert all(torch.equal(a, b) for a, b in zip(again, first))
    # An item no candidate names gets an exactly zero gradient row.
    unseen = torch.ops.fairlit.score_candidates_backward(grad, user, item, cand.clamp(max=48))[1]
    assert torch.equal(unseen[49], torch.zeros_like(unseen[49]))


def _int_embeddings(b, i, d, dtype, seed, spread=3):
    # Integers: every score is exact (in the accumulation type) and ties are frequent.
    return _ints((b, d), -spread + 1, spread, seed).to(dtype), _ints((i, d), -spread + 1, spread, seed + 1).to(dtype)


def _assert_topk_equal(got, want):
    values, ids = got
    ref_values, ref_ids = want
    assert values.dtype == ref_values.dtype and ids.dtype == torch.int64
    assert torch.equal(ids.cpu(), ref_ids)
    assert torch.equal(values.cpu(), ref_values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["full", "shared", "rows"])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("b, i, k", [(0, 10, 3), (7, 1, 1), (7, 40, 1), (7, 40, 5), (7, 40, 30), (5, 20, 45)])
def test_topk_scores_matches_reference_exactly(dtype, mode, exclude, b, i, k):
    # Ties via integer embeddings; k > C (25 candidates) and k > I pad with (-inf, -1).
    user, item = _int_embeddings(b, i, 3, dtype, b * 100 + i)
    cand = {"full": None, "shared": _ints((25,), 0, i, 5), "rows": _ints((b, 25), 0, i, 6)}[mode]
    excl = _exclusions(b, i, 7) if exclude else (None, None)
    got = ops.topk_scores(*_cuda(user, item), k, *_cuda(cand, *excl))
    assert got[0].shape == (b, k)
    _assert_topk_equal(got, reference.topk_scores(user, item, k, cand, *excl))


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_scores_across_item_tiles(dtype):
    # B = 4096 gives 8192-item tiles, so 17_500 items take three tiles; ties between items of different
    # tiles must still go to the lower id, and exclusions sit on the tile boundaries too.
    b, i, k = 4096, 2 * (TILE_ELEMS // 4096) + 1116, 50
    user, item = _int_embeddings(b, i, 4, dtype, 0, spread=40)
    indptr, indices = _exclusions(b, i, 1, max_len=40)
    boundary = torch.tensor([8191, 8192, 16383, 16384, 0, i - 1])
    lengths = indptr.diff() + len(boundary)
    indices = torch.cat([torch.cat([indices[int(indptr[r]):int(indptr[r + 1])], boundary]) for r in range(b)])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    values, ids = ops.topk_scores(*_cuda(user, item), k, None, *_cuda(indptr, indices))
    rows = list(range(0, b, 97)) + [b - 1]
    sub_indptr, sub_indices = _csr_rows(indptr, indices, rows)
    want = reference.topk_scores(user[rows], item, k, None, sub_indptr, sub_indices)
    _assert_topk_equal((values[rows], ids[rows]), want)
    assert not torch.isin(ids[rows].cpu(), boundary).any()


def test_topk_scores_signed_zero_ties_to_lower_id():
    user, item = torch.tensor([[1.0]]), torch.tensor([[-0.0], [0.0], [-1.0]])
    values, ids = ops.topk_scores(*_cuda(user, item), 3)
    assert ids.tolist() == [[0, 1, 2]]
    assert values.tolist() == [[0.0, 0.0, -1.0]]


def test_topk_scores_infinite_scores_rank_above_exclusions():
    for dtype in DTYPES:
        user = torch.tensor([[1.0]], dtype=dtype)
        item = torch.tensor([[float("-inf")], [2.0], [float("inf")], [float("-inf")]], dtype=dtype)
        # validate=False: the wrapper rejects inf embeddings; this checks the kernels' order of infinite scores.
        got = ops.topk_scores(*_cuda(user, item), 4, None, *_cuda(torch.tensor([0, 1]), torch.tensor([0])),
                              validate=False)
        _assert_topk_equal(got, reference.topk_scores(user, item, 4, None, torch.tensor([0, 1]), torch.tensor([0])))


def _group_table(i, g, width, seed):
    ids = _ints((i, width), 0, g, seed)
    weights = _rand((i, width), torch.float32, seed + 1).abs() * (_ints((i, width), 0, 5, seed + 2) > 0)
    return ids, weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, i, q, k", [(0, 10, 5, 3), (7, 1, 1, 1), (7, 40, 25, 25), (300, 40, 25, 10),
                                        (65, 2000, 700, 10), (9, 5000, 3000, 64)])
@pytest.mark.parametrize("sigmoid, per_row", [(False, False), (True, True)])
def test_sampled_topk_group_stats_matches_reference(dtype, b, i, q, k, sigmoid, per_row):
    # Integer scores: exact in every dtype with many ties (order: score desc, position asc); ids repeat.
    user, item = _int_embeddings(b, i, 3, dtype, b + i)
    sampled = _ints((q,), 0, i, q)
    group_ids, group_weights = _group_table(i, 7, 3, k)
    got = ops.sampled_topk_group_stats(*_cuda(user, item, sampled), k, *_cuda(group_ids, group_weights), 7,
                                       "sigmoid" if sigmoid else "exposure", per_row)
    want = reference.sampled_topk_group_stats(user, item, sampled, k, group_ids, group_weights, 7, sigmoid, per_row)
    _assert_topk_equal(got[:2], want[:2])
    for a, w in zip(got[2:], want[2:]):
        assert a.dtype == torch.float64 and a.shape == w.shape
        torch.testing.assert_close(a.cpu(), w, rtol=1e-12, atol=1e-12)
    again = ops.sampled_topk_group_stats(*_cuda(user, item, sampled), k, *_cuda(group_ids, group_weights), 7,
                                         "sigmoid" if sigmoid else "exposure", per_row)
    assert all(torch.equal(x, y) for x, y in zip(got, again))        # deterministic: no atomics


def test_sampled_topk_group_stats_nan_and_inf_like_reference():
    for dtype in DTYPES:
        user = torch.tensor([[1.0]], dtype=dtype)
        item = torch.tensor([[3.0], [float("nan")], [3.0], [float("inf")], [float("-inf")], [float("nan")]], dtype=dtype)
        sampled = torch.tensor([5, 0, 1, 2, 3, 4, 1])
        group_ids, group_weights = _group_table(6, 3, 2, 0)
        got = ops.sampled_topk_group_stats(*_cuda(user, item, sampled), 7, *_cuda(group_ids, group_weights), 3,
                                           "sigmoid", True)
        want = reference.sampled_topk_group_stats(user, item, sampled, 7, group_ids, group_weights, 3, True, True)
        assert torch.equal(got[1].cpu(), want[1])
        torch.testing.assert_close(got[0].cpu(), want[0], equal_nan=True)
        torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-12, atol=1e-12)


# ---- sparse ----------------------------------------------------------------------------------------

def _csr(rows, cols, max_per_row, seed, dtype):
    lengths = _ints((rows,), 0, max_per_row + 1, seed)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    # max(cols, 1): randint needs a non-empty range even for no entries (cols = 0 has no entries).
    return indptr, _ints((int(indptr[-1]),), 0, max(cols, 1), seed + 1), _rand((int(indptr[-1]),), dtype, seed + 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, d, per_row", [(0, 4, 8, 3), (5, 0, 8, 0), (7, 9, 0, 4), (50, 40, 1, 6),
                                              (50, 40, 64, 6), (300, 200, 130, 20), (3000, 2000, 300, 3)])
def test_csr_matmul_and_gradient_match_reference(dtype, m, n, d, per_row):
    # d = 130 / 300 take two / three 128-column passes of a warp; 3000 rows span many blocks.
    indptr, indices, values = _csr(m, n, per_row if n else 0, m + d, dtype)
    x = _rand((n, d), dtype, 5, noncontig=True)
    x_c = x.cuda().requires_grad_()
    out = ops.csr_matmul(*_cuda(indptr, indices, values), x_c)
    want = reference.csr_matmul(indptr, indices, values, x)
    torch.testing.assert_close(out.cpu(), want, **tol(dtype, 4 * (per_row + 1) ** 0.5))
    if out.numel():
        upstream = _rand((m, d), dtype, 6)
        (grad,) = torch.autograd.grad(out, x_c, upstream.cuda())
        x_ref = x.clone().requires_grad_()
        (want_grad,) = torch.autograd.grad(reference.csr_matmul(indptr, indices, values, x_ref), x_ref, upstream)
        torch.testing.assert_close(grad.cpu(), want_grad, **tol(dtype, 4 * (m * per_row / max(n, 1) + 1) ** 0.5))


def test_csr_matmul_is_bitwise_reproducible():
    indptr, indices, values = _cuda(*_csr(2000, 500, 40, 0, torch.float32))
    x = _rand((500, 64), torch.float32, 1).cuda()
    first = ops.csr_matmul(indptr, indices, values, x)
    assert all(torch.equal(first, ops.csr_matmul(indptr, indices, values, x)) for _ in range(3))


# ---- train_step --------------------------------------------------------------------------------------

def _adam_state(m, n, d, dtype, seed, steps):
    gen = torch.Generator().manual_seed(seed)
    tables = [torch.randn(r, d, generator=gen, dtype=torch.float64).to(dtype) for r in (m, n)]
    moments = [torch.rand(t.shape, generator=gen, dtype=torch.float64).to(dtype) * 0.01 * (steps > 0)
               for t in (tables[0], tables[0], tables[1], tables[1])]
    return tables + moments + [torch.tensor(float(steps)), torch.tensor(float(steps))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s, b, m, d, users, items", [(1, 1, 1, 1, 1, 1), (2, 7, 3, 33, 4, 5), (1, 3000, 1, 32, 50, 80),
                                                     (3, 64, 2, 100, 943, 1682)])
@pytest.mark.parametrize("options", ["plain", "weighted_reg_decay_sigmoid"])
def test_bpr_adam_step_matches_reference(dtype, s, b, m, d, users, items, options):
    # Few rows and large batches: many batch rows add into one gradient row (atomics).
    extra = options != "plain"
    state = _adam_state(users, items, d, dtype, 0, steps=5 * extra)
    want = [t.clone() for t in state]
    got = [t.cuda() for t in state]
    u, p, n = _ints((s, b), 0, users, 1), _ints((s, b), 0, items, 2), _ints((s, b, m), 0, items, 3)
    w = _rand((s, b), dtype, 4).abs() if extra else None
    hyper = dict(reg_weight=0.2 * extra, sigmoid_scores=extra, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-4,
                 weight_decay=0.03 * extra)
    losses = ops.bpr_adam_step(*got, *_cuda(u, p, n, w), **hyper)
    want_losses = reference.bpr_adam_step(*want, u, p, n, w, *hyper.values())
    assert losses.is_cuda and got[6].is_cuda
    torch.testing.assert_close(losses.cpu(), want_losses, **tol(dtype, 10))
    for g, e in zip(got, want):
        torch.testing.assert_close(g.cpu(), e, **tol(dtype, 10))


def test_bpr_adam_step_is_bitwise_reproducible_in_deterministic_mode(deterministic_algorithms):
    # 1000 batch rows on 3 users and 4 items: index_add_ sums many terms into each gradient row.
    runs = []
    for _ in range(3):
        state = [t.cuda() for t in _adam_state(3, 4, 40, torch.float32, 0, steps=2)]
        losses = ops.bpr_adam_step(*state, *_cuda(_ints((2, 1000), 0, 3, 1), _ints((2, 1000), 0, 4, 2),
                                                  _ints((2, 1000, 2), 0, 4, 3)), lr=0.01)
        runs.append([losses, *state])
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))


# ---- opcheck ----------------------------------------------------------------------------------------

def test_opcheck_on_cuda():
    v = _rand((40, 3), torch.float64, 0).cuda().requires_grad_()
    g = _ints((40,), 0, 5, 1).cuda()
    pos = _rand((40,), torch.float64, 2).cuda().requires_grad_()
    neg = _rand((40, 4), torch.float64, 3).cuda().requires_grad_()
    w = _rand((40,), torch.float64, 4).abs().cuda().requires_grad_()
    torch.library.opcheck(torch.ops.fairlit.group_sum, (v, g, 6))
    torch.library.opcheck(torch.ops.fairlit.group_sum, (v[:, 0], g, 6))
    torch.library.opcheck(torch.ops.fairlit.group_mean, (v, g, 6))
    torch.library.opcheck(torch.ops.fairlit.group_bpr_loss, (pos, neg, g, 6, w))
    torch.library.opcheck(torch.ops.fairlit.group_bpr_loss, (pos.float(), neg.float(), g, 6, None))
    torch.library.opcheck(torch.ops.fairlit.group_bpr_loss_backward,
                          (torch.randn(6, dtype=torch.float64, device="cuda"), pos.detach(), neg.detach(), g,
                           w.detach()))
    user = _rand((5, 4), torch.float64, 5).cuda().requires_grad_()
    item = _rand((9, 4), torch.float64, 6).cuda().requires_grad_()
    rows = _ints((5, 6), 0, 9, 7).cuda()
    torch.library.opcheck(torch.ops.fairlit.score_candidates, (user, item, rows))
    torch.library.opcheck(torch.ops.fairlit.score_candidates, (user, item, rows[0]))
    torch.library.opcheck(torch.ops.fairlit.score_candidates_backward,
                          (torch.randn(5, 6, dtype=torch.float64, device="cuda"), user.detach(), item.detach(), rows))
    indptr, indices = _cuda(*_exclusions(5, 9, 0))
    for args in ((user.detach(), item.detach(), 3, None, None, None),
                 (user.detach().float(), item.detach().float(), 3, rows, indptr, indices),
                 (user.detach().half(), item.detach().half(), 12, None, indptr, indices),
                 (user.detach(), item.detach(), 12, rows[0], indptr, indices)):
        torch.library.opcheck(torch.ops.fairlit.topk_scores, args)
    csr = _cuda(*_csr(6, 9, 4, 8, torch.float64))
    csr_t = ops.csr_transpose(*csr, 9)
    x = _rand((9, 5), torch.float64, 9).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.fairlit.csr_matmul, (*csr, x, *csr_t))
    group_ids, group_weights = _cuda(*_group_table(9, 4, 2, 0))
    for k, sigmoid, per_row in ((1, False, False), (4, True, True)):
        torch.library.opcheck(torch.ops.fairlit.sampled_topk_group_stats,
                              (user.detach(), item.detach(), rows[0], k, group_ids, group_weights, 4, sigmoid, per_row))
    state = [t.cuda() for t in _adam_state(5, 9, 4, torch.float32, 0, steps=2)]
    torch.library.opcheck(torch.ops.fairlit.bpr_adam_step,
                          (*state, rows[:, :2] % 5, rows[:, 2:4], rows[:, 4:, None], torch.rand(5, 2, device="cuda"),
                           0.1, True, 0.01, 0.9, 0.999, 1e-8, 0.01))


# ---- out-of-range ids with validate=False: skipped, never dereferenced ------------------------------
# (Last in the file: a device fault would poison the CUDA context for every later test.)

BAD_GROUP_IDS = [-1, 6, 1000, 2**40, -(2**40)]


def test_out_of_range_group_ids_are_skipped():
    n, g = 3000, 6
    groups = _ints((n,), 0, g, 0)
    groups[::7] = torch.tensor(BAD_GROUP_IDS).repeat(n // 7 // len(BAD_GROUP_IDS) + 1)[: len(groups[::7])]
    ok = (groups >= 0) & (groups < g)
    values = _rand((n, 3), torch.float32, 1)
    values_cuda = values.cuda().requires_grad_()
    out = ops.group_sum(values_cuda, groups.cuda(), g, validate=False)
    mean, count = ops.group_mean(values_cuda, groups.cuda(), g, validate=False)
    pos, neg = _rand((n,), torch.float32, 2).cuda().requires_grad_(), _rand((n, 4), torch.float32, 3).cuda()
    neg.requires_grad_()
    weight = _rand((n,), torch.float32, 4).cuda().requires_grad_()
    loss, bpr_count = ops.group_bpr_loss(pos, neg, groups.cuda(), g, validate=False)
    grad_pos, grad_neg = torch.autograd.grad(loss.sum(), (pos, neg))
    # The backward formulas index per-group gradients by the rows' ids: bad rows get 0 and are never indexed.
    per_group = torch.arange(1.0, g + 1, device="cuda")
    (grad_values,) = torch.autograd.grad((out.sum(1) * per_group).sum() + (mean.sum(1) * per_group).sum(),
                                         values_cuda)
    weighted, _ = ops.group_bpr_loss(pos, neg, groups.cuda(), g, weight, validate=False)
    (grad_weight,) = torch.autograd.grad((weighted * per_group).sum(), weight)
    torch.cuda.synchronize()
    good_ids = groups[ok]
    scale = per_group.cpu() * (1 + 1 / torch.bincount(good_ids, minlength=g).clamp(min=1))
    torch.testing.assert_close(grad_values.cpu()[ok], scale[good_ids].unsqueeze(1).expand(-1, 3))
    unweighted = F.softplus(neg.detach() - pos.detach().unsqueeze(1)).mean(1).cpu()
    torch.testing.assert_close(grad_weight.cpu()[ok], unweighted[ok] * per_group.cpu()[good_ids])
    assert (grad_values.cpu()[~ok] == 0).all() and (grad_weight.cpu()[~ok] == 0).all()
    torch.testing.assert_close(out.cpu(), reference.group_sum(values[ok], groups[ok], g))
    torch.testing.assert_close(mean.cpu(), reference.group_mean(values[ok], groups[ok], g)[0])
    assert torch.equal(count.cpu(), torch.bincount(groups[ok], minlength=g))
    assert torch.equal(bpr_count.cpu(), count.cpu())
    torch.testing.assert_close(loss.cpu(), reference.group_bpr_loss(pos.detach().cpu()[ok], neg.detach().cpu()[ok],
                                                                   groups[ok], g)[0])
    assert torch.isfinite(grad_pos).all() and torch.isfinite(grad_neg).all()
    bad = (~ok).cuda()
    assert (grad_pos[bad] == 0).all() and (grad_neg[bad] == 0).all()


def test_out_of_range_item_ids_are_skipped():
    b, i, d = 6, 10, 4
    user, item = _rand((b, d), torch.float32, 0).cuda(), _rand((i, d), torch.float32, 1).cuda()
    cand = _ints((b, 5), 0, i, 2)
    cand[:, 0] = torch.tensor([-1, i, i + 100, 2**40, -(2**40), 2**33])
    cand = cand.cuda()
    u, it = user.clone().requires_grad_(), item.clone().requires_grad_()
    scores = ops.score_candidates(u, it, cand, validate=False)
    grads = torch.autograd.grad(scores.sum(), (u, it))
    torch.cuda.synchronize()
    assert torch.isfinite(scores).all() and all(torch.isfinite(t).all() for t in grads)
    assert (scores[:, 0] == 0).all()
    torch.testing.assert_close(scores[:, 1:], reference.score_candidates(user, item, cand[:, 1:]))
    ref_grads = torch.autograd.grad(reference.score_candidates(u, it, cand[:, 1:]).sum(), (u, it))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)

    # topk: bad candidates are never returned; bad exclusion entries and a malformed indptr are ignored.
    indptr = torch.tensor([0, 2, 1, 5, 5, 9, 30]).cuda()          # decreasing, and past nnz
    indices = torch.tensor([-5, 3, i, 2**40, 1, 2, -1, 7, 0, 4, 9]).cuda()
    for dtype in DTYPES:
        for candidates in (None, cand, cand[0]):
            values, ids = ops.topk_scores(user.to(dtype), item.to(dtype), 8, candidates, indptr, indices,
                                          validate=False)
            torch.cuda.synchronize()
            assert ((ids >= -1) & (ids < i)).all()
            assert not torch.isnan(values.float()).any()
            assert torch.isneginf(values[ids == -1].float()).all()
    torch.cuda.synchronize()


def test_out_of_range_sampled_and_group_ids_are_skipped():
    # Sampled ids outside [0, I) are never picked (missing slots are (-inf, -1)); group ids outside [0, G) add nothing.
    user, item = _rand((4, 8), torch.float32, 0), _rand((30, 8), torch.float32, 1)
    sampled = torch.tensor([3, -1, 30, 2**40, 7, 5])
    group_ids, group_weights = _group_table(30, 4, 2, 0)
    group_ids[7, 0], group_ids[5, 1] = 4, -3
    values, items, consumed, rows = ops.sampled_topk_group_stats(*_cuda(user, item, sampled), 5,
                                                                 *_cuda(group_ids, group_weights), 4, per_row=True,
                                                                 validate=False)
    torch.cuda.synchronize()
    assert sorted(items[:, :3].flatten().tolist()) == sorted([3, 5, 7] * 4)
    assert (items[:, 3:] == -1).all() and torch.isneginf(values[:, 3:]).all()
    valid = torch.tensor([3, 7, 5])
    keep = (group_ids[valid] >= 0) & (group_ids[valid] < 4)
    want = torch.zeros(4, dtype=torch.float64).index_add_(0, group_ids[valid][keep],
                                                          group_weights[valid][keep].double()) * 4
    torch.testing.assert_close(consumed.cpu(), want)
    torch.testing.assert_close(rows.sum(0).cpu(), want)


def test_out_of_range_csr_entries_are_skipped():
    # Column ids outside [0, N) contribute nothing; row spans past nnz or decreasing are clamped.
    x = _rand((5, 40), torch.float32, 0)
    indptr = torch.tensor([0, 3, 2, 6, 40])
    indices = torch.tensor([1, -1, 5, 2**40, 4, 0])
    values = torch.ones(6)
    t = ops.csr_transpose(torch.tensor([0, 6]), torch.zeros(6, dtype=torch.long), values, 5)  # shapes only
    out = ops.csr_matmul(*_cuda(indptr, indices, values, x), tuple(t_.cuda() for t_ in t), validate=False)
    torch.cuda.synchronize()
    want = torch.stack([x[1], torch.zeros(40), x[4] + x[0], torch.zeros(40)])
    torch.testing.assert_close(out.cpu(), want)


def test_out_of_range_batch_ids_are_skipped():
    # Rows with a bad user or positive are skipped (the kept rows match the reference with their weights and λ
    # rescaled to the op's 1/B); a bad negative inside a kept row is skipped without a fault.
    state = _adam_state(6, 8, 5, torch.float64, 0, steps=0)
    users = torch.tensor([[0, -1, 3, 2**40, 5, 1]])
    pos = torch.tensor([[1, 2, 8, 3, 7, 0]])
    neg = torch.tensor([[4, 5, 6, 7, 2, 3]])
    got = [t.cuda() for t in state]
    losses = ops.bpr_adam_step(*got, *_cuda(users, pos, neg), reg_weight=0.1, lr=0.01, validate=False)
    keep = torch.tensor([0, 4, 5])
    scale = len(keep) / users.shape[1]
    want = [t.clone() for t in state]
    want_loss = reference.bpr_adam_step(*want, users[:, keep], pos[:, keep], neg[:, keep, None],
                                        torch.full((1, len(keep)), scale, dtype=torch.float64), 0.1 * scale, False,
                                        0.01, 0.9, 0.999, 1e-8, 0.0)
    torch.testing.assert_close(losses.cpu(), want_loss)
    for g, e in zip(got, want):
        torch.testing.assert_close(g.cpu(), e)
    bad_neg = ops.bpr_adam_step(*got, *_cuda(users[:, :1], pos[:, :1], torch.tensor([[[1, -7]]])), validate=False)
    torch.cuda.synchronize()
    assert torch.isfinite(bad_neg).all() and torch.isfinite(got[0]).all()
