"""Independent plain-loop NumPy oracles and random ranking data for the metric tests."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Case:
    """A batch of rankings: Python lists for the oracles, tensors for the code under test."""

    lists: list[list[int]]  # per user, item ids in rank order (padding -1 at the tail)
    targets: list[list[int]]  # per user, relevant item ids
    scores: list[list[float]]
    topk: torch.Tensor  # [B, K]
    scores_t: torch.Tensor  # [B, K]
    indptr: torch.Tensor  # [B + 1]
    indices: torch.Tensor  # [nnz]
    num_items: int
    kmax: int

    def rows(self, lo: int, hi: int) -> "Case":
        """Users ``lo:hi`` as their own case (for split-batch tests)."""
        rows = slice(lo, hi)
        return make_case(self.lists[rows], self.targets[rows], self.scores[rows], self.num_items, self.kmax)


def make_case(lists, targets, scores, num_items: int, kmax: int) -> Case:
    indptr = np.cumsum([0] + [len(t) for t in targets])
    flat = [i for t in targets for i in t]
    return Case(
        lists, targets, scores,
        torch.tensor(lists, dtype=torch.long).view(-1, kmax),
        torch.tensor(scores, dtype=torch.float32).view(-1, kmax),
        torch.tensor(indptr, dtype=torch.long).view(-1),
        torch.tensor(flat, dtype=torch.long),
        num_items,
        kmax,
    )


def random_case(seed: int, batch: int, num_items: int, kmax: int, max_targets: int = 6, pad: bool = True):
    """Random distinct top-K lists (some padded with -1), random target sets (some empty), random scores."""
    rng = np.random.default_rng(seed)
    lists, targets, scores = [], [], []
    for _ in range(batch):
        shown = min(kmax, num_items) if not pad else int(rng.integers(0, min(kmax, num_items) + 1))
        items = rng.permutation(num_items)[:shown].tolist()
        lists.append(items + [-1] * (kmax - shown))
        n_t = int(rng.integers(0, min(max_targets, num_items) + 1))
        # Targets overlap the list often, so hits are common.
        pool = list(dict.fromkeys(items + rng.permutation(num_items).tolist()))
        targets.append(sorted(rng.choice(pool[: 2 * n_t + 1], size=n_t, replace=False).tolist()))
        scores.append(rng.normal(size=kmax).tolist())
    return make_case(lists, targets, scores, num_items, kmax)


def user_metric(name: str, items: list[int], targets: list[int], k: int) -> float:
    """One user's metric at cutoff k, by definition."""
    top = items[:k]
    rel = [1 if (i >= 0 and i in targets) else 0 for i in top]
    hit = sum(rel)
    if name == "recall":
        return hit / len(targets)
    if name == "precision":
        return hit / k
    if name == "hit":
        return float(hit > 0)
    if name == "mrr":
        return next((1.0 / (r + 1) for r, x in enumerate(rel) if x), 0.0)
    dcg = sum(x / math.log2(r + 2) for r, x in enumerate(rel))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(targets))))
    return dcg / idcg


def gini(u) -> float:
    """Mean-absolute-difference Gini: Σ_i Σ_j |u_i − u_j| / (2 G² mean)."""
    u = np.asarray(u, dtype=float)
    return float(np.abs(u[:, None] - u[None, :]).sum() / (2 * len(u) ** 2 * u.mean()))


def mmf(u, ratio: float) -> float:
    u = sorted(u)
    return sum(u[: int(math.floor(ratio * len(u)))]) / sum(u)


def entropy(u) -> float:
    total = sum(u)
    return -sum((x / total) * math.log2(x / total) for x in u if x > 0)


def cv(u) -> float:
    with np.errstate(invalid="ignore"):  # 0/0 -> NaN, as in torch
        return float(np.std(u) / np.mean(u))
