"""From raw atomic frames to re-indexed interactions, groups and split indices (no torch, no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairlit.data import groups as G
from fairlit.data.atomic import AtomicData
from fairlit.data.preprocess import binarize, check_columns, k_core, reindex
from fairlit.data.splits import split_chrono_global, split_leave_one_out, split_random_ratio

ITEM_GROUPS = ("genre_first", "genre_exclusive", "genre_multi", "popularity")
USER_GROUPS = ("gender", "age", "occupation", "activity")
SPLITS = ("random", "chrono", "leave_one_out")
SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Prepared:
    """Preprocessed interactions (N rows) with groups and splits; ids are ``0..U-1`` / ``0..I-1``.

    Attributes:
        user, item: [N] int64.
        time: [N] float64 timestamps (file order when the data has none).
        user_tokens, item_tokens: original id of each index.
        parts: ``[train, valid, test]`` row-index arrays.
        item_group, user_group: [I] / [U] int64 group ids or ``None``.
        item_group_names, user_group_names: group labels.
        item_group_csr: ``(indptr [I+1], indices, weights)`` item->group membership or ``None``.
        raw: raw row/user/item counts before any filtering.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    user_tokens: np.ndarray
    item_tokens: np.ndarray
    parts: list[np.ndarray]
    item_group: np.ndarray | None = None
    item_group_names: list[str] = field(default_factory=list)
    item_group_csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    user_group: np.ndarray | None = None
    user_group_names: list[str] = field(default_factory=list)
    raw: dict[str, int] = field(default_factory=dict)


def check_prepared(prep: Prepared) -> None:
    """Raise a ``ValueError`` naming the field if ``prep`` is not a consistent :class:`Prepared`.

    Checks: ``user``/``item``/``time`` are 1-D of one length N with integer ids in ``[0, U)`` / ``[0, I)``
    (U, I = number of tokens); three non-empty ``parts`` of row indices in ``[0, N)``; group vectors of
    length I / U with ids in ``[0, number of group names)``; an item-group CSR with I + 1 offsets.
    """
    n = len(prep.user)
    for name, ids, size in (("user", prep.user, len(prep.user_tokens)), ("item", prep.item, len(prep.item_tokens))):
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != n or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"Prepared.{name}: expected a 1-D integer array of length {n} (= len(user)), got "
                             f"shape {ids.shape} dtype {ids.dtype}")
        if n and (ids.min() < 0 or ids.max() >= size):
            raise ValueError(f"Prepared.{name}: ids must lie in [0, {size}) (the number of {name}_tokens), got "
                             f"[{ids.min()}, {ids.max()}]")
    if len(prep.time) != n:
        raise ValueError(f"Prepared.time: expected length {n}, got {len(prep.time)}")
    if len(prep.parts) != len(SPLIT_NAMES):
        raise ValueError(f"Prepared.parts: expected {len(SPLIT_NAMES)} row-index arrays {SPLIT_NAMES}, got "
                         f"{len(prep.parts)}")
    for name, part in zip(SPLIT_NAMES, prep.parts):
        part = np.asarray(part)
        if len(part) == 0:
            raise ValueError(f"Prepared.parts: the {name} part is empty")
        if not np.issubdtype(part.dtype, np.integer) or part.min() < 0 or part.max() >= n:
            raise ValueError(f"Prepared.parts[{name}]: expected integer row indices in [0, {n})")
    for side, groups, names, size in (("item", prep.item_group, prep.item_group_names, len(prep.item_tokens)),
                                      ("user", prep.user_group, prep.user_group_names, len(prep.user_tokens))):
        if groups is None:
            continue
        groups = np.asarray(groups)
        if len(groups) != size or (size and (groups.min() < 0 or groups.max() >= len(names))):
            raise ValueError(f"Prepared.{side}_group: expected {size} ids in [0, {len(names)}) (the number of "
                             f"{side}_group_names), got length {len(groups)}")
    if prep.item_group_csr is not None and len(prep.item_group_csr[0]) != len(prep.item_tokens) + 1:
        raise ValueError(f"Prepared.item_group_csr: expected {len(prep.item_tokens) + 1} offsets, got "
                         f"{len(prep.item_group_csr[0])}")


def _choice(value: str | None, allowed: Sequence[str], what: str) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{what}={value!r} is not one of {list(allowed)}")


def _side_column(table: pd.DataFrame | None, key: str, column: str, tokens: np.ndarray,
                 file: str) -> np.ndarray:
    """Values of ``column`` for each token, from the ``.user``/``.item`` table keyed by ``key``."""
    if table is None:
        raise FileNotFoundError(f"{file} not found: needed for column {column!r}")
    if column not in table.columns:
        raise ValueError(f"{file}: missing column {column!r}; found {list(table.columns)}")
    values = table.drop_duplicates(key).set_index(key)[column].reindex(tokens)
    if values.isna().any():
        bad = tokens[values.isna().to_numpy()][:5]
        raise ValueError(f"{file}: no {column!r} value for {int(values.isna().sum())} id(s), e.g. {list(bad)}")
    return values.to_numpy()


