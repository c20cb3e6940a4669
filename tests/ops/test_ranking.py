"""score_candidates / topk_scores vs fairlit.ops.reference."""
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


def test_topk_scores_hand_computed_ties_exclusions_and_padding():
    user = torch.tensor([[1.0], [1.0]])
    item = torch.tensor([[2.0], [3.0], [3.0], [1.0]])
    values, ids = ops.topk_scores(user, item, 3, exclude_indptr=torch.tensor([0, 1, 4]),
                                  exclude_indices=torch.tensor([1, 0, 1, 2]))
    assert ids.tolist() == [[2, 0, 3], [3, -1, -1]]      # tie 3.0 -> lower id 1 is excluded for row 0
    assert values.tolist() == [[3.0, 2.0, 1.0], [1.0, float("-inf"), float("-inf")]]
    values, ids = ops.topk_scores(user, item, 5, candidates=torch.tensor([3, 2, 1]))
    assert ids.tolist() == [[1, 2, 3, -1, -1]] * 2       # tie between candidates 2 and 1 -> id 1 first


def test_gradcheck_float64():
    user = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    item = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([[0, 3, 3, 8], [1, 1, 1, 1], [2, 0, 5, 5], [8, 7, 6, 5], [0, 0, 4, 4]])
    assert torch.autograd.gradcheck(lambda u, i: ops.score_candidates(u, i, rows), (user, item))
    assert torch.autograd.gradcheck(lambda u, i: ops.score_candidates(u, i, rows[0]), (user, item))


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
    for a, b in zip(torch.autograd.grad(out, (user, item)), torch.autograd.grad(fn(user, item), (user, item))):
        torch.testing.assert_close(a, b)


U, I = torch.randn(2, 3), torch.randn(5, 3)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.score_candidates(U, I, torch.tensor([[0, 5], [1, 2]])), ValueError, "`candidates` contains item id 5"),
    (lambda: ops.score_candidates(U, I, torch.tensor([[0, -1], [1, 2]])), ValueError, "expected ids in \\[0, 5\\)"),
    (lambda: ops.score_candidates(U, torch.randn(5, 4), torch.tensor([0])), ValueError, "`item_emb` has dim 4"),
    (lambda: ops.score_candidates(U, I.double(), torch.tensor([0])), TypeError, "`item_emb` has dtype"),
    (lambda: ops.score_candidates(U, I, torch.tensor([[0], [1], [2]])), ValueError, "`candidates` has 3 rows"),
    (lambda: ops.topk_scores(U, I, 0), ValueError, "`k` must be an int >= 1"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 1, 1])), ValueError, "pass both"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 1]), exclude_indices=torch.tensor([0])),
     ValueError, "`exclude_indptr` must be \\[B \\+ 1\\]"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 2, 1]), exclude_indices=torch.tensor([0])),
     ValueError, "must be non-decreasing"),
    (lambda: ops.topk_scores(U, I, 2, exclude_indptr=torch.tensor([0, 1, 1]), exclude_indices=torch.tensor([9])),
     ValueError, "`exclude_indices` contains item id 9"),
    (lambda: ops.topk_scores(torch.full((2, 3), float("nan")), I, 2), ValueError, "`user_emb` contains NaN"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_ids_even_without_validation():
    with pytest.raises(RuntimeError, match="`candidates` contains item id 7"):
        ops.score_candidates(U, I, torch.tensor([0, 7]), validate=False)
