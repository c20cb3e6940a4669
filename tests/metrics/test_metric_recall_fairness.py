"""GroupRecall (FairNeg) and IntersectionalFairness (ITFR) against plain-loop oracles."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from metric_oracles import cv, random_case

from fairlit.metrics import GroupRecall, IntersectionalFairness, hits_from_csr

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
KS = [2, 5]


def group_recall_oracle(case, item_group, num_groups, ks):
    out = {}
    for k in ks:
        hit, rel = [0] * num_groups, [0] * num_groups
        for items, targets in zip(case.lists, case.targets):
            for i in targets:
                rel[item_group[i]] += 1
            for i in items[:k]:
                if i >= 0 and i in targets:
                    hit[item_group[i]] += 1
        recall = [h / r if r else math.nan for h, r in zip(hit, rel)]
        present = [r for r in recall if not math.isnan(r)]
        out[f"recall_disp@{k}"] = float(np.std(present) / (np.mean(present) + 1e-10)) if present else math.nan
        out[f"recall_min@{k}"] = min(present) if present else math.nan
        out[f"recall_avg@{k}"] = float(np.mean(present)) if present else math.nan
        out.update({f"group_recall@{k}/g{a}": recall[a] for a in range(num_groups)})
    return out


def itg_oracle(case, user_group, item_group, num_p, num_q, ks):
    out = {}
    for k in ks:
        cells = np.full((num_p, num_q), math.nan)
        for p in range(num_p):
            for q in range(num_q):
                utils = []
                for b, (items, targets) in enumerate(zip(case.lists, case.targets)):
                    rel_q = [i for i in targets if item_group[i] == q]
                    if user_group[b] == p and rel_q:
                        utils.append(sum(1 for i in items[:k] if i in rel_q) / len(rel_q))
                if utils:
                    cells[p, q] = np.mean(utils)
        flat = sorted(cells.flatten().tolist(), key=lambda x: (math.isnan(x), x))
        out[f"cv@{k}"] = cv(cells.flatten())
        out[f"min@{k}"] = float(np.mean(flat[: cells.size // 4])) if cells.size >= 4 else math.nan
        out[f"icv@{k}"] = float(np.mean([cv(cells[p]) for p in range(num_p)]))
        out[f"ucv@{k}"] = float(np.mean([cv(cells[:, q]) for q in range(num_q)]))
        out.update({f"itg@{k}/u{p}i{q}": cells[p, q] for p in range(num_p) for q in range(num_q)})
    return out


def assert_matches(result, expected):
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-9, nan_ok=True), key


def split_updates(metric, case, *extra):
    hits = hits_from_csr(case.topk, case.indptr, case.indices)
    cut = len(case.lists) // 2
    for lo, hi in ((0, cut), (cut, len(case.lists))):
        part = case.rows(lo, hi)
        metric.update(part.topk, hits[lo:hi], part.indptr, part.indices, *(e[lo:hi] for e in extra))


@SETTINGS
@given(st.integers(0, 2**16), st.integers(1, 20), st.integers(1, 5))
def test_group_recall_matches_pooled_oracle(seed, batch, num_groups):
    case = random_case(seed, batch, num_items=15, kmax=5)
    item_group = np.random.default_rng(seed + 1).integers(0, num_groups, size=15).tolist()
    metric = GroupRecall(torch.tensor(item_group), num_groups, ks=KS)
    split_updates(metric, case)
    assert_matches(metric.compute(), group_recall_oracle(case, item_group, num_groups, KS))


def test_group_recall_two_groups_disp_formula():
    # Group 0: 1 of 2 relevant found; group 1: 1 of 1 found -> r = (0.5, 1), Disp = |r1 − r2| / (r1 + r2).
    metric = GroupRecall(torch.tensor([0, 0, 1, 1]), 2, ks=[2])
    topk = torch.tensor([[0, 2]])
    indptr, indices = torch.tensor([0, 3]), torch.tensor([0, 1, 2])
    metric.update(topk, hits_from_csr(topk, indptr, indices), indptr, indices)
    result = metric.compute()
    assert result["recall_disp@2"].item() == pytest.approx(0.5 / 1.5)
    assert result["recall_min@2"].item() == pytest.approx(0.5)
    assert result["recall_avg@2"].item() == pytest.approx(0.75)


def test_group_recall_rejects_bad_input():
    metric = GroupRecall(torch.tensor([0, 1]), 2, ks=[1])
    topk, indptr, indices = torch.tensor([[0]]), torch.tensor([0, 1]), torch.tensor([0])
    with pytest.raises(ValueError, match="hits"):
        metric.update(topk, torch.ones(1, 2, dtype=torch.bool), indptr, indices)
    with pytest.raises(ValueError, match="target_indices"):
        metric.update(topk, torch.ones(1, 1, dtype=torch.bool), indptr, torch.tensor([5]))
    with pytest.raises(ValueError, match="item_group"):
        GroupRecall(torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match="hits must be a bool tensor"):
        metric.update(topk, torch.ones(1, 1), indptr, indices)
    # Item 1 (group 1) marked as a hit although the row's only target is item 0: recall of group 1 was inf.
    with pytest.raises(ValueError, match="more items of an item group in a row than the row's targets hold"):
        metric.update(torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool), indptr, indices)
    unsorted = GroupRecall(torch.tensor([0, 1]), 2, ks=[2, 1])  # the extra hit is only within the first cutoff
    with pytest.raises(ValueError, match="more items of an item group in a row than the row's targets hold"):
        unsorted.update(torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), indptr, indices)


@SETTINGS
@given(st.integers(0, 2**16), st.integers(1, 25), st.integers(1, 3), st.integers(1, 4))
def test_intersectional_matches_oracle(seed, batch, num_p, num_q):
    case = random_case(seed, batch, num_items=15, kmax=5)
    rng = np.random.default_rng(seed + 1)
    item_group = rng.integers(0, num_q, size=15).tolist()
    user_group = rng.integers(0, num_p, size=batch).tolist()
    metric = IntersectionalFairness(num_p, torch.tensor(item_group), num_q, ks=KS)
    split_updates(metric, case, torch.tensor(user_group))
    assert_matches(metric.compute(), itg_oracle(case, user_group, item_group, num_p, num_q, KS))


def test_intersectional_equal_cells_and_full_list():
    # Every user sees all items: every cell utility is 1, CV = ICV = UCV = 0 and MIN = 1.
    topk = torch.arange(4).repeat(4, 1)
    indptr, indices = torch.tensor([0, 2, 4, 6, 8]), torch.tensor([0, 2, 1, 3, 0, 3, 1, 2])
    metric = IntersectionalFairness(2, torch.tensor([0, 0, 1, 1]), 2, ks=[4])
    metric.update(topk, hits_from_csr(topk, indptr, indices), indptr, indices, torch.tensor([0, 1, 0, 1]))
    result = metric.compute()
    assert [result[f"{n}@4"].item() for n in ("cv", "icv", "ucv", "min")] == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("min_ratio", [0, -1, 1.5, float("nan")])
def test_intersectional_rejects_min_ratio_outside_0_1(min_ratio):
    with pytest.raises(ValueError, match="min_ratio must lie in \\(0, 1\\]"):
        IntersectionalFairness(2, torch.tensor([0, 1]), 2, min_ratio=min_ratio)


def test_intersectional_rejects_bad_user_group():
    metric = IntersectionalFairness(2, torch.tensor([0, 1]), 2, ks=[1])
    topk, indptr, indices = torch.tensor([[0]]), torch.tensor([0, 1]), torch.tensor([0])
    with pytest.raises(ValueError, match="user_group"):
        metric.update(topk, torch.ones(1, 1, dtype=torch.bool), indptr, indices, torch.tensor([2]))
