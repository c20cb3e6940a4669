import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlit.data import binarize, check_columns, drop_duplicate_pairs, k_core, reindex


def _frame(pairs):
    return pd.DataFrame({"user_id": [f"u{u}" for u, _ in pairs], "item_id": [f"i{i}" for _, i in pairs]})


def _naive_core(pairs, ku, ki):
    """Reference: drop one violating user or item at a time until none is left."""
    rows = list(pairs)
    while True:
        cu = pd.Series([u for u, _ in rows]).value_counts()
        ci = pd.Series([i for _, i in rows]).value_counts()
        bad_u = {u for u, c in cu.items() if c < ku}
        bad_i = {i for i, c in ci.items() if c < ki}
        if not bad_u and not bad_i:
            return rows
        rows = [(u, i) for u, i in rows if u not in bad_u and i not in bad_i]


pairs_strategy = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=120, unique=True)


@settings(max_examples=60, deadline=None)
@given(pairs=pairs_strategy, ku=st.integers(0, 5), ki=st.integers(0, 5))
def test_k_core_iterated_property(pairs, ku, ki):
    kept = k_core(_frame(pairs), ku, ki)
    if len(kept):
        assert kept["user_id"].value_counts().min() >= ku
        assert kept["item_id"].value_counts().min() >= ki
    # The k-core is unique, so any removal order must give the same rows.
    expected = _frame(_naive_core(pairs, ku, ki))
    assert sorted(map(tuple, kept.values)) == sorted(map(tuple, expected.values))


def test_k_core_one_pass_users_then_items():
    # k=2: the user pass drops u1 (1 row); the item pass then drops i1 and i2 (1 row each).
    frame = _frame([(0, 0), (0, 1), (1, 0), (2, 0), (2, 2)])
    one = k_core(frame, 2, 2, iterated=False)
    assert list(map(tuple, one.values)) == [("u0", "i0"), ("u2", "i0")]  # users now below 2: kept in one pass
    assert k_core(frame, 2, 2, iterated=True).empty


def test_binarize_drop_and_keep():
    frame = pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x"] * 3, "rating": [2.0, 3.0, 5.0]})
    assert binarize(frame, 3)["user_id"].tolist() == ["b", "c"]
    kept = binarize(frame, 3, keep_negatives=True)
    assert kept["label"].tolist() == [0, 1, 1]


def test_drop_duplicate_pairs_keeps_the_earliest_row_in_file_order():
    frame = pd.DataFrame({"user_id": ["a", "a", "b", "a", "b"], "item_id": ["x", "y", "x", "x", "x"],
                          "timestamp": [5.0, 1.0, 2.0, 3.0, 2.0]})
    kept = drop_duplicate_pairs(frame)
    assert kept.index.tolist() == [1, 2, 3]  # (a, x): t=3 beats t=5; (b, x): a tie keeps the first row


def test_check_columns_messages():
    frame = pd.DataFrame({"user_id": ["a", None], "item_id": ["x", "y"]})
    with pytest.raises(ValueError, match=r"ml\.inter: column 'user_id' has 1 missing"):
        check_columns(frame, ("user_id", "item_id"), "ml.inter")
    with pytest.raises(ValueError, match=r"ml\.inter: missing column 'rating'"):
        check_columns(frame, ("rating",), "ml.inter")


def test_reindex_first_appearance():
    frame = _frame([(5, 3), (2, 3), (5, 9)])
    u, i, ut, it = reindex(frame)
    np.testing.assert_array_equal(u, [0, 1, 0])
    np.testing.assert_array_equal(i, [0, 0, 1])
    assert list(ut) == ["u5", "u2"] and list(it) == ["i3", "i9"]
    assert u.dtype == np.int64
