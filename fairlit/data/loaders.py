"""Map-style datasets and the epoch sampler behind :class:`~fairlit.data.datamodule.RecDataModule`.

Both datasets implement ``__getitems__`` (torch's batched fetch), so a whole batch is gathered with tensor
indexing; the DataLoader's ``collate_fn`` is :func:`identity_collate`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from fairlit.data.sampling import csr_slice, sample_negatives


def identity_collate(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The dataset's ``__getitems__`` already returns the collated batch."""
    return batch


class SplitBatches:
    """Collate of a fetch of several batches at once: the rows cut into a list of ``batch_size``-row batches.

    The rows arrive in sampler order, so the batches are exactly those a loader with ``batch_size`` yields.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        size = self.batch_size
        return [{key: value[s:s + size] for key, value in batch.items()} for s in range(0, len(batch["user"]), size)]


def histories(user: Tensor, item: Tensor, time: Tensor, num_users: int, length: int,
              pad: int) -> tuple[Tensor, Tensor]:
    """Last ``length`` items of each user strictly before each row, and at the end of each user's rows.

    Rows are ordered per user by ``(time, row)``; windows are left-padded with ``pad`` so that the most
    recent item is last.

    Args:
        user: [N] int64 user of each row.
        item: [N] int64 item of each row.
        time: [N] times.
        num_users: U.
        length: H.
        pad: id written in empty slots.

    Returns:
        ``(row_history [N, H], user_history [U, H])`` int64; ``user_history[u]`` is the last H items
        of user u (used at evaluation).
    """
    n = len(user)
    order = torch.from_numpy(np.lexsort((np.arange(n), time.numpy(), user.numpy())))
    sorted_item = item[order]
    counts = torch.bincount(user, minlength=num_users)
    start = torch.cumsum(counts, 0) - counts
    steps = torch.arange(-length, 0)  # [H]: offsets -H..-1

    def window(end: Tensor, first: Tensor) -> Tensor:
        pos = end[:, None] + steps[None, :]
        ok = pos >= first[:, None]
        return torch.where(ok, sorted_item[pos.clamp(min=0)], torch.full_like(pos, pad))

    sorted_pos = torch.arange(n)
    row_hist = torch.empty(n, length, dtype=torch.long)
    row_hist[order] = window(sorted_pos, start[user[order]])
    return row_hist, window(start + counts, start)


class TrainInteractions(Dataset):
    """Training rows with M negatives per row, redrawn for each epoch by :meth:`resample`.

    A batch is ``{"user": [B], "pos": [B], "neg": [B, M]}`` int64, plus ``"history": [B, H]`` when
    ``history`` is given. The negatives live in shared memory, so DataLoader workers (also persistent
    ones) see each epoch's redraw.

    Args:
        users: [N] int64 user of each training row.
        items: [N] int64 positive item of each row.
        num_items: I.
        exclude: CSR ``(indptr, indices)`` of the user's training items (never drawn as negatives).
        num_negatives: M.
        seed: epoch e draws with ``torch.Generator().manual_seed(seed + e)``.
        probs: [I] sampling weights, uniform if ``None``.
        history: [N, H] history of each row or ``None``.
    """

    def __init__(self, users: Tensor, items: Tensor, num_items: int, exclude: tuple[Tensor, Tensor],
                 num_negatives: int, seed: int, probs: Tensor | None = None, history: Tensor | None = None):
        self.users, self.items, self.history = users, items, history
        self.num_items, self.exclude, self.probs = num_items, exclude, probs
        self.num_negatives, self.seed = num_negatives, seed
        self.neg = torch.empty(len(users), num_negatives, dtype=torch.long).share_memory_()
        self.epoch = -1
        self.resample(0)

    def resample(self, epoch: int) -> None:
        """Redraw every row's negatives for ``epoch`` in one vectorised call."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        self.neg.copy_(sample_negatives(self.users, self.num_negatives, self.num_items, self.exclude, gen,
                                        self.probs))
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.users)

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"user": self.users[idx], "pos": self.items[idx], "neg": self.neg[idx]}
        if self.history is not None:
            batch["history"] = self.history[idx]
        return batch

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.__getitems__([index])


class EpochSampler(DistributedSampler):
    """Rank-aware shuffling sampler (``seed + epoch``) that also redraws the dataset's negatives.

    Lightning keeps a ``DistributedSampler`` it is given and calls :meth:`set_epoch` before each epoch,
    so every rank sees a disjoint shard of the same epoch permutation and the same negatives.
    """

    def __init__(self, dataset: TrainInteractions, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.dataset.epoch != epoch:
            self.dataset.resample(epoch)


class EvalUsers(Dataset):
    """Users evaluated in one split, batched as CSR slices.

    A batch is ``{"user": [B], "exclude_indptr": [B+1], "exclude_indices": [nnz_e], "target_indptr":
    [B+1], "target_indices": [nnz_t]}`` int64, plus ``"candidates": [B, C]``, ``"history": [B, H]`` and
    ``"user_group": [B]`` when given.

    Args:
        users: [E] int64 users with at least one target item.
        exclude: CSR over all users of items to mask (score -inf) for each user.
        target: CSR over all users of the relevant items in this split.
        candidates: [E, C] sampled negatives per evaluated user (sampled protocols) or ``None``.
        history: [U, H] per-user history or ``None``.
        user_group: [U] user group ids or ``None``.
    """

    def __init__(self, users: Tensor, exclude: tuple[Tensor, Tensor], target: tuple[Tensor, Tensor],
                 candidates: Tensor | None = None, history: Tensor | None = None,
                 user_group: Tensor | None = None):
        self.users, self.exclude, self.target = users, exclude, target
        self.candidates, self.history, self.user_group = candidates, history, user_group

    def __len__(self) -> int:
        return len(self.users)

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        u = self.users[idx]
        e_ptr, e_idx = csr_slice(*self.exclude, u)
        t_ptr, t_idx = csr_slice(*self.target, u)
        batch = {"user": u, "exclude_indptr": e_ptr, "exclude_indices": e_idx,
                 "target_indptr": t_ptr, "target_indices": t_idx}
        if self.candidates is not None:
            batch["candidates"] = self.candidates[idx]
        if self.history is not None:
            batch["history"] = self.history[u]
        if self.user_group is not None:
            batch["user_group"] = self.user_group[u]
        return batch

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.__getitems__([index])
