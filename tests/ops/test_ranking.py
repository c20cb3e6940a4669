"""score_candidates / topk_scores / sampled_topk_group_stats vs fairlit.ops.reference."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairlit import ops
from fairlit.ops import reference
from tests.conftest import devices
from tests.ops.helpers import HAS_OP, dtypes, make_values, tol


def _int_embeddings(b, i, d, dtype, seed, device="cpu"):
    # Small integers: every score is exact in every dtype, and ties are frequent.
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-2, 3, (b, d), generator=g).to(dtype).to(device),
            torch.randint(-2, 3, (i, d), generator=g).to(dtype).to(device))


def _exclusions(b, i, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed + 3)
    lengths = torch.randint(0, min(i, 6) + 1, (b,), generator=g)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    indices = torch.randint(0, i, (int(indptr[-1]),), generator=g)    # repeated ids allowed
    return indptr.to(device), indices.to(device)


@pytest.mark.parametrize("device", devices())
@given(b=st.integers(0, 20), i=st.integers(1, 40), c=st.integers(0, 30), d=st.integers(1, 9), shared=st.booleans(),
       dtype=dtypes, noncontig=st.booleans(), seed=st.integers(0, 2**16))
def test_score_candidates_matches_reference(device, b, i, c, d, shared, dtype, noncontig, seed):
    user = make_values((b, d), dtype, noncontig=noncontig, magnitude=1.0, seed=seed, device=device)
    item = make_values((i, d), dtype, noncontig=noncontig, magnitude=1.0, seed=seed + 1, device=device)
    cand = torch.randint(0, i, (c,) if shared else (b, c), generator=torch.Generator().manual_seed(seed)).to(device)
    user.requires_grad_()
    item.requires_grad_()
    out = ops.score_candidates(user, item, cand)
    ref = reference.score_candidates(user, item, cand)
    torch.testing.assert_close(out, ref, **tol(dtype, d ** 0.5))
    if out.numel():
        upstream = torch.randn_like(out)
        grads = torch.autograd.grad(out, (user, item), upstream)
        ref_grads = torch.autograd.grad(ref, (user, item), upstream)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, **tol(dtype, 4 * (b * c + 1) ** 0.5))


@pytest.mark.parametrize("device", devices())
@given(b=st.integers(0, 12), i=st.integers(1, 60), d=st.integers(1, 6), k=st.integers(1, 70),
       mode=st.sampled_from(["full", "shared", "rows"]), exclude=st.booleans(), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_topk_scores_matches_reference_exactly(device, b, i, d, k, mode, exclude, dtype, seed):
    user, item = _int_embeddings(b, i, d, dtype, seed, device)
    gen = torch.Generator().manual_seed(seed)
    cand = {"full": None, "shared": torch.randint(0, i, (25,), generator=gen),
            "rows": torch.randint(0, i, (b, 25), generator=gen)}[mode]
    cand = None if cand is None else cand.to(device)
    excl = _exclusions(b, i, seed, device) if exclude else (None, None)
    values, indices = ops.topk_scores(user, item, k, cand, *excl)
    ref_values, ref_indices = reference.topk_scores(user.cpu(), item.cpu(), k, None if cand is None else cand.cpu(),
                                                    *(None if t is None else t.cpu() for t in excl))
    assert values.shape == (b, k) and indices.dtype == torch.int64
    assert torch.equal(indices.cpu(), ref_indices)
    assert torch.equal(values.cpu(), ref_values)


@given(b=st.integers(1, 6), i=st.integers(1, 5000), k=st.sampled_from([1, 20]), seed=st.integers(0, 2**16))
def test_topk_scores_random_floats_across_item_tiles(b, i, k, seed):
    # Random float scores (no ties) across several 4096-item tiles: ids must agree exactly.
    user = make_values((b, 8), torch.float64, noncontig=False, magnitude=1.0, seed=seed)
    item = make_values((i, 8), torch.float64, noncontig=True, magnitude=1.0, seed=seed + 1)
    indptr, indices = _exclusions(b, i, seed)
    values, ids = ops.topk_scores(user, item, k, None, indptr, indices)
    ref_values, ref_ids = reference.topk_scores(user, item, k, None, indptr, indices)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(values, ref_values)


@pytest.mark.parametrize("device", devices())
@given(b=st.integers(1, 24), i=st.integers(16, 9000), k=st.integers(1, 40),
       kind=st.sampled_from(["ties", "distinct", "overflow"]), excluded=st.integers(0, 400),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_topk_scores_long_rows_match_reference(device, b, i, k, kind, excluded, dtype, seed):
    # Full-ranking rows long enough for the CPU kernel's block path, over one or three 4096-item tiles: ties,
    # +-inf scores (finite embeddings whose products overflow), many exclusions, and a row left with fewer than k
    # eligible items (padding). Excluded items score -inf inside the kernel: they must still never appear.
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        user, item = _int_embeddings(b, i, 3, dtype, seed)
    elif kind == "distinct":   # multiples of 1/64 below 16: exact scores in float32 too, and rarely equal
        user, item = (torch.randint(-1000, 1001, (n, 8), generator=gen).to(dtype) / 64 for n in (b, i))
    else:                      # d = 1: u * max is +-inf (or 0), never NaN
        user, item = _int_embeddings(b, i, 1, dtype, seed)
        item[seed % i] = torch.finfo(dtype).max
    rows = [torch.randperm(i, generator=gen)[:max(i - k // 2, 0)]]          # row 0: fewer than k items left
    rows += [torch.randint(0, i, (int(torch.randint(0, excluded + 1, (1,), generator=gen)),), generator=gen)
             for _ in range(b - 1)]
    indptr = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    indices = torch.cat(rows)
    values, ids = ops.topk_scores(user.to(device), item.to(device), k, None, indptr.to(device), indices.to(device))
    ref_values, ref_ids = reference.topk_scores(user, item, k, None, indptr, indices)
    assert torch.equal(ids.cpu(), ref_ids)
    assert torch.equal(values.cpu(), ref_values)


def test_topk_scores_hand_computed_ties_exclusions_and_padding():
    user = torch.tensor([[1.0], [1.0]])
    item = torch.tensor([[2.0], [3.0], [3.0], [1.0]])
    values, ids = ops.topk_scores(user, item, 3, exclude_indptr=torch.tensor([0, 1, 4]),
                                  exclude_indices=torch.tensor([1, 0, 1, 2]))
    assert ids.tolist() == [[2, 0, 3], [3, -1, -1]]      # tie 3.0 -> lower id 1 is excluded for row 0
    assert values.tolist() == [[3.0, 2.0, 1.0], [1.0, float("-inf"), float("-inf")]]
    values, ids = ops.topk_scores(user, item, 5, candidates=torch.tensor([3, 2, 1]))
    assert ids.tolist() == [[1, 2, 3, -1, -1]] * 2       # tie between candidates 2 and 1 -> id 1 first


def _group_table(i, g, width, seed, device="cpu"):
    # Padded Â rows: `width` slots per item, some with weight 0 (padding), group ids repeat across slots.
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, g, (i, width), generator=gen)
    weights = torch.rand(i, width, generator=gen) * (torch.rand(i, width, generator=gen) > 0.2)
    return ids.to(device), weights.to(device)


@pytest.mark.parametrize("device", devices())
@given(b=st.integers(0, 150), i=st.integers(1, 40), q=st.integers(1, 30), d=st.integers(1, 5), k=st.integers(1, 30),
       g=st.integers(1, 7), width=st.integers(1, 3), sigmoid=st.booleans(), per_row=st.booleans(), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_sampled_topk_group_stats_matches_reference(device, b, i, q, d, k, g, width, sigmoid, per_row, dtype, seed):
    # Integer embeddings: exact scores with many ties; sampled ids repeat; b > 64 spans several row blocks.
    k = min(k, q)
    user, item = _int_embeddings(b, i, d, dtype, seed, device)
    sampled = torch.randint(0, i, (q,), generator=torch.Generator().manual_seed(seed + 7)).to(device)
    group_ids, group_weights = _group_table(i, g, width, seed, device)
    got = ops.sampled_topk_group_stats(user, item, sampled, k, group_ids, group_weights, g,
                                       "sigmoid" if sigmoid else "exposure", per_row)
    want = reference.sampled_topk_group_stats(user.cpu(), item.cpu(), sampled.cpu(), k, group_ids.cpu(),
                                              group_weights.cpu(), g, sigmoid, per_row)
    assert got[0].dtype == dtype and got[2].dtype == got[3].dtype == torch.float64
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-12, atol=1e-12)
    assert got[3].shape == ((b if per_row else 0), g)
    torch.testing.assert_close(got[3].cpu(), want[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", devices())
@given(b=st.integers(1, 70), q=st.integers(16, 400), k=st.integers(1, 30), kind=st.sampled_from(["ties", "distinct"]),
       special=st.sampled_from([None, "nan", "inf", "-inf"]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_sampled_topk_group_stats_long_rows_match_reference(device, b, q, k, kind, special, dtype, seed):
    # Rows of at least k blocks of 16 take the CPU kernel's block-maxima path (threshold, then the few blocks that
    # can hold the top k); rows with a NaN take the entry-by-entry scan. Ties, ±inf and NaN must order as the
    # reference's stable sort does either way.
    k = min(k, q)
    i = q + 7
    if kind == "ties":
        user, item = _int_embeddings(b, i, 3, dtype, seed)
    else:   # multiples of 1/64 below 16: exact scores in float32 too, and rarely equal
        gen = torch.Generator().manual_seed(seed)
        user, item = (torch.randint(-1000, 1001, (n, 8), generator=gen).to(dtype) / 64 for n in (b, i))
    if special is not None:
        item[seed % i] = float(special)                  # one item (0 · inf gives NaN too) in every row
    sampled = torch.randperm(i, generator=torch.Generator().manual_seed(seed + 1))[:q]
    group_ids, group_weights = _group_table(i, 5, 2, seed)
    got = ops.sampled_topk_group_stats(user.to(device), item.to(device), sampled.to(device), k,
                                       group_ids.to(device), group_weights.to(device), 5, per_row=True)
    want = reference.sampled_topk_group_stats(user, item, sampled, k, group_ids, group_weights, 5, False, True)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got[1].cpu(), want[1])
    torch.testing.assert_close(got[3].cpu(), want[3], rtol=1e-12, atol=1e-12)


def test_sampled_topk_group_stats_hand_computed_nan_inf_and_ties():
    # Scores by position: 3, NaN, 3, +inf, -inf, 1. Order: NaN, +inf, 3 (pos 0), 3 (pos 2), 1, -inf.
    user = torch.tensor([[1.0]])
    item = torch.tensor([[3.0], [float("nan")], [3.0], [float("inf")], [float("-inf")], [1.0]])
    sampled = torch.tensor([0, 1, 2, 3, 4, 5])
    group_ids = torch.tensor([[0, 1], [1, 0], [1, 0], [0, 0], [1, 0], [0, 1]])
    group_weights = torch.tensor([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.25, 0.75]])
    values, items, consumed, rows = ops.sampled_topk_group_stats(user, item, sampled, 5, group_ids, group_weights, 2,
                                                                 per_row=True)
    assert items.tolist() == [[1, 3, 0, 2, 5]]
    assert values[0, 2:].tolist() == [3.0, 3.0, 1.0] and values[0, 1] == float("inf") and values[0, 0].isnan()
    # NaN and inf slots add nothing; item 0 -> 0.5/0.5, item 2 -> group 1, item 5 -> 0.25/0.75.
    assert consumed.tolist() == [0.75, 2.25] and rows.tolist() == [[0.75, 2.25]]
    _, _, consumed, _ = ops.sampled_topk_group_stats(user, item, sampled, 3, group_ids, group_weights, 2, "sigmoid")
    torch.testing.assert_close(consumed, torch.tensor([0.5, 0.5], dtype=torch.float64) * torch.sigmoid(
        torch.tensor(3.0, dtype=torch.float64)))


def test_sampled_topk_group_stats_invariants_on_random_floats():
    # Exposure with row-normalised Â: Σ_g D_g = B·k. Relabelling groups permutes D; permuting the sample
    # (no ties among random floats) keeps the slots. Thread count does not change D bitwise.
    gen = torch.Generator().manual_seed(3)
    b, i, q, k, g = 300, 500, 200, 10, 6
    user, item = torch.randn(b, 16, generator=gen), torch.randn(i, 16, generator=gen)
    sampled = torch.randperm(i, generator=gen)[:q]
    group_ids = torch.randint(0, g, (i, 2), generator=gen)
    raw = torch.rand(i, 2, generator=gen, dtype=torch.float64)
    group_weights = raw / raw.sum(1, keepdim=True)
    _, items, consumed, rows = ops.sampled_topk_group_stats(user, item, sampled, k, group_ids, group_weights, g,
                                                            per_row=True)
    torch.testing.assert_close(consumed.sum(), torch.tensor(float(b * k), dtype=torch.float64))
    torch.testing.assert_close(rows.sum(0), consumed)
    perm = torch.randperm(g, generator=gen)
    relabelled = ops.sampled_topk_group_stats(user, item, sampled, k, perm[group_ids], group_weights, g)[2]
    torch.testing.assert_close(relabelled[perm], consumed)
    shuffled = ops.sampled_topk_group_stats(user, item, sampled[torch.randperm(q, generator=gen)], k, group_ids,
                                            group_weights, g)
    assert torch.equal(shuffled[1], items)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.sampled_topk_group_stats(user, item, sampled, k, group_ids, group_weights, g)[2]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, consumed)


def test_gradcheck_float64():
    user = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    item = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([[0, 3, 3, 8], [1, 1, 1, 1], [2, 0, 5, 5], [8, 7, 6, 5], [0, 0, 4, 4]])
    assert torch.autograd.gradcheck(lambda u, i: ops.score_candidates(u, i, rows), (user, item))
    assert torch.autograd.gradcheck(lambda u, i: ops.score_candidates(u, i, rows[0]), (user, item))


@pytest.mark.skipif(not HAS_OP, reason="the backward op is in the compiled library")
@pytest.mark.parametrize("device", devices())
def test_score_candidates_backward_takes_a_grad_of_another_dtype(device):
    user, item = _int_embeddings(4, 7, 3, torch.float32, 0, device)
    rows = torch.tensor([[0, 6, 6], [1, 2, 3], [5, 5, 5], [4, 0, 2]], device=device)
    grad = torch.linspace(-1, 1, 12, dtype=torch.float64, device=device).reshape(4, 3)
    got = torch.ops.fairlit.score_candidates_backward(grad, user, item, rows)
    want = torch.ops.fairlit.score_candidates_backward(grad.float(), user, item, rows)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w)


@pytest.mark.skipif(not HAS_OP, reason="opcheck needs the compiled library")
def test_opcheck():
    user = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    item = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    rows = torch.randint(0, 9, (5, 6))
    torch.library.opcheck(torch.ops.fairlit.score_candidates, (user, item, rows))
    torch.library.opcheck(torch.ops.fairlit.score_candidates, (user, item, rows[0]))
    torch.library.opcheck(torch.ops.fairlit.score_candidates_backward,
                          (torch.randn(5, 6, dtype=torch.float64), user.detach(), item.detach(), rows))
    indptr, indices = _exclusions(5, 9, 0)
    for args in ((user.detach(), item.detach(), 3, None, None, None),
                 (user.detach(), item.detach(), 3, rows, indptr, indices),
                 (user.detach(), item.detach(), 12, None, indptr, indices)):
        torch.library.opcheck(torch.ops.fairlit.topk_scores, args)
    group_ids, group_weights = _group_table(9, 4, 2, 0)
    for k, sigmoid, per_row in ((1, False, False), (4, True, True), (6, False, True)):
        torch.library.opcheck(torch.ops.fairlit.sampled_topk_group_stats,
                              (user.detach(), item.detach(), rows[0], k, group_ids, group_weights, 4, sigmoid, per_row))


def test_torch_compile_fullgraph_matches_eager():
    user = torch.randn(6, 4, requires_grad=True)
    item = torch.randn(30, 4, requires_grad=True)
    cand = torch.randint(0, 30, (6, 5))
    indptr, indices = _exclusions(6, 30, 1)

    def fn(user, item):
        _, top = ops.topk_scores(user, item, 3, None, indptr, indices)
        return ops.score_candidates(user, item, cand).sum() + ops.score_candidates(user, item, top).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(user, item)
    torch.testing.assert_close(out, fn(user, item))

    group_ids, group_weights = _group_table(30, 3, 2, 1)

    def signal(user, item):
        values, items, consumed, rows = ops.sampled_topk_group_stats(user, item, cand[0], 3, group_ids, group_weights,
                                                                     3, "sigmoid", per_row=True)
        return values.sum() + items.sum() + consumed.sum() + rows.sum()

    torch.testing.assert_close(torch.compile(signal, fullgraph=True, backend="aot_eager")(user, item),
                               signal(user, item))
    for a, b in zip(torch.autograd.grad(out, (user, item)), torch.autograd.grad(fn(user, item), (user, item))):
        torch.testing.assert_close(a, b)


U, I = torch.randn(2, 3), torch.randn(5, 3)
GID, GW = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0], [0, 1]]), torch.full((5, 2), 0.5)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.score_candidates(U, I, torch.tensor([[0, 5], [1, 2]])), ValueError, "`candidates` contains item id 5"),
    (lambda: ops.score_candidates(U, I, torch.tensor([[0, -1], [1, 2]])), ValueError, "expected ids in \\[0, 5\\)"),
    (lambda: ops.score_candidates(U, torch.randn(5, 4), torch.tensor([0])), ValueError, "`item_emb` has dim 4"),
    (lambda: ops.score_candidates(U, I.double(), torch.tensor([0])), TypeError, "`item_emb` has dtype"),
    (lambda: ops.score_candidates(U, I, torch.tensor([[0], [1], [2]])), ValueError, "`candidates` has 3 rows"),
    (lambda: ops.score_candidates(U.index_fill(1, torch.tensor([0]), float("nan")), I, torch.tensor([0, 1])),
     ValueError, "`user_emb` contains NaN"),
    (lambda: ops.score_candidates(U, I.index_fill(0, torch.tensor([4]), float("inf")), torch.tensor([0])), ValueError,
     "`item_emb` contains inf"),
    (lambda: ops.topk_scores(U, I, 0), ValueError, "`k` must be an int >= 1"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 1, 1])), ValueError, "pass both"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 1]), exclude_indices=torch.tensor([0])),
     ValueError, "`exclude_indptr` must be \\[B \\+ 1\\]"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 2, 1]), exclude_indices=torch.tensor([0])),
     ValueError, "must be non-decreasing"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 1, 1]), exclude_indices=torch.tensor([9])),
     ValueError, "`exclude_indices` contains item id 9"),
    (lambda: ops.topk_scores(torch.full((2, 3), float("nan")), I, 2), ValueError, "`user_emb` contains NaN"),
    (lambda: ops.topk_scores(U, I.index_fill(0, torch.tensor([1]), float("-inf")), 2), ValueError,
     "`item_emb` contains inf"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0, 5]), 1, GID, GW, 2), ValueError,
     "`sampled` contains item id 5"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0, 1]), 3, GID, GW, 2), ValueError,
     "`k` \\(3\\) must be <= the number of sampled items Q = 2"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([[0, 1]]), 1, GID, GW, 2), ValueError,
     "`sampled` must be \\[Q\\]"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0]), 1, GID[:4], GW, 2), ValueError,
     "`group_ids` must be \\[I, P\\] with I = 5"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0]), 1, GID, GW[:, :1], 2), ValueError,
     "`group_weights` must have the shape"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0]), 1, GID, GW, 1), ValueError,
     "`group_ids` contains group id 1"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0]), 1, GID, GW.clone().fill_diagonal_(float("nan")), 2),
     ValueError, "`group_weights` contains a non-finite value"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0]), 1, GID, GW, 2, "rank"), ValueError,
     "`utility` must be one of"),
    (lambda: ops.sampled_topk_group_stats(U, I, torch.tensor([0]), 1, GID.int(), GW, 2), TypeError,
     "`group_ids` must be an int64 tensor"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_ids_even_without_validation():
    with pytest.raises(RuntimeError, match="`candidates` contains item id 7"):
        ops.score_candidates(U, I, torch.tensor([0, 7]), validate=False)
    with pytest.raises(RuntimeError, match="`sampled` contains item id 7"):
        ops.sampled_topk_group_stats(U, I, torch.tensor([0, 7]), 1, GID, GW, 2, validate=False)
    with pytest.raises(RuntimeError, match="`group_ids` of item 0 contains group id 1"):
        ops.sampled_topk_group_stats(torch.ones(2, 3), I.abs() + 1, torch.tensor([0]), 1, GID, GW, 1, validate=False)
