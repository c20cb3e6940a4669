import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from fairlit.data import build_csr, csr_contains, csr_slice, sample_negatives


def _random_pairs(num_users=20, num_items=15, n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(num_users, (n,), generator=g), torch.randint(num_items, (n,), generator=g)


def test_build_csr_sorted_and_deduplicated():
    rows, cols = torch.tensor([2, 0, 2, 2, 0]), torch.tensor([5, 1, 3, 5, 0])
    indptr, indices = build_csr(rows, cols, 4)
    assert indptr.tolist() == [0, 2, 2, 4, 4]
    assert indices.tolist() == [0, 1, 3, 5]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.lists(st.integers(0, 19), max_size=25))
def test_csr_slice_matches_naive_loop(seed, batch):
    rows, cols = _random_pairs(seed=seed)
    indptr, indices = build_csr(rows, cols, 20)
    ptr, idx = csr_slice(indptr, indices, torch.tensor(batch, dtype=torch.long))
    expected = [indices[indptr[u]:indptr[u + 1]].tolist() for u in batch]
    assert [idx[ptr[k]:ptr[k + 1]].tolist() for k in range(len(batch))] == expected


def test_csr_contains():
    indptr, indices = build_csr(*_random_pairs(), 20)
    users = torch.arange(20)
    cols = torch.arange(15).expand(20, 15)
    dense = torch.zeros(20, 15, dtype=torch.bool)
    rows, c = _random_pairs()
    dense[rows, c] = True
    assert torch.equal(csr_contains(indptr, indices, users, cols, 15), dense)


@pytest.mark.parametrize("popularity", [False, True])
def test_negatives_never_positive(popularity):
    rows, cols = _random_pairs(n=200)  # dense: most users hold about half the 15 items
    excl = build_csr(rows, cols, 20)
    probs = torch.arange(1, 16, dtype=torch.float64) if popularity else None
    users = torch.arange(20).repeat(500)
    neg = sample_negatives(users, 4, 15, excl, torch.Generator().manual_seed(0), probs)
    assert neg.shape == (10_000, 4) and neg.dtype == torch.long
    assert not csr_contains(*excl, users, neg, 15).any()


def test_popularity_frequencies_match():
    probs = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    excl = build_csr(torch.tensor([0]), torch.tensor([4]), 2)  # user 0 may not draw item 4
    users = torch.tensor([0, 1]).repeat_interleave(20_000)
    neg = sample_negatives(users, 1, 5, excl, torch.Generator().manual_seed(1), probs).flatten()
    for u, allowed in ((0, [0, 1, 2, 3]), (1, [0, 1, 2, 3, 4])):
        observed = torch.bincount(neg[users == u], minlength=5)[allowed].double()
        expected = probs[allowed] / probs[allowed].sum() * observed.sum()
        assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3


def test_deterministic_with_seed():
    excl = build_csr(*_random_pairs(), 20)
    users = torch.arange(20).repeat(30)
    a = sample_negatives(users, 2, 15, excl, torch.Generator().manual_seed(5))
    b = sample_negatives(users, 2, 15, excl, torch.Generator().manual_seed(5))
    c = sample_negatives(users, 2, 15, excl, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_user_with_every_item_raises():
    excl = build_csr(torch.zeros(3, dtype=torch.long), torch.arange(3), 2)
    with pytest.raises(ValueError, match="user 0 has no item left"):
        sample_negatives(torch.tensor([1, 0]), 1, 3, excl, torch.Generator().manual_seed(0))
    # zero-weight items count as unavailable too
    excl = build_csr(torch.tensor([0]), torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="no item left"):
        sample_negatives(torch.tensor([0]), 1, 2, excl, torch.Generator(), torch.tensor([1.0, 0.0]))
