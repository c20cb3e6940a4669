"""From raw atomic frames to re-indexed interactions, groups and split indices (no torch, no Lightning)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairlit.data import groups as G
from fairlit.data.atomic import AtomicData
from fairlit.data.preprocess import binarize, check_columns, drop_duplicate_pairs, k_core, reindex
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

    Checks: ``user``/``item`` are 1-D integer arrays of one length N with ids in ``[0, U)`` / ``[0, I)``
    (U, I = number of tokens) and ``time`` holds N finite numbers; ``parts`` are three non-empty, disjoint
    arrays of row indices in ``[0, N)``; group vectors are integer, of length I / U, with ids in
    ``[0, number of group names)`` and no group without members; ``item_group_csr`` has I + 1 non-decreasing
    offsets from 0, group ids in range and finite, non-negative weights.
    """
    n = len(prep.user)
    _check_ids("user", prep.user, n, len(prep.user_tokens), "the number of user_tokens")
    _check_ids("item", prep.item, n, len(prep.item_tokens), "the number of item_tokens")
    time = np.asarray(prep.time)
    if time.shape != (n,) or not np.issubdtype(time.dtype, np.number):
        raise ValueError(f"Prepared.time: expected a 1-D numeric array of length {n} (= len(user)), got shape "
                         f"{time.shape} dtype {time.dtype}")
    bad = np.flatnonzero(~np.isfinite(time))
    if len(bad):
        raise ValueError(f"Prepared.time: expected finite times, got {len(bad)} NaN/inf (first at row {bad[0]})")
    if len(prep.parts) != len(SPLIT_NAMES):
        raise ValueError(f"Prepared.parts: expected {len(SPLIT_NAMES)} row-index arrays {SPLIT_NAMES}, got "
                         f"{len(prep.parts)}")
    for name, part in zip(SPLIT_NAMES, prep.parts):
        if len(part) == 0:
            raise ValueError(f"Prepared.parts: the {name} part is empty")
        _check_ids(f"parts[{name}]", part, len(part), n, "the number of rows")
    repeated = np.flatnonzero(np.bincount(np.concatenate(prep.parts), minlength=n) > 1)
    if len(repeated):
        row = repeated[0]
        raise ValueError(f"Prepared.parts: row {row} is listed more than once, in "
                         f"{[name for name, part in zip(SPLIT_NAMES, prep.parts) if row in part]}; expected "
                         "disjoint parts")
    for side, groups, names, size in (("item", prep.item_group, prep.item_group_names, len(prep.item_tokens)),
                                      ("user", prep.user_group, prep.user_group_names, len(prep.user_tokens))):
        if groups is not None:
            _check_ids(f"{side}_group", groups, size, len(names), f"the number of {side}_group_names")
            # With a CSR, item_group is each item's first group: a group may be nobody's first (genre_multi).
            if side == "user" or prep.item_group_csr is None:
                _check_no_empty_group(groups, names, side, f"Prepared.{side}_group")
    if prep.item_group_csr is not None:
        _check_group_csr(prep.item_group_csr, len(prep.item_tokens), prep.item_group_names)


def _check_ids(field: str, ids: np.ndarray, length: int, bound: int, bound_what: str) -> None:
    """Raise naming ``Prepared.<field>`` unless ``ids`` is a 1-D integer array of ``length`` ids in
    ``[0, bound)``."""
    ids = np.asarray(ids)
    if ids.shape != (length,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"Prepared.{field}: expected a 1-D integer array of length {length}, got shape "
                         f"{ids.shape} dtype {ids.dtype}")
    if length and (ids.min() < 0 or ids.max() >= bound):
        raise ValueError(f"Prepared.{field}: ids must lie in [0, {bound}) ({bound_what}), got "
                         f"[{ids.min()}, {ids.max()}]")


