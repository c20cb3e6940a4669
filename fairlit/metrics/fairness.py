"""Group fairness metrics as torchmetrics classes with sum states only.

Ratios (MMF, Gini, CV, gaps) are never averaged across batches or processes: every update adds to
tensor sums reduced with ``dist_reduce_fx="sum"``, and the ratios are formed from them in ``compute()``.
``GroupRecall`` and ``IntersectionalFairness`` live in ``recall_fairness.py`` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from fairlit.metrics import functional as F
from fairlit.metrics._validation import (
    check_csr,
    check_ids,
    check_ks,
    check_names,
    check_num_groups,
    check_ratio,
    check_shape,
    check_topk,
)
from fairlit.metrics.recall_fairness import GroupRecall, IntersectionalFairness

__all__ = ["GroupRecall", "IntersectionalFairness", "ItemGroupFairness", "UserGroupFairness"]


class ItemGroupFairness(Metric):
    """Item-group exposure/utility fairness of top-K lists (FairDual §4.4).

    Per cutoff K and item group g, over all users u and ranks r ≤ K:
    ``U_g = Σ_u Σ_r Â[L_K(u)_r, g] · v_{u,r}`` with ``v = 1`` (exposure) or ``v = σ(score)`` (utility;
    ``σ(score) + 1`` with ``utility="sigmoid_plus_one"`` for parity with the FairDual code). ``Â`` is the
    row-normalised item-group adjacency, so a multi-genre item splits its slot over its groups.

    ``compute()`` returns, per K: ``mmf_exposure@K`` and (if any scores were given) ``mmf_utility@K``
    (``F.mmf`` with ``ratio``), ``gini@K``, ``entropy@K``, ``min_max_ratio@K`` of the exposure vector, and
    ``coverage@K`` = fraction of the I items shown at least once. Zero-exposure groups are included.

    Args:
        item_group: ``[I]`` long single group per item, or None.
        item_group_csr: ``(indptr [I+1], indices [nnz], weights [nnz])`` rows of Â (finite weights >= 0), or
            None (exactly one of the two must be given).
        num_groups: G.
        ks: cutoffs.
        ratio: share of worst-off groups in MMF, in ``[0, 1]``.
        utility: ``"sigmoid"`` or ``"sigmoid_plus_one"``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        item_group: Tensor | None = None,
        item_group_csr: tuple[Tensor, Tensor, Tensor] | None = None,
        *,
        num_groups: int,
        ks: Sequence[int] = (10, 20),
        ratio: float = 0.2,
        utility: str = "sigmoid",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups("num_groups", num_groups)
        self.ks = check_ks(ks)
        self.ratio = check_ratio("ratio", ratio, zero_ok=True)
        if utility not in ("sigmoid", "sigmoid_plus_one"):
            raise ValueError(f"utility must be 'sigmoid' or 'sigmoid_plus_one', got {utility!r}")
        self.utility = utility
        indptr, indices, weights = self._as_csr(item_group, item_group_csr)
        self.num_items = indptr.numel() - 1
        self.register_buffer("group_indptr", indptr, persistent=False)
        self.register_buffer("group_indices", indices, persistent=False)
        self.register_buffer("group_weights", weights, persistent=False)
        self.register_buffer("ks_tensor", torch.tensor(self.ks), persistent=False)
        shape = (len(self.ks), self.num_groups)
        self.add_state("exposure", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("utility_sum", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("scored_updates", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "item_counts", torch.zeros(len(self.ks), self.num_items, dtype=torch.long), dist_reduce_fx="sum"
        )

    def _as_csr(self, item_group: Tensor | None, csr: tuple[Tensor, Tensor, Tensor] | None):
        if (item_group is None) == (csr is None):
            raise ValueError("pass exactly one of item_group and item_group_csr")
        if item_group is not None:
            if item_group.dim() != 1:
                raise ValueError(f"item_group must be 1-D [I], got shape {tuple(item_group.shape)}")
            check_ids("item_group", item_group, self.num_groups)
            indptr = torch.arange(item_group.numel() + 1, device=item_group.device)
            weights = torch.ones(item_group.numel(), dtype=torch.float64, device=item_group.device)
            return indptr, item_group.long(), weights
        indptr, indices, weights = csr
        check_csr(indptr, indices, indptr.numel() - 1, "item_group_csr[0]", "item_group_csr[1]")
        check_ids("item_group_csr[1]", indices, self.num_groups)
        check_shape("item_group_csr[2]", weights, tuple(indices.shape))
        weights = weights.to(torch.float64)
        if not bool((weights.isfinite() & (weights >= 0)).all()):  # a negative share gives inf Gini, NaN entropy
            raise ValueError("item_group_csr[2] (the weights of Â) must be finite and >= 0")
        return indptr.long(), indices.long(), weights

    def update(self, topk_items: Tensor, scores: Tensor | None = None) -> None:
        """Accumulate a batch of top-K lists.

        Args:
            topk_items: ``[B, Kmax]`` long in rank order, ``-1`` = padding (an empty slot).
            scores: ``[B, Kmax]`` float ranking scores of those items, or None (exposure only); NaN is
                rejected at shown slots (padding slots are not read).
        """
        check_topk("topk_items", topk_items, max(self.ks))
        check_ids("topk_items", topk_items, self.num_items, allow_padding=True)
        valid = topk_items >= 0
        ranks = torch.arange(topk_items.shape[1], device=topk_items.device).expand_as(topk_items)[valid]
        items = topk_items[valid]  # [S] shown slots
        start = self.group_indptr[items]
        count = self.group_indptr[items + 1] - start
        # One entry per (slot, group of its item): entry e of slot s reads CSR row position start[s] + offset.
        slot = torch.repeat_interleave(torch.arange(items.numel(), device=items.device), count)
        offset = torch.arange(slot.numel(), device=items.device) - (count.cumsum(0) - count)[slot]
        entry = start[slot] + offset
        groups, weights = self.group_indices[entry], self.group_weights[entry]
        in_k = ranks[slot][None, :] < self.ks_tensor[:, None]  # [L, E]
        self.exposure += self._per_group(groups, in_k * weights)
        if scores is not None:
            check_shape("scores", scores, tuple(topk_items.shape))
            shown_scores = scores[valid].to(torch.float64)
            if bool(shown_scores.isnan().any()):
                raise ValueError("scores contains NaN at a shown (non-padding) slot")
            value = torch.sigmoid(shown_scores) + (self.utility == "sigmoid_plus_one")
            self.utility_sum += self._per_group(groups, in_k * (weights * value[slot]))
            self.scored_updates += 1
        shown = ranks[None, :] < self.ks_tensor[:, None]  # [L, S]
        flat_items = torch.arange(len(self.ks), device=items.device)[:, None] * self.num_items + items
        self.item_counts += torch.bincount(
            flat_items[shown], minlength=len(self.ks) * self.num_items
        ).view_as(self.item_counts)

    def _per_group(self, groups: Tensor, values: Tensor) -> Tensor:
        """Sum ``values [L, E]`` into ``[L, G]`` by ``groups [E]``."""
        flat = torch.arange(values.shape[0], device=groups.device)[:, None] * self.num_groups + groups
        out = torch.zeros(values.shape[0] * self.num_groups, dtype=torch.float64, device=groups.device)
        return out.index_add_(0, flat.flatten(), values.flatten().to(torch.float64)).view(values.shape[0], -1)

    def compute(self) -> dict[str, Tensor]:
        """Return the exposure/utility fairness summaries per K (see the class docstring)."""
        summaries = {
            "mmf_exposure": F.mmf(self.exposure, self.ratio),
            "gini": F.gini(self.exposure),
            "entropy": F.entropy(self.exposure),
            "min_max_ratio": F.min_max_ratio(self.exposure),
            "coverage": (self.item_counts > 0).sum(-1) / self.num_items,
        }
        if self.scored_updates > 0:
            summaries["mmf_utility"] = F.mmf(self.utility_sum, self.ratio)
        return {f"{name}@{k}": value[i] for name, value in summaries.items() for i, k in enumerate(self.ks)}


class UserGroupFairness(Metric):
    """Accuracy parity across user groups (FADE §4.4–4.5, UGF).

    Per metric m, cutoff K and user group g: ``mean_g = Σ_{u∈g} m_u@K / |g|`` over users with at least
    one relevant item. ``compute()`` returns ``"<m>@K"`` (mean over all users), ``"<m>@K/g<g>"`` (NaN for a
    group with no user), and over the non-empty groups ``gap = max − min``, ``ratio = min / max``,
    ``cv = std / mean`` (population std). With two groups it adds FADE's signed ``pd = mean_0 − mean_1``
    and ``ugf = |pd|``.

    Args:
        num_groups: number of user groups G.
        ks: cutoffs.
        metrics: names from ``("recall", "precision", "ndcg", "hit", "mrr")``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        num_groups: int,
        ks: Sequence[int] = (10, 20),
        metrics: Sequence[str] = ("recall", "ndcg"),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_groups = check_num_groups("num_groups", num_groups)
        self.ks = check_ks(ks)
        self.metrics = check_names(metrics, F.RANKING_METRICS)
        shape = (len(self.metrics), len(self.ks), self.num_groups)
        self.add_state("sums", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(self.num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, hits: Tensor, num_relevant: Tensor, user_group: Tensor) -> None:
        """Accumulate a batch.

        Args:
            hits: ``[B, Kmax]`` bool.
            num_relevant: ``[B]`` long; users with 0 are skipped.
            user_group: ``[B]`` long group id in ``[0, G)``.
        """
        check_topk("hits", hits, max(self.ks))
        check_shape("num_relevant", num_relevant, (hits.shape[0],))
        check_shape("user_group", user_group, (hits.shape[0],))
        check_ids("user_group", user_group, self.num_groups)
        keep = num_relevant > 0
        hits, num_relevant, user_group = hits[keep], num_relevant[keep], user_group[keep]
        values = F.per_user_metrics(hits, num_relevant, self.ks, self.metrics)  # [M, L, B]
        self.sums.index_add_(2, user_group, values.to(torch.float64))
        self.counts += torch.bincount(user_group, minlength=self.num_groups)

    def compute(self) -> dict[str, Tensor]:
        """Return overall and per-group means plus gap/ratio/cv (and pd/ugf for two groups)."""
        means = self.sums / self.counts  # [M, L, G]; 0/0 = NaN marks an empty group
        overall = self.sums.sum(-1) / self.counts.sum()
        mean, std, low, high = F.nan_group_stats(means)
        out = {}
        for mi, name in enumerate(self.metrics):
            for ki, k in enumerate(self.ks):
                key = f"{name}@{k}"
                out[key] = overall[mi, ki]
                out.update({f"{key}/g{g}": means[mi, ki, g] for g in range(self.num_groups)})
                out[f"{key}/gap"] = high[mi, ki] - low[mi, ki]
                out[f"{key}/ratio"] = low[mi, ki] / high[mi, ki]
                out[f"{key}/cv"] = std[mi, ki] / mean[mi, ki]
                if self.num_groups == 2:
                    out[f"{key}/pd"] = means[mi, ki, 0] - means[mi, ki, 1]
                    out[f"{key}/ugf"] = out[f"{key}/pd"].abs()
        return out
