"""Pure-PyTorch twin of every `fairlit.ops` op, with the same signature.

These are the test oracles and the fallback when the compiled library is unavailable. They favour
clarity over speed (e.g. `score_candidates` materialises [B, C, d]); they never import `fairlit._C`.
Half-precision inputs accumulate in float32, like the kernels.
"""
import torch
import torch.nn.functional as F


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def group_sum(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """out[g] = sum_{n: groups[n] = g} values[n]; values [N] or [N, D] -> [G] or [G, D]."""
    acc = values.to(_acc_dtype(values.dtype))
    out = acc.new_zeros((num_groups, *values.shape[1:])).index_add(0, groups, acc)
    return out.to(values.dtype)


def group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [G](, D), count [G] int64); an empty group has mean 0 and count 0."""
    acc = values.to(_acc_dtype(values.dtype))
    sums = acc.new_zeros((num_groups, *values.shape[1:])).index_add(0, groups, acc)
    count = torch.bincount(groups, minlength=num_groups)
    denom = count.clamp(min=1).to(acc.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return (sums / denom).to(values.dtype), count


def group_bpr_loss(pos: torch.Tensor, neg: torch.Tensor, groups: torch.Tensor, num_groups: int,
                   weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_sum [G], count [G]) of per-sample BPR losses weight_n * mean_m softplus(neg[n, m] - pos[n]).

    loss_sum is float32 for half inputs, else the input dtype.
    """
    acc = _acc_dtype(pos.dtype)
    neg2 = (neg.unsqueeze(1) if neg.dim() == 1 else neg).to(acc)
    per = F.softplus(neg2 - pos.to(acc).unsqueeze(1)).mean(1)
    if weight is not None:
        per = per * weight.to(acc)
    loss = per.new_zeros(num_groups).index_add(0, groups, per)
    return loss, torch.bincount(groups, minlength=num_groups)


def score_candidates(user_emb: torch.Tensor, item_emb: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """scores[b, c] = user_emb[b] . item_emb[candidates[b, c]] (candidates [C] is shared by all rows)."""
    acc = _acc_dtype(user_emb.dtype)
    items = item_emb.to(acc)[candidates]                       # [B, C, d] or [C, d]
    if candidates.dim() == 1:
        items = items.unsqueeze(0)
    return (user_emb.to(acc).unsqueeze(1) * items).sum(-1).to(user_emb.dtype)


def topk_scores(user_emb: torch.Tensor, item_emb: torch.Tensor, k: int, candidates: torch.Tensor | None = None,
                exclude_indptr: torch.Tensor | None = None,
                exclude_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B, k], item ids [B, k]): best k eligible items per row, by score descending, ties to the
    lower item id; excluded items never appear; missing slots are (-inf, -1)."""
    batch, num_items = user_emb.shape[0], item_emb.shape[0]
    acc = _acc_dtype(user_emb.dtype)
    if candidates is None:
        ids = torch.arange(num_items, device=user_emb.device).expand(batch, num_items)
    else:
        ids = candidates.expand(batch, -1) if candidates.dim() == 1 else candidates
    if candidates is None:
        # Scores rounded to the embedding dtype: the ranking is over what a GEMM in that dtype returns.
        scores = (user_emb.to(acc) @ item_emb.to(acc).T).to(user_emb.dtype)
    else:
        scores = score_candidates(user_emb, item_emb, ids)
    valid = torch.ones_like(ids, dtype=torch.bool)
    if exclude_indptr is not None:
        rows = torch.repeat_interleave(torch.arange(batch, device=ids.device), exclude_indptr.diff())
        excluded = torch.zeros(batch, num_items, dtype=torch.bool, device=ids.device)
        excluded[rows, exclude_indices] = True
        valid = ~excluded.gather(1, ids)
    # Lexicographic order (valid first, score descending, id ascending) by stable sorts, last key first.
    order = torch.sort(ids, dim=1, stable=True).indices
    for key, desc in ((scores, True), (valid, True)):
        k_sorted = key.gather(1, order)
        order = order.gather(1, torch.sort(k_sorted.to(torch.float64) if key.dtype == torch.bool else k_sorted,
                                           dim=1, stable=True, descending=desc).indices)
    top = order[:, :k]
    values = scores.gather(1, top)
    indices = ids.gather(1, top)
    keep = valid.gather(1, top)
    values = values.masked_fill(~keep, float("-inf"))
    indices = indices.masked_fill(~keep, -1)
    if top.shape[1] < k:
        pad = k - top.shape[1]
        values = torch.cat([values, values.new_full((batch, pad), float("-inf"))], 1)
        indices = torch.cat([indices, indices.new_full((batch, pad), -1)], 1)
    return values, indices