def _check_group_csr(csr: tuple[np.ndarray, np.ndarray, np.ndarray], num_items: int, names: Sequence[str]) -> None:
    """Raise naming ``Prepared.item_group_csr`` unless ``csr`` is an item->group CSR over ``num_items`` items."""
    indptr, indices, weights = (np.asarray(a) for a in csr)
    if (indptr.shape != (num_items + 1,) or not np.issubdtype(indptr.dtype, np.integer) or indptr[0] != 0
            or (np.diff(indptr) < 0).any()):
        raise ValueError(f"Prepared.item_group_csr: expected {num_items + 1} non-decreasing integer offsets from 0 "
                         f"(indptr), got shape {indptr.shape} dtype {indptr.dtype}")
    _check_ids("item_group_csr indices", indices, int(indptr[-1]), len(names), "the number of item_group_names")
    if weights.shape != indices.shape or not np.issubdtype(weights.dtype, np.number):
        raise ValueError(f"Prepared.item_group_csr: expected {len(indices)} numeric weights (one per group id), "
                         f"got shape {weights.shape} dtype {weights.dtype}")
    bad = np.flatnonzero(~(np.isfinite(weights) & (weights >= 0)))
    if len(bad):
        raise ValueError(f"Prepared.item_group_csr: expected finite weights >= 0, got {len(bad)} that are not, e.g. "
                         f"{weights[bad[0]]} (entry {bad[0]})")
    _check_no_empty_group(indices, names, "item", "Prepared.item_group_csr")


def check_at_least(name: str, value: float, minimum: float) -> None:
    """Raise a ``ValueError`` naming the argument ``name`` unless ``value`` is a finite number >= ``minimum``."""
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{name}={value!r}: expected a finite number >= {minimum}")


def _choice(value: str | None, allowed: Sequence[str], what: str) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{what}={value!r} is not one of {list(allowed)}")


def _check_options(split: str, split_ratios: Sequence[float], item_group: str | None, user_group: str | None,
                   num_quantile_groups: int, age_edges: Sequence[float], item_group_min_size: int) -> None:
    """Raise a ``ValueError`` naming the first preprocessing argument of :func:`prepare` that is out of range."""
    _choice(split, SPLITS, "split")
    _choice(item_group, ITEM_GROUPS, "item_group")
    _choice(user_group, USER_GROUPS, "user_group")
    # Every part must get rows: the data module validates (and checkpoints) on the valid part, tests on the
    # test part. split_counts normalises the ratios by their sum.
    ratios = np.asarray(split_ratios, dtype=np.float64)
    if ratios.shape != (len(SPLIT_NAMES),) or not np.isfinite(ratios).all() or (ratios <= 0).any():
        raise ValueError(f"split_ratios={list(split_ratios)}: expected three finite ratios > 0 for the train, "
                         "valid and test parts (normalised by their sum)")
    edges = np.asarray(age_edges, dtype=np.float64)
    if edges.ndim != 1 or not len(edges) or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
        raise ValueError(f"age_edges={list(age_edges)}: expected finite, strictly increasing bucket lower bounds")
    check_at_least("num_quantile_groups", num_quantile_groups, 1)
    check_at_least("item_group_min_size", item_group_min_size, 0)


def _check_no_empty_group(members: np.ndarray, names: Sequence[str], entity: str, what: str) -> None:
    """Raise a ``ValueError`` starting with ``what`` (the option or field that made the groups) if a group of
    ``names`` has no member; ``members`` holds the group id of every (``entity``, group) membership."""
    size = np.bincount(np.asarray(members, dtype=np.int64), minlength=len(names))
    empty = [names[g] for g in np.flatnonzero(size == 0)]
    if empty:
        raise ValueError(f"{what}: {entity} group(s) {empty} have no {entity} (group sizes "
                         f"{dict(zip(names, size.tolist()))}); expected at least one {entity} in every group")


def _side_column(table: pd.DataFrame | None, key: str, column: str, tokens: np.ndarray,
                 file: str) -> np.ndarray:
    """Values of ``column`` for each token, from the ``.user``/``.item`` table keyed by ``key``."""
    if table is None:
        raise FileNotFoundError(f"{file} not found: needed for column {column!r}")
    if column not in table.columns:
        raise ValueError(f"{file}: missing column {column!r}; found {list(table.columns)}")
    # RecBole joins side features onto interactions by id, and its side files hold one row per id; with two
    # rows for an id, which features the id gets would be arbitrary.
    repeated = table[key][table[key].duplicated()]
    if len(repeated):
        raise ValueError(f"{file}: column {key!r} repeats {len(repeated)} id(s), e.g. {repeated.iloc[0]!r}; "
                         f"expected one row per {key}")
    values = table.set_index(key)[column].reindex(tokens)
    if values.isna().any():
        bad = tokens[values.isna().to_numpy()][:5]
        raise ValueError(f"{file}: no {column!r} value for {int(values.isna().sum())} id(s), e.g. {list(bad)}")
    return values.to_numpy()


