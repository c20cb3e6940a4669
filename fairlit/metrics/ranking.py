"""Top-K accuracy metrics as a torchmetrics class with per-metric sum states."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from fairlit.metrics._validation import check_ks, check_names, check_shape, check_topk
from fairlit.metrics.functional import RANKING_METRICS, per_user_metrics


class RankingMetrics(Metric):
    """Mean over users of per-user Recall/Precision/NDCG/Hit/MRR/HR at several cutoffs.

    HR (opt-in, ``"hr"``) is FairDual's hit ratio ``hits@K / min(|T_u|, K)``; Hit is ``1[hits@K > 0]``.

    ``metric@K = (1/|U_T|) Σ_{u∈U_T} metric_u@K`` with ``U_T`` the users with at least one relevant item
    (users with ``num_relevant == 0`` are skipped). States: ``sum_<metric> [len(ks)]`` (float64) and
    ``n_users`` (long), all summed across processes.

    Args:
        ks: cutoffs K.
        metrics: names from ``("recall", "precision", "ndcg", "hit", "mrr")``.
        **kwargs: forwarded to ``torchmetrics.Metric``.

    Example:
        >>> m = RankingMetrics(ks=[2], metrics=("recall", "hit"))
        >>> m.update(torch.tensor([[True, False], [False, False]]), torch.tensor([2, 1]))
        >>> {k: round(v.item(), 3) for k, v in m.compute().items()}
        {'recall@2': 0.25, 'hit@2': 0.5}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = (10, 20),
        metrics: Sequence[str] = ("recall", "ndcg", "hit", "mrr", "precision"),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.ks = check_ks(ks)
        self.metrics = check_names(metrics, RANKING_METRICS)
        for name in self.metrics:
            zeros = torch.zeros(len(self.ks), dtype=torch.float64)
            self.add_state(f"sum_{name}", zeros, dist_reduce_fx="sum")
        self.add_state("n_users", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, hits: Tensor, num_relevant: Tensor) -> None:
        """Accumulate a batch.

        Args:
            hits: ``[B, Kmax]`` bool, ``Kmax >= max(ks)``.
            num_relevant: ``[B]`` long, ``|T_u|``.
        """
        check_topk("hits", hits, max(self.ks))
        check_shape("num_relevant", num_relevant, (hits.shape[0],))
        keep = num_relevant > 0
        hits, num_relevant = hits[keep], num_relevant[keep]
        values = per_user_metrics(hits, num_relevant, self.ks, self.metrics).double().sum(-1)  # [M, len(ks)]
        for name, value in zip(self.metrics, values):
            setattr(self, f"sum_{name}", getattr(self, f"sum_{name}") + value)
        self.n_users += hits.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"<metric>@<K>": mean}``; NaN if no user was seen."""
        return {
            f"{name}@{k}": getattr(self, f"sum_{name}")[i] / self.n_users
            for name in self.metrics
            for i, k in enumerate(self.ks)
        }
