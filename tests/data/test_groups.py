import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlit.data import (
    age_groups,
    categorical_groups,
    genre_exclusive,
    genre_first,
    genre_multi,
    intersectional,
    quantile_groups,
)

GENRES = [("Sci-Fi", "Action"), ("Horror",), ("Sci-Fi", "Horror"), ("Comedy",), ("Action", "Horror", "Drama")]


def test_genre_first():
    group, names = genre_first(GENRES)
    assert names == ["Action", "Comedy", "Horror", "Sci-Fi"]
    assert [names[g] for g in group] == ["Sci-Fi", "Horror", "Sci-Fi", "Comedy", "Action"]


def test_genre_exclusive_keeps_exactly_one_chosen():
    group = genre_exclusive(GENRES, ["Sci-Fi", "Horror"])
    # item 2 has both chosen genres, item 3 none: both dropped (-1); other genres do not matter.
    np.testing.assert_array_equal(group, [0, 1, -1, -1, 1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sets(st.sampled_from("ABCDE"), min_size=1), min_size=1, max_size=30))
def test_genre_exclusive_property(rows):
    rows = [tuple(sorted(r)) for r in rows]
    vocab = sorted({g for r in rows for g in r})
    chosen = vocab[:2]
    group = genre_exclusive(rows, chosen)
    for row, g in zip(rows, group):
        hits = [c for c in chosen if c in row]
        assert (g == -1) == (len(hits) != 1)
        if g >= 0:
            assert chosen[g] == hits[0]


def test_genre_multi_rows_sum_to_one():
    indptr, indices, weights, names = genre_multi(GENRES)
    dense = np.zeros((len(GENRES), len(names)))
    rows = np.repeat(np.arange(len(GENRES)), np.diff(indptr))
    dense[rows, indices] = weights
    np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-6)
    assert names[indices[indptr[0]]] == "Sci-Fi"  # a row lists groups in the item's genre order
    np.testing.assert_allclose(dense[4, names.index("Drama")], 1 / 3, rtol=1e-6)


def test_genre_multi_subset_and_errors():
    with pytest.raises(ValueError, match="none of the genres"):
        genre_multi(GENRES, ["Horror"])
    with pytest.raises(ValueError, match=r"\['Western'\] not present.*available"):
        genre_exclusive(GENRES, ["Horror", "Western"])
    with pytest.raises(ValueError, match="no genre"):
        genre_first([("A",), ()])


def test_quantile_groups_equal_sizes_and_order():
    counts = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 0])
    group = quantile_groups(counts, 5)
    assert np.bincount(group).tolist() == [2] * 5
    assert group[np.argmax(counts)] == 4 and group[np.argmin(counts)] == 0
    order = np.argsort(counts)
    assert np.all(np.diff(group[order]) >= 0)  # monotone in popularity


def test_user_groups():
    group, names = age_groups([1, 17, 18, 24, 25, 56, 73])
    assert names == ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
    np.testing.assert_array_equal(group, [0, 0, 1, 1, 2, 6, 6])
    group, names = categorical_groups(["M", "F", "M"], "gender")
    assert names == ["F", "M"] and group.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="'gender' is missing"):
        categorical_groups(["M", None], "gender")


def test_intersectional():
    cell = intersectional(np.array([0, 1, 1]), np.array([2, 0, 3]), num_item_groups=4)
    assert cell.tolist() == [2, 4, 7]
