import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlit.data import (
    split_chrono_global,
    split_counts,
    split_leave_one_out,
    split_periods,
    split_random_ratio,
)


def recbole_calcu_split_ids(tot, ratios):
    """Verbatim copy of RecBole 1.2.1 ``Dataset._calcu_split_ids`` (the oracle), after its normalisation."""
    tot_ratio = sum(ratios)
    ratios = [_ / tot_ratio for _ in ratios]
    cnt = [int(ratios[i] * tot) for i in range(len(ratios))]
    cnt[0] = tot - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * tot < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


@settings(max_examples=200, deadline=None)
@given(n=st.lists(st.integers(0, 400), min_size=1, max_size=20),
       ratios=st.sampled_from([(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.7, 0.1, 0.2), (8, 1, 1), (0.5, 0.5)]))
def test_split_counts_equals_recbole(n, ratios):
    got = split_counts(np.array(n), ratios)
    assert got.tolist() == [recbole_calcu_split_ids(t, list(ratios)) for t in n]


def _users(seed=0, num_users=50):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(num_users), rng.integers(1, 30, num_users)))


def test_random_ratio_disjoint_cover_and_per_user_sizes():
    user = _users()
    parts = split_random_ratio(user, (0.8, 0.1, 0.1), seed=1)
    allrows = np.concatenate(parts)
    assert len(allrows) == len(user) and len(np.unique(allrows)) == len(user)
    got = np.stack([np.bincount(user[p], minlength=user.max() + 1) for p in parts], 1)
    np.testing.assert_array_equal(got, split_counts(np.bincount(user), (0.8, 0.1, 0.1)))


def test_random_ratio_seeded():
    user = _users()
    a, b = split_random_ratio(user, (0.8, 0.1, 0.1), 3), split_random_ratio(user, (0.8, 0.1, 0.1), 3)
    c = split_random_ratio(user, (0.8, 0.1, 0.1), 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_chrono_global():
    rng = np.random.default_rng(0)
    time = rng.integers(0, 50, 101).astype(float)  # many ties
    train, valid, test = split_chrono_global(time, (0.8, 0.1, 0.1))
    assert (len(train), len(valid), len(test)) == (81, 10, 10)
    assert time[train].max() <= time[valid].min() and time[valid].max() <= time[test].min()
    order = np.argsort(time, kind="stable")  # ties keep file order
    np.testing.assert_array_equal(np.sort(order[:81]), train)


def test_leave_one_out():
    user = np.array([0, 0, 0, 0, 1, 1, 2])
    time = np.array([5, 1, 9, 9, 3, 2, 7.0])
    train, valid, test = split_leave_one_out(user, time)
    assert test.tolist() == [3, 4]  # user 0: tie at t=9 -> later row is last; user 1: two rows -> no valid
    assert valid.tolist() == [2]
    assert train.tolist() == [0, 1, 5, 6]


def test_periods_fade_batch_aligned_numbers():
    parts = split_periods(np.arange(836_478), pretrain=0.6, num_periods=10, chunk=256)
    sizes = [len(p) for p in parts]
    assert sizes == [501_760] + [33_280] * 9 + [35_198]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(836_478))


def test_periods_exact_and_too_small():
    parts = split_periods(np.arange(105)[::-1].copy(), pretrain=0.6, num_periods=4, chunk=None)
    assert [len(p) for p in parts] == [63, 10, 10, 10, 12]
    assert parts[0][0] == 104  # earliest time first
    with pytest.raises(ValueError, match="too few"):
        split_periods(np.arange(5), num_periods=10, chunk=None)
