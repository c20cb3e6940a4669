"""Reader for RecBole atomic files (``<name>.inter``, ``<name>.user``, ``<name>.item``).

An atomic file is tab-separated; each header cell is ``name:type`` with type one of ``token`` (kept as
``str``), ``float`` (``float64``), ``token_seq`` (space-separated, parsed to a ``tuple[str, ...]``) or
``float_seq`` (space-separated, parsed to a ``numpy.ndarray`` of ``float64``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ATOMIC_TYPES = ("token", "float", "token_seq", "float_seq")


@dataclass
class AtomicData:
    """The frames of one atomic dataset; ``user``/``item`` are ``None`` when their file is absent.

    Attributes:
        name: dataset name (the file stem).
        inter: interactions, one row per line of ``<name>.inter``.
        user: user features keyed by ``user_id`` or ``None``.
        item: item features keyed by ``item_id`` or ``None``.
    """

    name: str
    inter: pd.DataFrame
    user: pd.DataFrame | None = None
    item: pd.DataFrame | None = None


def _parse_header(path: Path, header: list[str]) -> dict[str, str]:
    """``{column name: atomic type}`` of the header cells, in file order."""
    types = {}
    for cell in header:
        name, sep, kind = cell.partition(":")
        if not sep or kind not in ATOMIC_TYPES:
            raise ValueError(
                f"{path}: header cell {cell!r} must be 'name:type' with type in {ATOMIC_TYPES}"
            )
        if name in types:
            raise ValueError(f"{path}: column {name!r} appears twice in the header {header}; expected distinct names")
        types[name] = kind
    return types


def read_atomic(path: str | Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one atomic file into a DataFrame with plain column names (types stripped from the header).

    Args:
        path: the ``.inter``/``.user``/``.item`` file.
        required: column names that must be present.

    Returns:
        DataFrame with one column per header cell, typed as described in the module docstring.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: an empty file, a malformed or repeated header cell, a line with more fields than the header,
            a missing required column or an unparsable float.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"atomic file not found: {path}")
    # Everything is read as text first: token ids such as "007" must not become numbers. The header is read
    # as a row (header=None) so that it fixes the number of fields: pandas then rejects a longer data line,
    # where with header=0 a longer first data line silently turns the first column into the index, and
    # duplicate header cells reach _parse_header as written instead of renamed "name.1".
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, na_values=[""],
                            quoting=3, engine="c")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; expected a 'name:type' header line") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: {str(err).strip()}; expected at most as many tab-separated fields per line as "
                         "the header has") from None
    types = _parse_header(path, table.iloc[0].fillna("").tolist())
    frame = table.iloc[1:].reset_index(drop=True)
    frame.columns = list(types)
    missing = [c for c in required if c not in types]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(required)}, found {list(types)}")
    for name, kind in types.items():
        col = frame[name]
        if kind == "float":
            try:
                frame[name] = col.astype("float64")
            except ValueError as err:
                raise ValueError(f"{path}: column {name!r} is declared float but holds text: {err}") from None
        elif kind == "token_seq":
            frame[name] = [tuple(v.split()) if isinstance(v, str) else () for v in col]
        elif kind == "float_seq":
            frame[name] = [np.array(v.split(), dtype=np.float64) if isinstance(v, str) else np.zeros(0)
                           for v in col]
        else:
            frame[name] = col.astype(object)
    return frame


def read_atomic_dir(directory: str | Path, name: str | None = None) -> AtomicData:
    """Read ``<name>.inter`` (required) and the optional ``<name>.user``/``<name>.item`` from a directory.

    Args:
        directory: folder holding the atomic files.
        name: file stem; defaults to the folder name (RecBole's layout ``<data_path>/<name>/<name>.inter``).

    Returns:
        The parsed :class:`AtomicData`; ``inter`` has at least ``user_id`` and ``item_id``.
    """
    directory = Path(directory)
    name = name or directory.name
    inter_path = directory / f"{name}.inter"
    if not inter_path.is_file():
        raise FileNotFoundError(f"{inter_path} not found: a dataset directory needs '<name>.inter'")
    inter = read_atomic(inter_path, required=("user_id", "item_id"))
    user_path, item_path = directory / f"{name}.user", directory / f"{name}.item"
    user = read_atomic(user_path, required=("user_id",)) if user_path.is_file() else None
    item = read_atomic(item_path, required=("item_id",)) if item_path.is_file() else None
    return AtomicData(name=name, inter=inter, user=user, item=item)
