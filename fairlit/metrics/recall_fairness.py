"""Recall-based item-group fairness: FairNeg's pooled group recall and ITFR's intersectional utility."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from fairlit.metrics import functional as F
from fairlit.metrics._validation import (
    check_hits,
    check_ids,
    check_ks,
    check_num_groups,
    check_ratio,
    check_shape,
    check_topk,
)


class _ItemGroupRecallBase(Metric):
    """Shared init/validation: an item -> group map and the hits of each list, split by cutoff and group."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, item_group: Tensor, num_item_groups: int, ks: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_item_groups = check_num_groups("num_item_groups", num_item_groups)
        self.ks = check_ks(ks)
        if item_group.dim() != 1:
            raise ValueError(f"item_group must be 1-D [I], got shape {tuple(item_group.shape)}")
        check_ids("item_group", item_group, self.num_item_groups)
        self.register_buffer("item_group", item_group.long(), persistent=False)
        self.register_buffer("ks_tensor", torch.tensor(self.ks), persistent=False)

    def _hits_by_group(self, topk_items: Tensor, hits: Tensor, target_indptr: Tensor, target_indices: Tensor):
        """Validate one batch and split it by item group.

        Returns:
            ``hit_counts [L, B, Q]`` (float64): hits within the top K in item group q;
            ``relevant [B, Q]`` (long): ``|T_u ∩ V_q|``.
        """
        check_topk("topk_items", topk_items, max(self.ks))
        check_ids("topk_items", topk_items, self.item_group.numel(), allow_padding=True)
        check_shape("hits", hits, tuple(topk_items.shape))
        check_hits("hits", hits)
        relevant = F.targets_per_group(target_indptr, target_indices, self.item_group, self.num_item_groups)
        batch, kmax = topk_items.shape
        num_l, num_q = len(self.ks), self.num_item_groups
        ranks = torch.arange(kmax, device=hits.device)
        counted = hits & (topk_items >= 0) & (ranks < self.ks_tensor[:, None, None])  # [L, B, Kmax]
        groups = self.item_group[topk_items.clamp_min(0)]  # [B, Kmax]; padding masked out above
        cell = torch.arange(batch, device=hits.device)[:, None] * num_q + groups
        flat = torch.arange(num_l, device=hits.device)[:, None, None] * (batch * num_q) + cell
        out = torch.zeros(num_l * batch * num_q, dtype=torch.float64, device=hits.device)
        out.index_add_(0, flat.flatten(), counted.flatten().to(torch.float64))
        hit_counts = out.view(num_l, batch, num_q)
        # Over every cutoff (ks keep the caller's order): a count above the targets gives a group recall above 1.
        if bool((hit_counts.amax(0) > relevant).any()):
            raise ValueError("hits marks more items of an item group in a row than the row's targets hold: hits "
                             "must come from these topk_items and targets (hits_from_csr)")
        return hit_counts, relevant


