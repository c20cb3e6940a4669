"""Item and user group assignments for fairness metrics and methods.

Every function returns int64 group ids in ``0..G-1`` plus the group names, so that ``names[g]`` labels
group ``g``. Inputs are per-entity arrays already aligned with the re-indexed users or items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Bucket lower bounds of ML-1M's age codes; on raw ages (ML-100K) they give the same seven buckets.
DEFAULT_AGE_EDGES = (18, 25, 35, 45, 50, 56)


def _vocabulary(genres: Sequence[Sequence[str]]) -> list[str]:
    return sorted({g for row in genres for g in row})


def _check_known(chosen: Sequence[str], vocab: list[str], what: str) -> None:
    unknown = [g for g in chosen if g not in vocab]
    if unknown:
        raise ValueError(f"{what} {unknown} not present in the data; available: {vocab}")


def genre_first(genres: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[str]]:
    """Group = the item's first listed genre (FairDiverse ``single_group``).

    Args:
        genres: per item, its genre names in file order; length I.

    Returns:
        ``(group [I] int64, names)`` with names sorted alphabetically.

    Raises:
        ValueError: an item has no genre.
    """
    empty = [k for k, row in enumerate(genres) if len(row) == 0]
    if empty:
        raise ValueError(f"{len(empty)} item(s) have no genre (first item index {empty[0]})")
    names = sorted({row[0] for row in genres})
    lookup = {g: k for k, g in enumerate(names)}
    return np.array([lookup[row[0]] for row in genres], dtype=np.int64), names


def genre_exclusive(genres: Sequence[Sequence[str]], chosen: Sequence[str]) -> np.ndarray:
    """Group = index in ``chosen`` of the one chosen genre an item has; -1 if it has none or several.

    This is the ML1M-2 ({Sci-Fi, Horror}) / ML1M-4 ({Sci-Fi, Adventure, Children's, Horror}) rule of
    FairNeg and ITFR: items carrying exactly one of the chosen genres are kept (other genres allowed).

    Args:
        genres: per item, its genre names; length I.
        chosen: the group genres, in group-id order.

    Returns:
        group [I] int64 with -1 for items to drop.

    Raises:
        ValueError: a chosen genre never occurs, or ``chosen`` is empty or repeats a name.
    """
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"item_group_genres must be non-empty and distinct, got {list(chosen)}")
    _check_known(chosen, _vocabulary(genres), "genre(s)")
    # hit[i, g]: item i carries chosen genre g.
    hit = np.array([[g in row for g in chosen] for row in genres], dtype=bool).reshape(len(genres), -1)
    return np.where(hit.sum(1) == 1, hit.argmax(1), -1).astype(np.int64)


def genre_multi(genres: Sequence[Sequence[str]],
                chosen: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Multi-genre membership as a row-normalised CSR matrix Â [I, G] (FairDual): ``Â[i, g] = 1/n_i``.

    Args:
        genres: per item, its genre names; length I.
        chosen: restrict to these groups (others ignored); default all genres, sorted.

    Returns:
        ``(indptr [I+1] int64, indices [nnz] int64, weights [nnz] float32, names)``; every row sums to 1
        and lists groups in the item's genre order.

    Raises:
        ValueError: an item has none of the groups (its row would be empty), or an unknown chosen genre.
    """
    vocab = _vocabulary(genres)
    names = list(chosen) if chosen else vocab
    _check_known(names, vocab, "genre(s)")
    lookup = {g: k for k, g in enumerate(names)}
    # dict.fromkeys dedups but keeps file order, so a row's first entry is the item's first listed genre.
    rows = [list(dict.fromkeys(lookup[g] for g in row if g in lookup)) for row in genres]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    if (lengths == 0).any():
        raise ValueError(f"{int((lengths == 0).sum())} item(s) have none of the genres {names}; "
                         "filter them first (e.g. item_group='genre_exclusive')")
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.fromiter((g for r in rows for g in r), dtype=np.int64, count=int(indptr[-1]))
    weights = np.repeat(1.0 / lengths, lengths).astype(np.float32)
    return indptr, indices, weights, names


def quantile_groups(counts: np.ndarray, num_groups: int) -> np.ndarray:
    """Equal-size groups by ascending count (popularity or activity); group ``num_groups-1`` is the top.

    Ties are broken by index (stable sort), so sizes differ by at most one.

    Args:
        counts: [N] interaction counts per item (or user).
        num_groups: number of groups G.

    Returns:
        group [N] int64.
    """
    if num_groups < 1 or num_groups > len(counts):
        raise ValueError(f"num_groups must be in 1..{len(counts)}, got {num_groups}")
    rank = np.empty(len(counts), dtype=np.int64)
    rank[np.argsort(counts, kind="stable")] = np.arange(len(counts))
    return rank * num_groups // len(counts)


def categorical_groups(values: Sequence[object], what: str) -> tuple[np.ndarray, list[str]]:
    """Group = the value (gender, occupation), ids in sorted order of the names.

    Raises:
        ValueError: a value is missing.
    """
    arr = np.asarray(values, dtype=object)
    missing = np.array([v is None or v != v for v in arr], dtype=bool)
    if missing.any():
        raise ValueError(f"user column {what!r} is missing for {int(missing.sum())} user(s)")
    names, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(n) for n in names]


def age_groups(ages: Sequence[object],
               edges: Sequence[float] = DEFAULT_AGE_EDGES) -> tuple[np.ndarray, list[str]]:
    """Group = age bucket ``searchsorted(edges, age, 'right')``; default edges give ML-1M's 7 buckets.

    Returns:
        ``(group [U] int64, names)`` such as ``"<18"``, ``"18-24"``, ..., ``"56+"``.
    """
    age = np.asarray(ages, dtype=np.float64)
    if np.isnan(age).any():
        raise ValueError(f"user column 'age' is missing for {int(np.isnan(age).sum())} user(s)")
    bounds = [int(e) if float(e).is_integer() else e for e in edges]
    names = [f"<{bounds[0]}"] + [f"{a}-{b - 1}" for a, b in zip(bounds[:-1], bounds[1:])] + [f"{bounds[-1]}+"]
    return np.searchsorted(np.asarray(edges, dtype=np.float64), age, side="right").astype(np.int64), names


def intersectional(user_group: np.ndarray, item_group: np.ndarray, num_item_groups: int) -> np.ndarray:
    """ITFR's cell id for each (user, item) pair: ``user_group * num_item_groups + item_group``.

    Args:
        user_group: [N] user group of each pair.
        item_group: [N] item group of each pair.
        num_item_groups: Q.

    Returns:
        [N] int64 ids in ``0..P*Q-1``.
    """
    return np.asarray(user_group, dtype=np.int64) * num_item_groups + np.asarray(item_group, dtype=np.int64)


def merge_small_groups(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray, names: Sequence[str],
                       min_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Merge groups with fewer than ``min_size`` member items into one ``"infrequent"`` group (FairDual
    App. I: 50; FairDiverse ``group_aggregation_threshold``: 10). The merged group comes last.

    Args:
        indptr, indices, weights: CSR item->group membership (rows of Â), I rows.
        names: G group names.
        min_size: threshold; 0 or no small group leaves the input unchanged.

    Returns:
        ``(indptr, indices, weights, names)``; an item with several merged genres gets one entry whose
        weight is the sum of theirs, so rows still sum to 1.
    """
    size = np.bincount(indices, minlength=len(names))
    small = size < min_size
    if not small.any():
        return indptr, indices, weights, list(names)
    keep = np.flatnonzero(~small)
    new_id = np.full(len(names), len(keep), dtype=np.int64)
    new_id[keep] = np.arange(len(keep))
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    key = rows * (len(keep) + 1) + new_id[indices]
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    merged_w = np.bincount(inverse, weights=weights).astype(np.float32)
    order = np.argsort(first, kind="stable")  # keep each item's genre order (its first genre first)
    uniq, merged_w = uniq[order], merged_w[order]
    new_rows = uniq // (len(keep) + 1)
    order = np.argsort(new_rows, kind="stable")
    new_rows, uniq, merged_w = new_rows[order], uniq[order], merged_w[order]
    new_ptr = np.concatenate([[0], np.cumsum(np.bincount(new_rows, minlength=len(indptr) - 1))])
    return new_ptr, uniq % (len(keep) + 1), merged_w, [names[k] for k in keep] + ["infrequent"]
