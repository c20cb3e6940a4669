"""Ranking accuracy and group fairness metrics: pure functions plus torchmetrics classes with sum states."""

from fairlit.metrics.fairness import ItemGroupFairness, UserGroupFairness
from fairlit.metrics.functional import (
    RANKING_METRICS,
    coefficient_of_variation,
    entropy,
    gini,
    hit_at_k,
    hits_from_csr,
    min_max_ratio,
    mmf,
    mrr_at_k,
    nan_group_stats,
    ndcg_at_k,
    per_user_metrics,
    precision_at_k,
    recall_at_k,
    targets_per_group,
    worst_fraction_mean,
)
from fairlit.metrics.ranking import RankingMetrics
from fairlit.metrics.recall_fairness import GroupRecall, IntersectionalFairness

__all__ = [
    "RANKING_METRICS",
    "GroupRecall",
    "IntersectionalFairness",
    "ItemGroupFairness",
    "RankingMetrics",
    "UserGroupFairness",
    "coefficient_of_variation",
    "entropy",
    "gini",
    "hit_at_k",
    "hits_from_csr",
    "min_max_ratio",
    "mmf",
    "mrr_at_k",
    "nan_group_stats",
    "ndcg_at_k",
    "per_user_metrics",
    "precision_at_k",
    "recall_at_k",
    "targets_per_group",
    "worst_fraction_mean",
]
