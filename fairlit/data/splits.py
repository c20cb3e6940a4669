"""Train/validation/test splits of an interaction list; each returns one int64 row-index array per part.

Rows are positions in the (already filtered, re-indexed) interaction arrays; the parts are disjoint and
cover every row, except :func:`split_periods`' parts, which cover the stream in time order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_counts(n: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """Part sizes for totals ``n`` exactly as RecBole 1.2.1's ``Dataset._calcu_split_ids``.

    Every part but the first gets ``int(ratio * n)``; the first gets the rest. Then, while the first keeps
    more than one row, a later part whose share is in (0, 1) is bumped to one row, from the last part back.

    Args:
        n: [U] totals (one per user, or a single global total).
        ratios: R part ratios (normalised here).

    Returns:
        [U, R] int64 part sizes, rows summing to ``n``.
    """
    total = sum(ratios)
    ratio = np.array([r / total for r in ratios], dtype=np.float64)
    n = np.asarray(n, dtype=np.int64).reshape(-1)
    share = ratio[None, :] * n[:, None]  # same IEEE products as RecBole's Python floats
    cnt = share.astype(np.int64)
    cnt[:, 0] = n - cnt[:, 1:].sum(1)
    for k in range(1, len(ratio)):
        bump = (cnt[:, 0] > 1) & (share[:, -k] > 0) & (share[:, -k] < 1)
        cnt[bump, -k] += 1
        cnt[bump, 0] -= 1
    return cnt


def _cut(order: np.ndarray, group: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Cut each group's rows (taken in ``order``) into consecutive parts of sizes ``counts[group]``."""
    g = group[order]
    start = np.concatenate([[0], np.cumsum(np.bincount(g, minlength=len(counts)))[:-1]])
    pos = np.arange(len(order)) - start[g]  # rank of each row inside its group (order is group-sorted)
    bounds = np.cumsum(counts, axis=1)
    part = (pos[:, None] >= bounds[g]).sum(1)
    return [np.sort(order[part == k]) for k in range(counts.shape[1])]


def split_random_ratio(user: np.ndarray, ratios: Sequence[float], seed: int) -> list[np.ndarray]:
    """Per-user random ratio split, RecBole ``RS`` with ``group_by: user`` and ``order: RO``.

    The rows are shuffled globally, then each user's rows (in shuffled order) are cut by
    :func:`split_counts`, so part sizes match RecBole exactly (the rows chosen depend on the RNG).

    Args:
        user: [N] int64 user index per row.
        ratios: e.g. ``(0.8, 0.1, 0.1)``.
        seed: numpy seed of the shuffle.

    Returns:
        One sorted index array per ratio.
    """
    perm = np.random.default_rng(seed).permutation(len(user))
    order = perm[np.argsort(user[perm], kind="stable")]
    counts = split_counts(np.bincount(user, minlength=int(user.max()) + 1 if len(user) else 0), ratios)
    return _cut(order, user, counts)


def split_chrono_global(timestamp: np.ndarray, ratios: Sequence[float]) -> list[np.ndarray]:
    """Global chronological split (FairDual): sort all rows by time, first 80% train, next 10%, last 10%.

    Ties keep file order (stable sort). Sizes follow :func:`split_counts` on the global total.

    Args:
        timestamp: [N] times.
        ratios: e.g. ``(0.8, 0.1, 0.1)``.
    """
    order = np.argsort(timestamp, kind="stable")
    counts = split_counts(np.array([len(order)]), ratios)
    return _cut(order, np.zeros(len(order), dtype=np.int64), counts)


def split_leave_one_out(user: np.ndarray, timestamp: np.ndarray) -> list[np.ndarray]:
    """Per-user chronological leave-one-out: last row test, second-to-last validation, rest train.

    A user with two rows gives train + test only; a user with one row is train only.

    Args:
        user: [N] user index per row.
        timestamp: [N] times (ties keep file order).

    Returns:
        ``[train, valid, test]`` index arrays.
    """
    n = np.bincount(user, minlength=int(user.max()) + 1 if len(user) else 0)
    counts = np.stack([n - (n >= 2) - (n >= 3), (n >= 3).astype(np.int64), (n >= 2).astype(np.int64)], 1)
    order = np.lexsort((np.arange(len(user)), timestamp, user))
    return _cut(order, user, counts)


def split_periods(timestamp: np.ndarray, pretrain: float = 0.6, num_periods: int = 10,
                  chunk: int | None = 256) -> list[np.ndarray]:
    """FADE's period cutting: ``D_0`` (pre-training) then ``num_periods`` later blocks, in time order.

    ``chunk=None`` is the paper's exact rule (``D_0`` = first ``int(pretrain*N)`` rows, the rest in
    ``num_periods`` blocks of ``(N - |D_0|) // P`` rows, the last block taking the remainder).
    With ``chunk=c`` (official batch-aligned variant) the same rule is applied to ``ceil(N/c)`` chunks
    of c rows; on ML-1M (836,478 rows) this gives 501,760 / 9 x 33,280 / 35,198.

    Args:
        timestamp: [N] times; ties keep file order.
        pretrain: fraction of the stream in ``D_0``.
        num_periods: P.
        chunk: chunk size in rows, or ``None``.

    Returns:
        ``P + 1`` index arrays ``[D_0, D_1, ..., D_P]``, each in time order.
    """
    order = np.argsort(timestamp, kind="stable")
    unit = chunk or 1
    n_units = -(-len(order) // unit)
    first = int(pretrain * n_units)
    per = (n_units - first) // num_periods
    if first == 0 or per == 0:
        raise ValueError(f"{len(order)} rows are too few for pretrain={pretrain}, {num_periods} periods"
                         f" and chunk={chunk}")
    cuts = [first + k * per for k in range(num_periods)] + [n_units]
    rows = [min(c * unit, len(order)) for c in cuts]
    return [order[a:b] for a, b in zip([0] + rows[:-1], rows)]