def _genres(data: AtomicData, tokens: np.ndarray, genre_field: str) -> list[tuple[str, ...]]:
    """The genre names of each item token from the ``.item`` file (a ``:token`` column holds one genre)."""
    values = _side_column(data.item, "item_id", genre_field, tokens, f"{data.name}.item")
    return [(v,) if isinstance(v, str) else tuple(v) for v in values]


def _timestamps(inter: pd.DataFrame, inter_file: str) -> np.ndarray:
    """[N] float64 ``timestamp`` column of ``inter``, or the row positions (file order) when it has none."""
    if "timestamp" not in inter.columns:
        return np.arange(len(inter), dtype=np.float64)
    # A timestamp:token column arrives as text; times order the splits, histories and duplicate removal.
    time = pd.to_numeric(inter["timestamp"], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(time))
    if len(bad):
        raise ValueError(f"{inter_file}: column 'timestamp' holds {len(bad)} value(s) that are not finite numbers, "
                         f"e.g. {str(inter['timestamp'].iloc[bad[0]])!r}; expected a number in every row")
    return time


def prepare(data: AtomicData, *, rating_threshold: float | None = None, user_core: int = 0,
            item_core: int = 0, core_iterated: bool = True, split: str = "random",
            split_ratios: Sequence[float] = (0.8, 0.1, 0.1), item_group: str | None = None,
            item_group_genres: Sequence[str] | None = None, genre_field: str = "genre",
            user_group: str | None = None, num_quantile_groups: int = 2,
            age_edges: Sequence[float] = G.DEFAULT_AGE_EDGES, seed: int = 2020,
            item_group_min_size: int = 0) -> Prepared:
    """Run the whole preprocessing pipeline; see :class:`~fairlit.data.datamodule.RecDataModule`.

    Order: option, NaN/column and timestamp checks, rating threshold, duplicate (user, item) pairs (the
    earliest row is kept, with a warning naming the ``.inter`` file), exclusive-genre item filter, k-core,
    re-index, groups, split. Popularity/activity groups use counts over all kept interactions (not only
    training).

    Raises:
        ValueError: bad option, missing column, NaN, unknown genre, an empty group or an empty split.
    """
    _check_options(split, split_ratios, item_group, user_group, num_quantile_groups, age_edges, item_group_min_size)
    inter_file = f"{data.name}.inter"
    required = ["user_id", "item_id"]
    required += ["rating"] if rating_threshold is not None else []
    required += ["timestamp"] if split in ("chrono", "leave_one_out") else []
    check_columns(data.inter, tuple(required), inter_file)
    inter = data.inter
    raw = {"raw_interactions": len(inter), "raw_users": int(inter["user_id"].nunique()),
           "raw_items": int(inter["item_id"].nunique())}
    inter = inter.assign(timestamp=_timestamps(inter, inter_file))
    if rating_threshold is not None:
        inter = binarize(inter, rating_threshold)
    unique = drop_duplicate_pairs(inter)
    if len(unique) < len(inter):
        warnings.warn(f"{inter_file}: dropped {len(inter) - len(unique)} row(s) repeating a (user_id, item_id) "
                      "pair; each pair keeps its earliest interaction", stacklevel=2)
    inter = unique
    exclusive = None  # genre_exclusive: group of each item token, -1 for the items it drops
    if item_group == "genre_exclusive":
        if not item_group_genres:
            raise ValueError("item_group='genre_exclusive' needs item_group_genres, e.g. ['Sci-Fi', 'Horror']")
        tokens = inter["item_id"].unique()
        exclusive = pd.Series(G.genre_exclusive(_genres(data, tokens, genre_field), item_group_genres), index=tokens)
        inter = inter[inter["item_id"].map(exclusive).to_numpy() >= 0]
    inter = k_core(inter, user_core, item_core, iterated=core_iterated)
    if inter.empty:
        raise ValueError(f"{inter_file}: no interaction left after the rating threshold / genre / k-core filters")
    user, item, user_tokens, item_tokens = reindex(inter)
    time = inter["timestamp"].to_numpy()
    out = Prepared(user=user, item=item, time=time, user_tokens=user_tokens, item_tokens=item_tokens,
                   parts=[], raw=raw)
    _item_groups(out, data, item_group, item_group_genres, genre_field, num_quantile_groups, item_group_min_size,
                 exclusive)
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