class GroupRecall(_ItemGroupRecallBase):
    """Pooled ("system-level") recall per item group and its disparity (FairNeg §4.4, DPR's REO).

    ``r_a@K = Σ_u |R_u ∩ T_u ∩ V_a| / Σ_u |T_u ∩ V_a|`` (pooled over users, not a mean of per-user
    recalls). Over the groups with at least one relevant item (others give ``r_a = NaN`` and are left out):
    ``recall_disp@K = std(r) / (mean(r) + 1e-10)`` (population std), ``recall_min@K = min_a r_a``,
    ``recall_avg@K = mean_a r_a``. Also returns ``group_recall@K/g<a>``.

    States: ``grp_hits [len(ks), A]`` and ``grp_test [A]``, summed across processes.

    Args:
        item_group: ``[I]`` long group id per item.
        num_groups: A.
        ks: cutoffs.
    """

    def __init__(self, item_group: Tensor, num_groups: int, ks: Sequence[int] = (10, 20), **kwargs) -> None:
        super().__init__(item_group, num_groups, ks, **kwargs)
        shape = (len(self.ks), self.num_item_groups)
        self.add_state("grp_hits", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("grp_test", torch.zeros(shape[1], dtype=torch.long), dist_reduce_fx="sum")

    def update(self, topk_items: Tensor, hits: Tensor, target_indptr: Tensor, target_indices: Tensor) -> None:
        """Accumulate a batch.

        Args:
            topk_items: ``[B, Kmax]`` long, ``-1`` = padding.
            hits: ``[B, Kmax]`` bool (e.g. from ``hits_from_csr``).
            target_indptr: ``[B + 1]`` long CSR row pointer of the test items.
            target_indices: ``[nnz]`` long test item ids.
        """
        hit_counts, relevant = self._hits_by_group(topk_items, hits, target_indptr, target_indices)
        self.grp_hits += hit_counts.sum(1)
        self.grp_test += relevant.sum(0)

    def compute(self) -> dict[str, Tensor]:
        """Return ``recall_disp@K``, ``recall_min@K``, ``recall_avg@K`` and ``group_recall@K/g<a>``."""
        recall = self.grp_hits / self.grp_test  # [L, A]; NaN for a group without relevant items
        mean, std, low, _ = F.nan_group_stats(recall)
        out = {}
        for i, k in enumerate(self.ks):
            out[f"recall_disp@{k}"] = std[i] / (mean[i] + 1e-10)
            out[f"recall_min@{k}"] = low[i]
            out[f"recall_avg@{k}"] = mean[i]
            out.update({f"group_recall@{k}/g{a}": recall[i, a] for a in range(self.num_item_groups)})
        return out


class IntersectionalFairness(_ItemGroupRecallBase):
    """Intersectional two-sided group utility (ITFR §1, §4.5).

    For user group p and item group q:
    ``ITG(p,q)@K = (1/|U(p,q)|) Σ_{u∈U(p,q)} |topK(u) ∩ T_u ∩ V_q| / |T_u ∩ V_q|`` with
    ``U(p,q)`` = users of p with at least one test item in q. A cell with no such user is NaN (it makes
    the CVs NaN and sorts last in ``min@K``); zero cells are kept. Over the G = P·Q cells ``Util``:
    ``cv@K = std(Util)/mean(Util)`` (population std), ``min@K`` = mean of the ``⌊G/4⌋`` smallest cells,
    ``icv@K = (1/P) Σ_p CV(Util[p, :])``, ``ucv@K = (1/Q) Σ_q CV(Util[:, q])``; plus ``itg@K/u<p>i<q>``.

    States: ``util_sum [len(ks), P, Q]`` and ``interested [P, Q]``, summed across processes.

    Args:
        num_user_groups: P.
        item_group: ``[I]`` long item group per item.
        num_item_groups: Q.
        ks: cutoffs.
        min_ratio: share of worst cells averaged by ``min@K``, in ``(0, 1]``.
    """

    def __init__(
        self,
        num_user_groups: int,
        item_group: Tensor,
        num_item_groups: int,
        ks: Sequence[int] = (10, 20),
        min_ratio: float = 0.25,
        **kwargs,
    ) -> None:
        super().__init__(item_group, num_item_groups, ks, **kwargs)
        self.num_user_groups = check_num_groups("num_user_groups", num_user_groups)
        self.min_ratio = check_ratio("min_ratio", min_ratio, zero_ok=False)
        cells = (self.num_user_groups, self.num_item_groups)
        util = torch.zeros(len(self.ks), *cells, dtype=torch.float64)
        self.add_state("util_sum", util, dist_reduce_fx="sum")
        self.add_state("interested", torch.zeros(cells, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        topk_items: Tensor,
        hits: Tensor,
        target_indptr: Tensor,
        target_indices: Tensor,
        user_group: Tensor,
    ) -> None:
        """Accumulate a batch.

        Args:
            topk_items: ``[B, Kmax]`` long, ``-1`` = padding.
            hits: ``[B, Kmax]`` bool.
            target_indptr: ``[B + 1]`` long CSR row pointer of the test items.
            target_indices: ``[nnz]`` long test item ids.
            user_group: ``[B]`` long user group in ``[0, P)``.
        """
        check_shape("user_group", user_group, (topk_items.shape[0],))
        check_ids("user_group", user_group, self.num_user_groups)
        hit_counts, relevant = self._hits_by_group(topk_items, hits, target_indptr, target_indices)
        utility = hit_counts / relevant.clamp_min(1)  # [L, B, Q]; 0 where the user has no item in q
        self.util_sum.index_add_(1, user_group, utility)
        self.interested.index_add_(0, user_group, (relevant > 0).long())

    def compute(self) -> dict[str, Tensor]:
        """Return ``cv@K``, ``min@K``, ``icv@K``, ``ucv@K`` and the cells ``itg@K/u<p>i<q>``."""
        itg = self.util_sum / self.interested  # [L, P, Q]
        flat = itg.flatten(1)
        summaries = {
            "cv": F.coefficient_of_variation(flat),
            "min": F.worst_fraction_mean(flat, self.min_ratio),
            "icv": F.coefficient_of_variation(itg).mean(-1),
            "ucv": F.coefficient_of_variation(itg.transpose(1, 2)).mean(-1),
        }
        out = {f"{name}@{k}": value[i] for name, value in summaries.items() for i, k in enumerate(self.ks)}
        for i, k in enumerate(self.ks):
            for p in range(self.num_user_groups):
                out.update({f"itg@{k}/u{p}i{q}": itg[i, p, q] for q in range(self.num_item_groups)})
        return out
