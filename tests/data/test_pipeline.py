"""``prepare`` on small hand-written atomic files: duplicate rows, malformed side files, empty groups."""

import numpy as np
import pytest

from fairlit.data import prepare, read_atomic_dir

INTER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
# Two users with the same four items, one row per pair; every split part gets a row per user.
ROWS = [["a", "x", 5, 10], ["a", "y", 5, 11], ["a", "z", 5, 12], ["a", "w", 5, 13],
        ["b", "x", 5, 20], ["b", "y", 5, 21], ["b", "z", 5, 22], ["b", "w", 5, 23]]
ITEMS = [["x", "A"], ["y", "A B"], ["z", "A"], ["w", "C"]]


@pytest.fixture
def write(tmp_path, atomic_writer):
    """Write dataset ``d`` (``.inter`` rows, optional ``.item``/``.user`` rows and headers); return its folder."""

    def write_dataset(rows=ROWS, items=None, users=None, inter_header=INTER,
                      item_header=("item_id:token", "genre:token_seq"), user_header=("user_id:token", "age:float")):
        folder = tmp_path / "d"
        folder.mkdir(exist_ok=True)
        atomic_writer(folder / "d.inter", list(inter_header), rows)
        if items is not None:
            atomic_writer(folder / "d.item", list(item_header), items)
        if users is not None:
            atomic_writer(folder / "d.user", list(user_header), users)
        return folder

    return write_dataset


def test_duplicate_pairs_keep_the_earliest_row_after_the_rating_threshold(write):
    # (a, x) again, earlier: this row is kept. (b, y) again, earlier but below the threshold: filtered before
    # duplicates are looked for, so the t=21 row stays. (b, z) again, later: dropped.
    rows = ROWS + [["a", "x", 5, 1], ["b", "y", 1, 0], ["b", "z", 5, 30]]
    with pytest.warns(UserWarning, match=r"d\.inter: dropped 2 row\(s\) repeating a \(user_id, item_id\) pair"):
        out = prepare(read_atomic_dir(write(rows)), rating_threshold=3)
    pairs = list(zip(out.user_tokens[out.user], out.item_tokens[out.item]))
    assert len(pairs) == len(set(pairs)) == len(ROWS)
    time = dict(zip(pairs, out.time))
    assert (time[("a", "x")], time[("b", "y")], time[("b", "z")]) == (1, 21, 22)


def test_repeated_item_id_in_item_file(write):
    with pytest.raises(ValueError, match=r"d\.item: column 'item_id' repeats 1 id\(s\), e\.g\. 'x'; expected one row"):
        prepare(read_atomic_dir(write(items=ITEMS + [["x", "C"]])), item_group="genre_first")


def test_timestamp_that_is_not_a_number(write):
    rows = [r[:3] + ["yesterday" if k == 2 else r[3]] for k, r in enumerate(ROWS)]
    data = read_atomic_dir(write(rows, inter_header=INTER[:3] + ["timestamp:token"]))
    with pytest.raises(ValueError, match=r"d\.inter: column 'timestamp' holds 1 value\(s\) .* e\.g\. 'yesterday'"):
        prepare(data, split="chrono")


def test_item_without_genre_names_file_column_and_id(write):
    items = [["x", "A"], ["y", "A B"], ["z", ""], ["w", "C"]]
    for mode in ("genre_first", "genre_multi"):
        with pytest.raises(ValueError, match=r"d\.item: column 'genre' is empty for 1 item\(s\), e\.g\. item_id \['z"):
            prepare(read_atomic_dir(write(items=items)), item_group=mode)


def test_genre_token_column_holds_one_genre(write):
    data = read_atomic_dir(write(items=[["x", "Comedy"], ["y", "Drama"], ["z", "Comedy"], ["w", "Drama"]],
                                 item_header=("item_id:token", "genre:token")))
    out = prepare(data, item_group="genre_first")
    assert out.item_group_names == ["Comedy", "Drama"]  # not the letters of one genre


def test_age_bucket_without_users(write):
    data = read_atomic_dir(write(users=[["a", 20], ["b", 30]]))
    assert np.bincount(prepare(data, user_group="age", age_edges=(25,)).user_group).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"user_group='age' with age_edges \[25, 90\]: user group\(s\) \['90\+'\] "
                                         r"have no user \(group sizes \{'<25': 1, '25-89': 1, '90\+': 0\}\)"):
        prepare(data, user_group="age", age_edges=(25, 90))


def test_exclusive_genre_group_left_without_items(write):
    # Every "B" item also carries "A", so the exclusive rule drops it.
    with pytest.raises(ValueError, match=r"item_group='genre_exclusive' with item_group_genres \['A', 'B'\] after "
                                         r"filtering: item group\(s\) \['B'\] have no item"):
        prepare(read_atomic_dir(write(items=ITEMS)), item_group="genre_exclusive", item_group_genres=["A", "B"])


def test_split_that_leaves_a_part_empty(write):
    rows = [["a", "x", 5, 1], ["a", "y", 5, 2], ["b", "x", 5, 3], ["b", "z", 5, 4]]
    with pytest.raises(ValueError, match="split 'leave_one_out' .* left the valid part empty"):
        prepare(read_atomic_dir(write(rows)), split="leave_one_out")
