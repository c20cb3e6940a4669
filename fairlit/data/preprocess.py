"""Interaction preprocessing: required-column checks, implicit feedback, duplicate pairs, k-core filtering,
re-indexing.

All functions are pure (return new frames) and deterministic; none of them draws random numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def check_columns(frame: pd.DataFrame, columns: tuple[str, ...], where: str) -> None:
    """Raise if a required column is missing or holds NaN.

    Args:
        frame: the table to check.
        columns: required column names.
        where: file or table name used in the message.

    Raises:
        ValueError: naming the file, the column and what was expected.
    """
    for col in columns:
        if col not in frame.columns:
            raise ValueError(f"{where}: missing column {col!r}; expected columns {list(columns)}, "
                             f"found {list(frame.columns)}")
        n_nan = int(frame[col].isna().sum())
        if n_nan:
            raise ValueError(f"{where}: column {col!r} has {n_nan} missing (NaN/empty) values; "
                             "expected a value in every row")


def binarize(inter: pd.DataFrame, threshold: float, keep_negatives: bool = False,
             rating: str = "rating") -> pd.DataFrame:
    """Turn ratings into implicit feedback: ``rating >= threshold`` is a positive.

    Args:
        inter: interactions with a float ``rating`` column.
        threshold: smallest rating that counts as positive (RecBole ``val_interval: rating: "[3,inf)"``
            is ``threshold=3``).
        keep_negatives: keep the other rows with ``label = 0`` instead of dropping them.
        rating: name of the rating column.

    Returns:
        The rows kept, with an int8 ``label`` column (1 positive, 0 negative).
    """
    check_columns(inter, (rating,), "interactions")
    label = (inter[rating].to_numpy() >= threshold).astype(np.int8)
    out = inter.assign(label=label)
    return out if keep_negatives else out[label == 1]


def drop_duplicate_pairs(inter: pd.DataFrame, user: str = "user_id", item: str = "item_id",
                         time: str = "timestamp") -> pd.DataFrame:
    """Keep one row per (user, item) pair: the earliest by ``time`` (RecBole's ``rm_dup_inter: first``).

    Ties in ``time`` keep the row that comes first in ``inter``.

    Args:
        inter: interactions with a numeric ``time`` column.
        user: user column.
        item: item column.
        time: time column.

    Returns:
        The kept rows, in their original order.
    """
    order = np.argsort(inter[time].to_numpy(), kind="stable")
    repeated = np.empty(len(inter), dtype=bool)
    repeated[order] = inter.iloc[order].duplicated([user, item], keep="first").to_numpy()
    return inter[~repeated]


def k_core(inter: pd.DataFrame, user_core: int = 0, item_core: int = 0, iterated: bool = True,
           user: str = "user_id", item: str = "item_id") -> pd.DataFrame:
    """Keep users with >= ``user_core`` and items with >= ``item_core`` interactions.

    Args:
        inter: interactions.
        user_core: minimum interactions per user (0 or 1 disables).
        item_core: minimum interactions per item.
        iterated: repeat until every kept user and item meets its bound (RecBole's
            ``*_inter_num_interval``; the result is the unique maximal k-core). ``False`` makes one pass,
            users first, then items (DPR/FairNeg), after which users may fall below ``user_core``.
        user: user column.
        item: item column.

    Returns:
        The kept rows, in their original order.
    """
    keep = np.ones(len(inter), dtype=bool)
    u = pd.factorize(inter[user])[0]
    i = pd.factorize(inter[item])[0]
    while True:
        changed = False
        for codes, core in ((u, user_core), (i, item_core)):
            if core <= 1:
                continue
            counts = np.bincount(codes[keep], minlength=codes.max() + 1 if len(codes) else 0)
            drop = keep & (counts[codes] < core)
            if drop.any():
                keep &= ~drop
                changed = True
        if not (iterated and changed):
            break
    return inter[keep]


def reindex(inter: pd.DataFrame, user: str = "user_id",
            item: str = "item_id") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Map user and item tokens to ``0..U-1`` and ``0..I-1`` in order of first appearance.

    Returns:
        ``(user_index [N] int64, item_index [N] int64, user_tokens [U], item_tokens [I])``; the token
        arrays map a new index back to the original id.
    """
    u, u_tok = pd.factorize(inter[user], sort=False)
    i, i_tok = pd.factorize(inter[item], sort=False)
    return u.astype(np.int64), i.astype(np.int64), np.asarray(u_tok), np.asarray(i_tok)