def prepare(data: AtomicData, *, rating_threshold: float | None = None, user_core: int = 0,
            item_core: int = 0, core_iterated: bool = True, split: str = "random",
            split_ratios: Sequence[float] = (0.8, 0.1, 0.1), item_group: str | None = None,
            item_group_genres: Sequence[str] | None = None, genre_field: str = "genre",
            user_group: str | None = None, num_quantile_groups: int = 2,
            age_edges: Sequence[float] = G.DEFAULT_AGE_EDGES, seed: int = 2020,
            item_group_min_size: int = 0) -> Prepared:
    """Run the whole preprocessing pipeline; see :class:`~fairlit.data.datamodule.RecDataModule`.

    Order: NaN/column checks, rating threshold, exclusive-genre item filter, k-core, re-index, groups,
    split. Popularity/activity groups use counts over all kept interactions (not only training).

    Raises:
        ValueError: bad option, missing column, NaN, unknown genre, or an empty split.
    """
    _choice(split, SPLITS, "split")
    _choice(item_group, ITEM_GROUPS, "item_group")
    _choice(user_group, USER_GROUPS, "user_group")
    inter_file = f"{data.name}.inter"
    required = ["user_id", "item_id"]
    required += ["rating"] if rating_threshold is not None else []
    required += ["timestamp"] if split in ("chrono", "leave_one_out") else []
    check_columns(data.inter, tuple(required), inter_file)
    inter = data.inter
    raw = {"raw_interactions": len(inter), "raw_users": int(inter["user_id"].nunique()),
           "raw_items": int(inter["item_id"].nunique())}
    if rating_threshold is not None:
        inter = binarize(inter, rating_threshold)
    item_file = f"{data.name}.item"
    if item_group == "genre_exclusive":
        if not item_group_genres:
            raise ValueError("item_group='genre_exclusive' needs item_group_genres, e.g. ['Sci-Fi', 'Horror']")
        tokens = inter["item_id"].unique()
        ex = G.genre_exclusive(_side_column(data.item, "item_id", genre_field, tokens, item_file),
                               item_group_genres)
        inter = inter[inter["item_id"].isin(tokens[ex >= 0])]
    inter = k_core(inter, user_core, item_core, iterated=core_iterated)
    if inter.empty:
        raise ValueError("no interaction left after the rating threshold / genre / k-core filters")
    user, item, user_tokens, item_tokens = reindex(inter)
    time = (inter["timestamp"].to_numpy(np.float64) if "timestamp" in inter.columns
            else np.arange(len(inter), dtype=np.float64))
    out = Prepared(user=user, item=item, time=time, user_tokens=user_tokens, item_tokens=item_tokens,
                   parts=[], raw=raw)
    _item_groups(out, data, item_group, item_group_genres, genre_field, num_quantile_groups)
    if item_group_min_size > 0 and out.item_group_csr is not None:
        indptr, indices, weights, out.item_group_names = G.merge_small_groups(
            *out.item_group_csr, out.item_group_names, item_group_min_size)
        out.item_group_csr, out.item_group = (indptr, indices, weights), indices[indptr[:-1]]
    _user_groups(out, data, user_group, num_quantile_groups, age_edges)
    if split == "random":
        out.parts = split_random_ratio(user, split_ratios, seed)
    elif split == "chrono":
        out.parts = split_chrono_global(time, split_ratios)
    else:
        out.parts = split_leave_one_out(user, time)
    for name, part in zip(SPLIT_NAMES, out.parts):
        if len(part) == 0:
            raise ValueError(f"split {split!r} with ratios {list(split_ratios)} left the {name} part empty")
    return out


def _item_groups(out: Prepared, data: AtomicData, mode: str | None, genres: Sequence[str] | None,
                 genre_field: str, num_groups: int) -> None:
    if mode is None:
        return
    num_items = len(out.item_tokens)
    if mode == "popularity":
        out.item_group = G.quantile_groups(np.bincount(out.item, minlength=num_items), num_groups)
        out.item_group_names = [f"q{g}" for g in range(num_groups)]
    else:
        values = _side_column(data.item, "item_id", genre_field, out.item_tokens, f"{data.name}.item")
        if mode == "genre_first":
            out.item_group, out.item_group_names = G.genre_first(values)
        elif mode == "genre_exclusive":
            out.item_group, out.item_group_names = G.genre_exclusive(values, genres), list(genres)
        else:
            indptr, indices, weights, out.item_group_names = G.genre_multi(values, genres)
            out.item_group_csr = (indptr, indices, weights)
            out.item_group = indices[indptr[:-1]]  # first of the item's groups, for single-label consumers
    if out.item_group_csr is None:
        out.item_group_csr = single_group_csr(out.item_group)


def single_group_csr(item_group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item->group CSR ``(indptr [I+1], indices [I], weights [I])`` of one group per item, weight 1."""
    item_group = np.asarray(item_group, dtype=np.int64)
    return np.arange(len(item_group) + 1), item_group, np.ones(len(item_group), np.float32)


def _user_groups(out: Prepared, data: AtomicData, mode: str | None, num_groups: int,
                 age_edges: Sequence[float]) -> None:
    if mode is None:
        return
    if mode == "activity":
        counts = np.bincount(out.user, minlength=len(out.user_tokens))
        out.user_group = G.quantile_groups(counts, num_groups)
        out.user_group_names = [f"q{g}" for g in range(num_groups)]
        return
    values = _side_column(data.user, "user_id", mode, out.user_tokens, f"{data.name}.user")
    if mode == "age":
        try:
            ages = values.astype(np.float64)
        except ValueError:
            raise ValueError(f"{data.name}.user: column 'age' must be numeric") from None
        out.user_group, out.user_group_names = G.age_groups(ages, age_edges)
    else:
        out.user_group, out.user_group_names = G.categorical_groups(values, mode)
