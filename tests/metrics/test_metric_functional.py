"""fairlit.metrics.functional against plain-loop oracles."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from metric_oracles import cv, entropy, gini, mmf, random_case, user_metric

from fairlit.metrics import functional as F

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
PER_USER = {
    "recall": F.recall_at_k,
    "precision": F.precision_at_k,
    "ndcg": F.ndcg_at_k,
    "hit": F.hit_at_k,
    "mrr": F.mrr_at_k,
}


@SETTINGS
@given(st.integers(0, 2**16), st.integers(0, 9), st.integers(1, 30), st.integers(1, 8))
def test_hits_from_csr_matches_loop(seed, batch, num_items, kmax):
    case = random_case(seed, batch, num_items, kmax)
    expected = [[i >= 0 and i in t for i in items] for items, t in zip(case.lists, case.targets)]
    hits = F.hits_from_csr(case.topk, case.indptr, case.indices)
    assert hits.dtype == torch.bool and hits.shape == (batch, kmax)
    assert hits.tolist() == expected


def test_hits_from_csr_padding_never_hits_previous_row_last_item():
    # Key of (row 1, -1) equals key of (row 0, N - 1) without the padding mask.
    topk = torch.tensor([[0, 1], [-1, -1]])
    hits = F.hits_from_csr(topk, torch.tensor([0, 1, 1]), torch.tensor([1]))
    assert hits.tolist() == [[False, True], [False, False]]


def test_hits_from_csr_unsorted_and_duplicate_targets():
    topk = torch.tensor([[5, 3, 9]])
    hits = F.hits_from_csr(topk, torch.tensor([0, 4]), torch.tensor([9, 5, 5, 7]))
    assert hits.tolist() == [[True, False, True]]


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0])), "topk_items"),
        ((torch.tensor([[0]]), torch.tensor([0, 1, 1]), torch.tensor([0])), "target_indptr"),
        ((torch.tensor([[0]]), torch.tensor([0, 2]), torch.tensor([0])), "target_indptr"),
        ((torch.tensor([[-2]]), torch.tensor([0, 1]), torch.tensor([0])), "topk_items"),
        ((torch.tensor([[0]]), torch.tensor([0, 1]), torch.tensor([-1])), "target_indices"),
    ],
)
def test_hits_from_csr_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        F.hits_from_csr(*args)


@SETTINGS
@given(st.integers(0, 2**16), st.integers(1, 9), st.integers(1, 30), st.integers(1, 8))
def test_per_user_metrics_match_definitions(seed, batch, num_items, kmax):
    case = random_case(seed, batch, num_items, kmax)
    keep = [b for b in range(batch) if case.targets[b]]
    hits = F.hits_from_csr(case.topk, case.indptr, case.indices)[keep]
    num_rel = case.indptr.diff()[keep]
    for name, fn in PER_USER.items():
        expected = [user_metric(name, case.lists[b], case.targets[b], kmax) for b in keep]
        np.testing.assert_allclose(fn(hits, num_rel).numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=name)
    ks = sorted({1, kmax, max(1, kmax // 2)})
    table = F.per_user_metrics(hits, num_rel, ks, tuple(PER_USER))
    assert table.shape == (len(PER_USER), len(ks), len(keep))
    for mi, name in enumerate(PER_USER):
        for ki, k in enumerate(ks):
            expected = [user_metric(name, case.lists[b], case.targets[b], k) for b in keep]
            np.testing.assert_allclose(table[mi, ki].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_ndcg_ideal_uses_min_of_relevant_and_k():
    hits = torch.tensor([[True, True]])
    assert F.ndcg_at_k(hits, torch.tensor([5])).item() == pytest.approx(1.0)
    second = F.ndcg_at_k(torch.tensor([[False, True]]), torch.tensor([1]))
    assert second.item() == pytest.approx(1 / math.log2(3))


def test_per_user_rejects_users_without_relevant_items_and_bad_shapes():
    with pytest.raises(ValueError, match="num_relevant"):
        F.recall_at_k(torch.ones(2, 3, dtype=torch.bool), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="num_relevant"):
        F.ndcg_at_k(torch.ones(2, 3, dtype=torch.bool), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="hits"):
        F.mrr_at_k(torch.ones(3, dtype=torch.bool), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="metrics"):
        F.per_user_metrics(torch.ones(1, 3, dtype=torch.bool), torch.tensor([3]), [1], ("f1",))
    with pytest.raises(ValueError, match="largest k"):
        F.per_user_metrics(torch.ones(1, 3, dtype=torch.bool), torch.tensor([3]), [4], ("recall",))
    with pytest.raises(ValueError, match="num_relevant must be an integer tensor, got torch.float32"):
        F.ndcg_at_k(torch.ones(2, 3, dtype=torch.bool), torch.tensor([1.0, 2.0]))
    # A count or score as a "hit" counted several times (recall 5); more hits than relevant items (recall 2).
    with pytest.raises(ValueError, match="hits must be a bool tensor"):
        F.recall_at_k(torch.tensor([[5, 0, 0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="more hits in a row than that user's num_relevant"):
        F.recall_at_k(torch.tensor([[True, False, True]]), torch.tensor([1]))


def test_a_uint8_num_relevant_is_a_count_not_a_mask():
    hits = torch.tensor([[True, False, True], [False, True, False]])
    torch.testing.assert_close(F.ndcg_at_k(hits, torch.tensor([2, 1], dtype=torch.uint8)),
                               F.ndcg_at_k(hits, torch.tensor([2, 1])))


def test_per_user_empty_batch():
    hits, num_rel = torch.zeros(0, 4, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    for fn in PER_USER.values():
        assert fn(hits, num_rel).shape == (0,)


group_vectors = st.lists(st.integers(0, 50), min_size=1, max_size=25).filter(lambda u: sum(u) > 0)


@SETTINGS
@given(group_vectors, st.sampled_from([0.2, 0.25, 0.5, 1.0]))
def test_group_vector_functions_match_oracles(u, ratio):
    t = torch.tensor(u, dtype=torch.float64)
    assert F.gini(t).item() == pytest.approx(gini(u), abs=1e-12)
    assert F.mmf(t, ratio).item() == pytest.approx(mmf(u, ratio), abs=1e-12)
    assert F.entropy(t).item() == pytest.approx(entropy(u), abs=1e-12)
    assert F.min_max_ratio(t).item() == pytest.approx(min(u) / max(u), abs=1e-12)
    assert F.coefficient_of_variation(t).item() == pytest.approx(cv(u), abs=1e-12)
    n = math.floor(ratio * len(u))
    expected_min = float(np.mean(sorted(u)[:n])) if n else float("nan")
    assert F.worst_fraction_mean(t, ratio).item() == pytest.approx(expected_min, abs=1e-12, nan_ok=True)


def test_group_vector_functions_batch_over_leading_dims():
    u = torch.rand(3, 4, 7, dtype=torch.float64)
    for fn in (F.gini, F.mmf, F.entropy, F.min_max_ratio, F.coefficient_of_variation, F.worst_fraction_mean):
        batched = fn(u)
        assert batched.shape == (3, 4)
        assert torch.allclose(batched[1, 2], fn(u[1, 2]))


def test_group_vector_edge_values():
    equal = torch.full((5,), 3.0)
    assert F.gini(equal).item() == pytest.approx(0.0)
    assert F.mmf(equal).item() == pytest.approx(0.2)
    assert F.entropy(equal).item() == pytest.approx(math.log2(5))
    one_group = torch.tensor([0.0, 0.0, 0.0, 8.0])
    assert F.gini(one_group).item() == pytest.approx(3 / 4)
    assert F.mmf(one_group, 0.5).item() == 0.0  # zero groups count
    assert F.mmf(torch.tensor([1.0, 2.0]), 0.2).item() == 0.0  # floor(0.4) = 0 worst groups
    assert F.entropy(one_group).item() == pytest.approx(0.0)
    assert torch.isnan(F.gini(torch.zeros(3))) and torch.isnan(F.mmf(torch.zeros(5)))
    assert F.coefficient_of_variation(torch.zeros(3), eps=1e-10).item() == 0.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.mmf(torch.ones(4), ratio=2), "ratio must lie in \\[0, 1\\], got 2"),
        (lambda: F.mmf(torch.ones(4), ratio=-1), "ratio must lie in \\[0, 1\\], got -1"),
        (lambda: F.worst_fraction_mean(torch.ones(4), 0), "ratio must lie in \\(0, 1\\], got 0"),
        (lambda: F.worst_fraction_mean(torch.ones(4), float("nan")), "ratio must lie in \\(0, 1\\], got nan"),
        (lambda: F.gini(torch.zeros(0)), "u must be \\[..., G\\] with G >= 1 groups, got shape \\(0,\\)"),
        (lambda: F.min_max_ratio(torch.zeros(0)), "u must be \\[..., G\\] with G >= 1"),
        (lambda: F.entropy(torch.zeros(3, 0)), "u must be \\[..., G\\] with G >= 1"),
        (lambda: F.coefficient_of_variation(torch.tensor(1.0)), "u must be \\[..., G\\] with G >= 1"),
        (lambda: F.nan_group_stats(torch.zeros(0)), "values must be \\[..., G\\] with G >= 1"),
    ],
)
def test_group_vector_functions_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nan_group_stats_ignores_missing_groups():
    x = torch.tensor([[1.0, float("nan"), 3.0], [float("nan")] * 3], dtype=torch.float64)
    mean, std, low, high = F.nan_group_stats(x)
    assert mean[0].item() == 2.0 and std[0].item() == 1.0 and low[0].item() == 1.0 and high[0].item() == 3.0
    assert all(torch.isnan(v[1]) for v in (mean, std, low, high))


def test_targets_per_group_counts():
    item_group = torch.tensor([0, 1, 1, 2])
    out = F.targets_per_group(torch.tensor([0, 3, 3, 4]), torch.tensor([1, 2, 3, 0]), item_group, 3)
    assert out.tolist() == [[0, 2, 1], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="target_indices"):
        F.targets_per_group(torch.tensor([0, 1]), torch.tensor([4]), item_group, 3)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([0, 7]), 2),
         "item_group values must lie in \\[0, 2\\), got \\[0, 7\\]"),
        ((torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([0, -1]), 2), "item_group values must lie in"),
        ((torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([[0, 1]]), 2), "item_group must be 1-D"),
        ((torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([0, 1]), 0), "num_groups must be a positive int"),
        ((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.tensor([0, 1]), 2),
         "target_indptr must be 1-D \\[rows \\+ 1\\] with at least one entry"),
        ((torch.tensor([0.0, 2.0]), torch.tensor([0, 1]), torch.tensor([0, 1]), 2),
         "target_indptr must be an integer tensor"),
    ],
)
def test_targets_per_group_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        F.targets_per_group(*args)
