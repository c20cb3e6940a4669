"""Input checks shared by the metric functions and classes; every error names the offending argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_ks(ks: Sequence[int]) -> list[int]:
    """Return ``ks`` as a list of positive ints, or raise ``ValueError``."""
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks}")
    return ks


def check_names(metrics: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """Return ``metrics`` as a tuple, or raise if empty, duplicated or not in ``allowed``."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in allowed]
    if not metrics or unknown or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be distinct names from {tuple(allowed)}, got {metrics}")
    return metrics


def check_num_groups(name: str, num_groups: int) -> int:
    """Return ``num_groups`` if it is a positive int."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"{name} must be a positive int, got {num_groups}")
    return num_groups


def check_ratio(name: str, ratio: float, *, zero_ok: bool) -> float:
    """Return ``ratio`` if it is a number in ``[0, 1]`` (``(0, 1]`` unless ``zero_ok``)."""
    number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
    if not (number and (0 <= ratio if zero_ok else 0 < ratio) and ratio <= 1):  # NaN fails both comparisons
        raise ValueError(f"{name} must lie in {'[' if zero_ok else '('}0, 1], got {ratio!r}")
    return ratio


def check_integer(name: str, t: Tensor) -> None:
    """Raise unless ``t`` has an integer dtype (counts, ids, row pointers)."""
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")


def check_hits(name: str, hits: Tensor) -> None:
    """Raise unless ``hits`` is a bool tensor (True = a relevant item at that rank): a float or int "hit" of 3
    would count three times and give recall above 1."""
    if hits.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True where the ranked item is relevant, e.g. from "
                         f"hits_from_csr), got {hits.dtype}")


def check_ids(name: str, ids: Tensor, bound: int | None, allow_padding: bool = False) -> None:
    """Raise unless ``ids`` is an integer tensor with values in ``[0, bound)`` (``bound=None``: no upper
    limit), or -1 where padding is allowed."""
    check_integer(name, ids)
    if ids.numel() == 0:
        return
    low = -1 if allow_padding else 0
    if int(ids.min()) < low or (bound is not None and int(ids.max()) >= bound):
        found = f"[{int(ids.min())}, {int(ids.max())}]"
        raise ValueError(f"{name} values must lie in [{low}, {bound}), got {found}")


def check_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    """Raise unless ``tensor.shape == shape``."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def check_topk(name: str, topk: Tensor, max_k: int) -> None:
    """Raise unless ``topk`` is 2-D with at least ``max_k`` columns."""
    if topk.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, Kmax], got shape {tuple(topk.shape)}")
    if topk.shape[1] < max_k:
        raise ValueError(f"{name} has {topk.shape[1]} columns but the largest k in ks is {max_k}")


def check_csr(indptr: Tensor, indices: Tensor, rows: int, indptr_name: str, indices_name: str) -> None:
    """Raise unless ``(indptr, indices)`` is a CSR of ``rows`` rows (starts at 0, non-decreasing, ends at nnz)."""
    check_integer(indptr_name, indptr)
    if indptr.dim() != 1 or indptr.numel() == 0:
        raise ValueError(f"{indptr_name} must be 1-D [rows + 1] with at least one entry, got shape "
                         f"{tuple(indptr.shape)}")
    check_shape(indptr_name, indptr, (rows + 1,))
    if indices.dim() != 1:
        raise ValueError(f"{indices_name} must be 1-D, got shape {tuple(indices.shape)}")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel() or bool((indptr.diff() < 0).any()):
        raise ValueError(f"{indptr_name} must start at 0, be non-decreasing and end at len({indices_name})")
