"""Vectorised negative sampling and CSR helpers (torch; no Python loop over users)."""

from __future__ import annotations

import torch
from torch import Tensor


def build_csr(rows: Tensor, cols: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """CSR of a (row, col) pair list; columns sorted inside each row, duplicate pairs stored once.

    Args:
        rows: [N] int64 row ids in ``0..num_rows-1``.
        cols: [N] int64 column ids.
        num_rows: R.

    Returns:
        ``(indptr [R+1], indices [nnz])`` int64, ``nnz <= N``.
    """
    width = int(cols.max()) + 1 if cols.numel() else 1
    key = torch.unique(rows * width + cols)  # sorted, so rows come out grouped with sorted columns
    indptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    indptr[1:] = torch.cumsum(torch.bincount(key // width, minlength=num_rows), 0)
    return indptr, key % width


def csr_slice(indptr: Tensor, indices: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``rows`` of a CSR matrix as a new CSR (gather, no loop).

    Args:
        indptr: [R+1] int64.
        indices: [nnz] int64.
        rows: [B] int64 rows to take, in this order.

    Returns:
        ``(indptr [B+1], indices [sum of row lengths])``.
    """
    start = indptr[rows]
    length = indptr[rows + 1] - start
    out_ptr = torch.zeros(len(rows) + 1, dtype=torch.long)
    out_ptr[1:] = torch.cumsum(length, 0)
    offset = torch.arange(int(out_ptr[-1])) - torch.repeat_interleave(out_ptr[:-1], length)
    return out_ptr, indices[torch.repeat_interleave(start, length) + offset]


def _row_keys(indptr: Tensor, indices: Tensor, num_cols: int) -> Tensor:
    """[nnz] sorted keys ``row * num_cols + col`` of a CSR with sorted columns per row."""
    rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr[1:] - indptr[:-1])
    return rows * num_cols + indices


def _member(keys: Tensor, query: Tensor) -> Tensor:
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[pos] == query


def csr_contains(indptr: Tensor, indices: Tensor, rows: Tensor, cols: Tensor, num_cols: int) -> Tensor:
    """Whether ``(rows[k], cols[k, ...])`` is a stored entry, by binary search over sorted row*C+col keys.

    Args:
        indptr: [R+1] CSR with sorted columns per row (as :func:`build_csr` makes).
        indices: [nnz].
        rows: [N] row ids.
        cols: [N, ...] column ids to test for each row.
        num_cols: C, the number of columns.

    Returns:
        Bool tensor shaped like ``cols``.
    """
    query = rows.view(-1, *([1] * (cols.dim() - 1))) * num_cols + cols
    return _member(_row_keys(indptr, indices, num_cols), query)


def sample_negatives(users: Tensor, num_negatives: int, num_items: int, exclude: tuple[Tensor, Tensor],
                     generator: torch.Generator, probs: Tensor | None = None, max_rounds: int = 1000) -> Tensor:
    """Draw items for each user that are not in the user's ``exclude`` row (rejection in vectorised rounds).

    Args:
        users: [N] int64 user of each row.
        num_negatives: M draws per row.
        num_items: I.
        exclude: CSR ``(indptr [U+1], indices)`` of forbidden items per user, sorted per row.
        generator: torch RNG; the draw is a pure function of its state.
        probs: [I] sampling weights (e.g. popularity**beta), uniform if ``None``.
        max_rounds: safety bound on resampling rounds.

    Returns:
        [N, M] int64 items, never in the user's excluded set.

    Raises:
        ValueError: a user in ``users`` has no allowed item (all items excluded or zero weight).
    """
    indptr, indices = exclude
    n = len(users)

    def draw(k: int) -> Tensor:
        if probs is None:
            return torch.randint(num_items, (k,), generator=generator)
        return torch.multinomial(probs, k, replacement=True, generator=generator)

    weights = torch.ones(num_items, dtype=torch.float64) if probs is None else probs.double()
    excluded_mass = torch.zeros(len(indptr) - 1, dtype=torch.float64).index_add_(
        0, torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr[1:] - indptr[:-1]), weights[indices])
    stuck = excluded_mass[users] >= weights.sum() * (1 - 1e-12)
    if stuck.any():
        raise ValueError(f"user {int(users[stuck][0])} has no item left to sample as a negative")
    keys = _row_keys(indptr, indices, num_items)
    neg = draw(n * num_negatives).view(n, num_negatives)
    bad = _member(keys, users[:, None] * num_items + neg)
    for _ in range(max_rounds):
        if not bad.any():
            return neg
        rows = bad.nonzero(as_tuple=True)
        neg[rows] = draw(len(rows[0]))
        bad[rows] = _member(keys, users[rows[0]] * num_items + neg[rows])
    raise RuntimeError(f"negative sampling did not finish in {max_rounds} rounds")
