"""RankingMetrics against per-user oracles; split batches; edge cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from metric_oracles import random_case, user_metric

from fairlit.metrics import RankingMetrics, hits_from_csr

NAMES = ("recall", "ndcg", "hit", "mrr", "precision")


def expected_means(case, ks):
    users = [b for b in range(len(case.lists)) if case.targets[b]]
    if not users:
        return {f"{m}@{k}": float("nan") for m in NAMES for k in ks}
    return {
        f"{m}@{k}": float(np.mean([user_metric(m, case.lists[b], case.targets[b], k) for b in users]))
        for m in NAMES
        for k in ks
    }


def update(metric, case):
    metric.update(hits_from_csr(case.topk, case.indptr, case.indices), case.indptr.diff())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(0, 2**16), st.integers(2, 20), st.integers(5, 40), st.integers(1, 5))
def test_matches_oracle_and_split_batches(seed, batch, num_items, split):
    case = random_case(seed, batch, num_items, kmax=6)
    ks = [1, 3, 6]
    whole = RankingMetrics(ks=ks)
    update(whole, case)
    result = whole.compute()
    expected = expected_means(case, ks)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-6, nan_ok=True), key
    parts = RankingMetrics(ks=ks)
    cut = min(split, batch)
    update(parts, case.rows(0, cut))
    update(parts, case.rows(cut, batch))
    for key, value in parts.compute().items():
        assert value.item() == pytest.approx(result[key].item(), abs=1e-9, nan_ok=True)


def test_users_without_relevant_items_are_skipped():
    metric = RankingMetrics(ks=[2], metrics=("recall",))
    metric.update(torch.tensor([[True, False], [True, True]]), torch.tensor([2, 0]))
    assert metric.n_users.item() == 1
    assert metric.compute()["recall@2"].item() == pytest.approx(0.5)


def test_no_users_gives_nan_and_reset_clears():
    metric = RankingMetrics(ks=[2])
    metric.update(torch.zeros(0, 2, dtype=torch.bool), torch.zeros(0, dtype=torch.long))
    assert all(math.isnan(v.item()) for v in metric.compute().values())
    metric.update(torch.tensor([[True, False]]), torch.tensor([1]))
    metric.reset()
    assert metric.n_users.item() == 0 and metric.sum_recall.sum().item() == 0


def test_forward_returns_batch_value_and_accumulates():
    metric = RankingMetrics(ks=[1], metrics=("hit",))
    batch_value = metric(torch.tensor([[True], [False]]), torch.tensor([1, 1]))
    assert batch_value["hit@1"].item() == pytest.approx(0.5)
    metric(torch.tensor([[True]]), torch.tensor([1]))
    assert metric.compute()["hit@1"].item() == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"ks": []}, "ks"), ({"ks": [0]}, "ks"), ({"ks": [-3]}, "ks"), ({"metrics": ("auc",)}, "metrics")],
)
def test_rejects_bad_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankingMetrics(**kwargs)


def test_rejects_bad_update():
    metric = RankingMetrics(ks=[3])
    with pytest.raises(ValueError, match="hits"):
        metric.update(torch.ones(2, 2, dtype=torch.bool), torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_relevant"):
        metric.update(torch.ones(2, 3, dtype=torch.bool), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_relevant must be an integer tensor"):
        metric.update(torch.ones(2, 3, dtype=torch.bool), torch.tensor([2.0, 1.0]))
