"""Pure dense-tensor ranking and fairness metrics (the functional twins of the metric classes).

Per-user ranking metrics take ``hits [B, K] bool`` (``hits[b, r]`` = the item at rank ``r + 1`` of user
``b``'s list is relevant) and ``num_relevant [B]`` (the user's number of relevant items, ``|T_u|``), use
binary gains, and return one value per user ``[B]``. Users with ``num_relevant == 0`` have no defined
recall/NDCG: the functions raise ``ValueError`` for them; the metric classes drop such users first (the
specs evaluate only users with at least one relevant item).

Group-vector functions reduce the last dimension of ``u [..., G]`` (one value per group, e.g. the
exposure each item group received) and return ``[...]``. Degenerate inputs (all zeros) give NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fairlit.metrics._validation import (
    check_csr,
    check_hits,
    check_ids,
    check_integer,
    check_names,
    check_num_groups,
    check_ratio,
    check_shape,
)

RANKING_METRICS = ("recall", "precision", "ndcg", "hit", "mrr", "hr")


def hits_from_csr(topk_items: Tensor, target_indptr: Tensor, target_indices: Tensor) -> Tensor:
    """Mark which recommended items are relevant, without a Python loop over users.

    Each (user, item) pair becomes the key ``b * N + i`` with ``N`` larger than every item id; the target
    keys are sorted once and every top-K key is looked up with ``searchsorted``.

    Args:
        topk_items: ``[B, K]`` long, recommended items in rank order; ``-1`` is padding (never a hit).
        target_indptr: ``[B + 1]`` long, CSR row pointer of the users' relevant items.
        target_indices: ``[nnz]`` long, relevant item ids (any order within a row).

    Returns:
        ``[B, K]`` bool, ``hits[b, r] = topk_items[b, r] ∈ T_b``.
    """
    if topk_items.dim() != 2:
        raise ValueError(f"topk_items must be 2-D [B, K], got shape {tuple(topk_items.shape)}")
    batch = topk_items.shape[0]
    check_csr(target_indptr, target_indices, batch, "target_indptr", "target_indices")
    check_ids("topk_items", topk_items, None, allow_padding=True)
    check_ids("target_indices", target_indices, None)
    if topk_items.numel() == 0 or target_indices.numel() == 0:
        return torch.zeros(topk_items.shape, dtype=torch.bool, device=topk_items.device)
    bound = int(torch.maximum(topk_items.max(), target_indices.max())) + 1
    row_ids = torch.arange(batch, device=topk_items.device)
    rows = torch.repeat_interleave(row_ids, target_indptr.diff(), output_size=target_indices.numel())
    keys = torch.sort(rows * bound + target_indices).values  # [nnz]
    query = row_ids[:, None] * bound + topk_items  # [B, K]
    found = keys[torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)]
    return (found == query) & (topk_items >= 0)


def targets_per_group(
    target_indptr: Tensor, target_indices: Tensor, item_group: Tensor, num_groups: int
) -> Tensor:
    """Count each user's relevant items per item group: ``out[b, g] = |T_b ∩ V_g|``.

    Args:
        target_indptr: ``[B + 1]`` long CSR row pointer.
        target_indices: ``[nnz]`` long relevant item ids.
        item_group: ``[I]`` long group id of every item, in ``[0, G)``.
        num_groups: ``G``.

    Returns:
        ``[B, G]`` long counts.
    """
    batch = target_indptr.numel() - 1
    check_csr(target_indptr, target_indices, batch, "target_indptr", "target_indices")
    check_num_groups("num_groups", num_groups)
    if item_group.dim() != 1:
        raise ValueError(f"item_group must be 1-D [I], got shape {tuple(item_group.shape)}")
    check_ids("item_group", item_group, num_groups)
    check_ids("target_indices", target_indices, item_group.numel())
    row_ids = torch.arange(batch, device=target_indices.device)
    rows = torch.repeat_interleave(row_ids, target_indptr.diff(), output_size=target_indices.numel())
    flat = rows * num_groups + item_group[target_indices]
    return torch.bincount(flat, minlength=batch * num_groups).view(batch, num_groups)


def _check_user_inputs(hits: Tensor, num_relevant: Tensor) -> None:
    if hits.dim() != 2 or hits.shape[1] < 1:
        raise ValueError(f"hits must be [B, K] with K >= 1, got shape {tuple(hits.shape)}")
    check_hits("hits", hits)
    check_shape("num_relevant", num_relevant, (hits.shape[0],))
    check_integer("num_relevant", num_relevant)
    if num_relevant.numel() and bool((num_relevant < 1).any()):
        raise ValueError("num_relevant must be >= 1 for every user; drop users without relevant items first")
    if num_relevant.numel() and bool((hits.sum(1) > num_relevant).any()):
        raise ValueError("hits has more hits in a row than that user's num_relevant relevant items: hits and "
                         "num_relevant must describe the same targets")


def _discounts(k: int, device: torch.device) -> Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.get_default_dtype()))


def _recall(hits: Tensor, num_relevant: Tensor) -> Tensor:
    return hits.sum(1).to(torch.get_default_dtype()) / num_relevant


def _precision(hits: Tensor, num_relevant: Tensor) -> Tensor:
    return hits.sum(1).to(torch.get_default_dtype()) / hits.shape[1]


def _ndcg(hits: Tensor, num_relevant: Tensor) -> Tensor:
    disc = _discounts(hits.shape[1], hits.device)
    ideal = disc.cumsum(0)[num_relevant.clamp(max=hits.shape[1]).long() - 1]  # long: a uint8 index is a mask
    return (hits * disc).sum(1) / ideal


def _hit(hits: Tensor, num_relevant: Tensor) -> Tensor:
    return hits.any(1).to(torch.get_default_dtype())


def _mrr(hits: Tensor, num_relevant: Tensor) -> Tensor:
    reciprocal = 1.0 / torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.get_default_dtype())
    return (hits * reciprocal).amax(1)


def _hr(hits: Tensor, num_relevant: Tensor) -> Tensor:
    # FairDual/FairDiverse "HR": hits / min(|T_u|, K), i.e. recall capped by the list length.
    return hits.sum(1).to(torch.get_default_dtype()) / num_relevant.clamp(max=hits.shape[1])


_PER_USER = {"recall": _recall, "precision": _precision, "ndcg": _ndcg, "hit": _hit, "mrr": _mrr, "hr": _hr}


def recall_at_k(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """Per-user recall ``hit_u / |T_u|`` with ``hit_u = Σ_r hits[u, r]``. Shapes ``[B, K], [B] -> [B]``."""
    _check_user_inputs(hits, num_relevant)
    return _recall(hits, num_relevant)


def precision_at_k(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """Per-user precision ``hit_u / K`` (K = ``hits.shape[1]``). Shapes ``[B, K], [B] -> [B]``."""
    _check_user_inputs(hits, num_relevant)
    return _precision(hits, num_relevant)


def ndcg_at_k(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """Per-user binary NDCG. Shapes ``[B, K], [B] -> [B]``.

    ``DCG_u = Σ_{r=1..K} hits[u, r] / log2(r + 1)``, ``IDCG_u = Σ_{r=1..min(K, |T_u|)} 1 / log2(r + 1)``,
    ``NDCG_u = DCG_u / IDCG_u``.
    """
    _check_user_inputs(hits, num_relevant)
    return _ndcg(hits, num_relevant)


def hit_at_k(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """Per-user hit rate ``1[hit_u > 0]``. Shapes ``[B, K], [B] -> [B]``."""
    _check_user_inputs(hits, num_relevant)
    return _hit(hits, num_relevant)


def mrr_at_k(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """Per-user reciprocal rank ``1 / rank`` of the first hit within the top K, 0 without a hit. ``[B]``."""
    _check_user_inputs(hits, num_relevant)
    return _mrr(hits, num_relevant)


def per_user_metrics(hits: Tensor, num_relevant: Tensor, ks: Sequence[int], metrics: Sequence[str]) -> Tensor:
    """Evaluate several per-user metrics at several cutoffs on the prefixes ``hits[:, :k]``.

    Args:
        hits: ``[B, Kmax]`` bool with ``Kmax >= max(ks)``.
        num_relevant: ``[B]`` long, all ``>= 1``.
        ks: cutoffs.
        metrics: names from ``RANKING_METRICS``.

    Returns:
        ``[len(metrics), len(ks), B]`` float.
    """
    _check_user_inputs(hits, num_relevant)
    metrics = check_names(metrics, RANKING_METRICS)
    if max(ks) > hits.shape[1]:
        raise ValueError(f"hits has {hits.shape[1]} columns but the largest k in ks is {max(ks)}")
    return torch.stack([torch.stack([_PER_USER[m](hits[:, :k], num_relevant) for k in ks]) for m in metrics])


def _check_group_vector(name: str, u: Tensor) -> None:
    if u.dim() == 0 or u.shape[-1] == 0:
        raise ValueError(f"{name} must be [..., G] with G >= 1 groups, got shape {tuple(u.shape)}")


def gini(u: Tensor) -> Tensor:
    """Gini index of ``u [..., G]`` (FairDual code): sort ascending, ``c = cumsum``,
    ``Gini = (G + 1 − 2·Σ_g c_g / c_G) / G``. 0 = equal, ``(G − 1)/G`` = one group has everything."""
    _check_group_vector("u", u)
    groups = u.shape[-1]
    cum = u.sort(-1).values.cumsum(-1)
    return (groups + 1 - 2 * cum.sum(-1) / cum[..., -1]) / groups


def mmf(u: Tensor, ratio: float = 0.2) -> Tensor:
    """Max-min fairness ``Σ_{r=1..n_w} u_(r) / Σ_g u_g`` with ``n_w = ⌊ratio·G⌋`` smallest values,
    ``ratio ∈ [0, 1]``.

    Zero groups are included; the result lies in ``[0, n_w / G]`` and is 0 when ``n_w = 0``.
    """
    _check_group_vector("u", u)
    check_ratio("ratio", ratio, zero_ok=True)
    worst = math.floor(ratio * u.shape[-1])
    return u.sort(-1).values[..., :worst].sum(-1) / u.sum(-1)


def min_max_ratio(u: Tensor) -> Tensor:
    """``min_g u_g / max_g u_g`` over the last dimension."""
    _check_group_vector("u", u)
    return u.amin(-1) / u.amax(-1)


def entropy(u: Tensor) -> Tensor:
    """Entropy in bits of the normalised vector: ``p = u / Σu``, ``H = −Σ_g p_g log2 p_g`` (0·log 0 = 0)."""
    _check_group_vector("u", u)
    p = u / u.sum(-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(-1) / math.log(2.0)


def coefficient_of_variation(u: Tensor, eps: float = 0.0) -> Tensor:
    """``std(u) / (mean(u) + eps)`` with the population std (ddof = 0) over the last dimension."""
    _check_group_vector("u", u)
    return u.std(-1, correction=0) / (u.mean(-1) + eps)


def worst_fraction_mean(u: Tensor, ratio: float = 0.25) -> Tensor:
    """Mean of the ``⌊ratio·G⌋`` smallest values of ``u [..., G]`` (ITFR's MIN@K; NaN sorts last),
    ``ratio ∈ (0, 1]``. NaN when ``⌊ratio·G⌋ = 0`` (fewer than ``1 / ratio`` groups: no group to average)."""
    _check_group_vector("u", u)
    check_ratio("ratio", ratio, zero_ok=False)
    worst = math.floor(ratio * u.shape[-1])
    return u.sort(-1).values[..., :worst].mean(-1)


def nan_group_stats(values: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean, population std, min and max over the last dimension of ``values [..., G]``, ignoring NaN.

    NaN marks a group with no data (e.g. a user group with no evaluated user), so missing groups neither
    count as 0 nor poison the summary. All four are NaN when every entry is NaN.
    """
    _check_group_vector("values", values)
    present = ~values.isnan()
    mean = values.nanmean(-1)
    std = ((values - mean[..., None]) ** 2).nanmean(-1).sqrt()
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    none = ~present.any(-1)
    low = torch.where(present, values, inf).amin(-1).masked_fill(none, float("nan"))
    high = torch.where(present, values, -inf).amax(-1).masked_fill(none, float("nan"))
    return mean, std, low, high