def _quantile_groups(counts: np.ndarray, num_groups: int, entity: str) -> tuple[np.ndarray, list[str]]:
    """``(group, names)`` of :func:`~fairlit.data.groups.quantile_groups` over the ``entity`` (item, user)
    counts."""
    if num_groups > len(counts):
        raise ValueError(f"num_quantile_groups={num_groups}: expected at most one quantile group per {entity}, and "
                         f"{len(counts)} {entity}s are left after filtering")
    return G.quantile_groups(counts, num_groups), [f"q{g}" for g in range(num_groups)]


def _item_groups(out: Prepared, data: AtomicData, mode: str | None, genres: Sequence[str] | None,
                 genre_field: str, num_groups: int, min_size: int, exclusive: pd.Series | None) -> None:
    """Set ``out``'s item groups for ``mode`` (``exclusive``: genre_exclusive's group per token), then merge the
    groups smaller than ``min_size``."""
    if mode is None:
        return
    num_items = len(out.item_tokens)
    if mode == "popularity":
        out.item_group, out.item_group_names = _quantile_groups(np.bincount(out.item, minlength=num_items),
                                                                num_groups, "item")
    elif mode == "genre_exclusive":
        out.item_group, out.item_group_names = exclusive.loc[out.item_tokens].to_numpy(copy=True), list(genres)
    else:
        values = _genres(data, out.item_tokens, genre_field)
        empty = [token for token, row in zip(out.item_tokens, values) if not row]
        if empty:
            raise ValueError(f"{data.name}.item: column {genre_field!r} is empty for {len(empty)} item(s), e.g. "
                             f"item_id {empty[:5]}; item_group={mode!r} needs at least one genre per item")
        if mode == "genre_first":
            out.item_group, out.item_group_names = G.genre_first(values)
        else:
            indptr, indices, weights, out.item_group_names = G.genre_multi(values, genres)
            out.item_group_csr = (indptr, indices, weights)
            out.item_group = indices[indptr[:-1]]  # first of the item's groups, for single-label consumers
    if out.item_group_csr is None:
        out.item_group_csr = single_group_csr(out.item_group)
    # Only genre_exclusive can leave a group empty: its rule or the k-core may drop every item of a chosen genre.
    what = f"item_group={mode!r}" + (f" with item_group_genres {list(genres)}" if genres else "")
    _check_no_empty_group(out.item_group_csr[1], out.item_group_names, "item", what + " after filtering")
    size = np.bincount(out.item_group_csr[1], minlength=len(out.item_group_names))
    if min_size > size.max():
        raise ValueError(f"item_group_min_size={min_size} would merge every item group into one (group sizes "
                         f"{dict(zip(out.item_group_names, size.tolist()))}); expected at most the largest size")
    if min_size > 0:
        indptr, indices, weights, out.item_group_names = G.merge_small_groups(*out.item_group_csr,
                                                                              out.item_group_names, min_size)
        out.item_group_csr, out.item_group = (indptr, indices, weights), indices[indptr[:-1]]


def single_group_csr(item_group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item->group CSR ``(indptr [I+1], indices [I], weights [I])`` of one group per item, weight 1."""
    item_group = np.asarray(item_group, dtype=np.int64)
    return np.arange(len(item_group) + 1), item_group, np.ones(len(item_group), np.float32)


def _user_groups(out: Prepared, data: AtomicData, mode: str | None, num_groups: int,
                 age_edges: Sequence[float]) -> None:
    """Set ``out``'s user groups for ``mode``."""
    if mode is None:
        return
    if mode == "activity":
        counts = np.bincount(out.user, minlength=len(out.user_tokens))
        out.user_group, out.user_group_names = _quantile_groups(counts, num_groups, "user")
        return
    values = _side_column(data.user, "user_id", mode, out.user_tokens, f"{data.name}.user")
    if mode == "age":
        try:
            ages = values.astype(np.float64)
        except ValueError:
            raise ValueError(f"{data.name}.user: column 'age' must be numeric") from None
        out.user_group, out.user_group_names = G.age_groups(ages, age_edges)
        _check_no_empty_group(out.user_group, out.user_group_names, "user",
                              f"user_group='age' with age_edges {list(age_edges)}")
    else:
        out.user_group, out.user_group_names = G.categorical_groups(values, mode)
