"""``RecDataModule``: implicit-feedback recommendation data for every fairlit method."""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import os
import re
import types
import typing
import warnings

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader

from fairlit.data.builtin import load_dataset
from fairlit.data.groups import DEFAULT_AGE_EDGES
from fairlit.data.loaders import EpochSampler, EvalUsers, SplitBatches, TrainInteractions, histories, identity_collate
from fairlit.data.pipeline import SPLIT_NAMES, Prepared, check_at_least, check_prepared, prepare, single_group_csr
from fairlit.data.sampling import build_csr, sample_negatives

_PROTOCOL = re.compile(r"^(uni|pop)(\d+)$")


def _has_type(value: object, hint: object) -> bool:
    """Whether ``value`` fits an ``__init__`` annotation: ``int`` (not bool), ``float`` (any real number),
    ``bool``, ``str`` (or a path), ``None``, a union of those, or a list/tuple for ``tuple[...]``/``list[...]``
    (its elements are checked where they are used)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if hint is int:
        return isinstance(value, numbers.Integral)
    if hint is float:
        return isinstance(value, numbers.Real)
    if hint is str:
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, (list, tuple))
# __init__ arguments that build a Prepared (refused by from_prepared).
_PREPROCESSING = {"dataset", "rating_threshold", "k_core", "user_core", "item_core", "core_iterated", "split",
                  "split_ratios", "item_group", "item_group_genres", "genre_field", "user_group",
                  "num_quantile_groups", "age_edges", "item_group_min_size"}


class RecDataModule(L.LightningDataModule):
    """Reads, filters, groups and splits a dataset in ``__init__`` so that sizes are known before the model.

    Batches (all int64):

    * train: ``user [B]``, ``pos [B]``, ``neg [B, M]``; ``history [B, H]`` if ``history_length > 0``.
    * valid/test: ``user [B]``, ``exclude_indptr [B+1]``, ``exclude_indices``, ``target_indptr [B+1]``,
      ``target_indices`` (CSR slices: items to mask, relevant items); ``candidates [B, C]`` for sampled
      protocols; ``history [B, H]``; ``user_group [B]`` when user groups are set. Only users with at least
      one item in the split are evaluated (others are skipped, not counted as zero). A user (item) group
      without an evaluated user (a target item) in a split gets a warning: its per-group metrics there are NaN.

    A (user, item) pair repeated in the ``.inter`` file keeps its earliest row (after the rating threshold), with
    a warning; bad arguments and malformed files raise a ``ValueError`` naming the argument or file and column.

    Histories are left-padded with ``history_pad_id = num_items`` (give the item embedding one extra row);
    the most recent item is last. Eval histories are each user's last H training items.

    Args:
        dataset: built-in name (``"ml-100k"``, ``"ml-1m"``) or a directory holding ``<dir name>.inter``
            (+ optional ``.user``/``.item``) RecBole atomic files.
        rating_threshold: keep rows with ``rating >= threshold`` as positives (drop the rest); ``None``
            makes every row a positive.
        k_core: shorthand for ``user_core = item_core = k_core``.
        user_core: minimum interactions per user (overrides ``k_core``).
        item_core: minimum interactions per item (overrides ``k_core``).
        core_iterated: repeat filtering to a fixed point (RecBole); else one pass, users then items.
        split: ``"random"`` (per-user random ratio, RecBole RS), ``"chrono"`` (global by time) or
            ``"leave_one_out"`` (per user, by time).
        split_ratios: train/valid/test ratios for ``random`` and ``chrono``: three finite numbers > 0,
            normalised by their sum.
        item_group: ``"genre_first"``, ``"genre_exclusive"`` (drops items without exactly one of
            ``item_group_genres``), ``"genre_multi"`` (row-normalised CSR), ``"popularity"`` or ``None``.
        item_group_min_size: merge item groups with fewer items into one "infrequent" group (FairDual: 50);
            at most the largest group's size.
        item_group_genres: genre names for ``genre_exclusive`` (group order) / subset for ``genre_multi``.
        genre_field: genre column of the ``.item`` file.
        user_group: ``"gender"``, ``"age"``, ``"occupation"``, ``"activity"`` or ``None``.
        num_quantile_groups: number of popularity/activity quantile groups, 1 to the number of items/users.
        age_edges: age bucket lower bounds for ``user_group="age"``, strictly increasing; every bucket must
            hold a user.
        num_negatives: M negatives per training row.
        negative_sampling: ``"uniform"`` or ``"popularity"`` (train count ** ``popularity_exponent``).
        popularity_exponent: beta >= 0 of popularity sampling.
        batch_size: training batch size (per rank): rows per optimizer step.
        batches_per_step: C; the training loader fetches C batches at once and hands them to one Lightning
            ``training_step`` as a list, which makes one optimizer step per batch. Training is the same as
            with C = 1 (same batches, same order); Lightning's per-step overhead (~1 ms on a CPU) is paid once
            per C batches, which matters for small batches of small models. Lightning's logging step axis
            then counts fetches.
        eval_batch_size: users per evaluation batch.
        history_length: H; 0 disables histories.
        eval_protocol: ``"full"`` (rank all items) or ``"uniN"``/``"popN"``: N sampled negatives per user,
            never any of the user's positives in any split, fixed for the whole run. N is at most the number of
            items every evaluated user can draw.
        exclude_valid_at_test: at test time also mask validation items (RecBole full ranking does).
        num_workers: DataLoader workers.
        seed: seeds the split, the epoch negatives (``seed + epoch``) and the shuffling.
    """

    def __init__(self, dataset: str = "ml-100k", rating_threshold: float | None = None, k_core: int = 0,
                 user_core: int | None = None, item_core: int | None = None, core_iterated: bool = True,
                 split: str = "random", split_ratios: tuple[float, ...] = (0.8, 0.1, 0.1),
                 item_group: str | None = None, item_group_genres: list[str] | None = None,
                 genre_field: str = "genre", user_group: str | None = None, num_quantile_groups: int = 2,
                 age_edges: tuple[float, ...] = DEFAULT_AGE_EDGES, num_negatives: int = 1,
                 negative_sampling: str = "uniform", popularity_exponent: float = 1.0,
                 batch_size: int = 4096, batches_per_step: int = 1, eval_batch_size: int = 4096,
                 history_length: int = 0, eval_protocol: str = "full", exclude_valid_at_test: bool = True,
                 num_workers: int = 0,
                 seed: int = 2020, item_group_min_size: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self._check_argument_types(self.hparams)
        self._check_loader_options()
        self._index(prepare(load_dataset(dataset), rating_threshold=rating_threshold,
                            user_core=k_core if user_core is None else user_core,
                            item_core=k_core if item_core is None else item_core, core_iterated=core_iterated,
                            split=split, split_ratios=split_ratios, item_group=item_group,
                            item_group_genres=item_group_genres, genre_field=genre_field, user_group=user_group,
                            num_quantile_groups=num_quantile_groups, age_edges=age_edges, seed=seed,
                            item_group_min_size=item_group_min_size))

    @classmethod
    def from_prepared(cls, prepared: Prepared, **options) -> RecDataModule:
        """A data module over interactions that are already indexed, grouped and split.

        For splits made elsewhere (e.g. another library's processed files, to train on exactly the same
        rows): ``prepared`` is used as given, and ``options`` are the loader arguments of ``__init__``
        (``batch_size``, ``num_negatives``, ``eval_protocol``, ``seed``, ...). Preprocessing arguments
        (``dataset``, thresholds, cores, split, groups) are refused: they do not apply to prepared data.
        A single-label ``item_group`` without ``item_group_csr`` gets the one-group-per-item CSR.

        Raises:
            TypeError: an unknown or a preprocessing option.
            ValueError: ``prepared`` is inconsistent (lengths, id ranges, empty part, group vector size).
        """
        params = inspect.signature(cls.__init__).parameters
        accepted = set(params) - _PREPROCESSING - {"self"}
        refused = sorted(set(options) - accepted)
        if refused:
            raise TypeError(f"RecDataModule.from_prepared: options {refused} are not loader arguments; it "
                            f"accepts {sorted(accepted)}")
        dm = cls.__new__(cls)
        L.LightningDataModule.__init__(dm)
        dm.save_hyperparameters({name: p.default for name, p in params.items() if name != "self"}
                                | {"dataset": None} | options)
        dm._check_argument_types(options)
        dm._check_loader_options()
        check_prepared(prepared)
        if prepared.item_group is not None and prepared.item_group_csr is None:
            prepared = dataclasses.replace(prepared, item_group_csr=single_group_csr(prepared.item_group))
        dm._index(prepared)
        return dm

    @staticmethod
    def _check_argument_types(arguments: dict) -> None:
        """Raise a ``TypeError`` naming the first argument whose value does not fit its annotation (the CLI's
        parser checks this; a Python caller's "32" for batch_size, "no" for a flag or a list for dataset would
        otherwise fail deep inside, or be read as True)."""
        hints = typing.get_type_hints(RecDataModule.__init__)
        for name, value in arguments.items():
            if name in hints and not _has_type(value, hints[name]):
                raise TypeError(f"RecDataModule: {name}={value!r} ({type(value).__name__}) does not fit its type "
                                f"{hints[name]}")

    def _check_loader_options(self) -> None:
        hp = self.hparams
        # popularity_exponent < 0 would give the items never trained on (count 0) an infinite weight.
        for name, minimum in (("batch_size", 1), ("batches_per_step", 1), ("eval_batch_size", 1),
                              ("num_negatives", 1), ("history_length", 0), ("num_workers", 0), ("seed", 0),
                              ("popularity_exponent", 0)):
            check_at_least(name, hp[name], minimum)
        if hp.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling={hp.negative_sampling!r} is not 'uniform' or 'popularity'")
        match = _PROTOCOL.match(hp.eval_protocol)
        if hp.eval_protocol != "full" and (match is None or int(match.group(2)) < 1):
            raise ValueError(f"eval_protocol={hp.eval_protocol!r}: use 'full', 'uniN' or 'popN' with N >= 1 "
                             "(e.g. 'uni100')")

    def _index(self, prep: Prepared) -> None:
        """Build the tensors, CSR slices, histories and fixed evaluation candidates of ``prep``."""
        hp = self.hparams
        self.prepared = prep
        self.num_users, self.num_items = len(prep.user_tokens), len(prep.item_tokens)
        self.history_pad_id = self.num_items

        def as_long(a: np.ndarray | None) -> Tensor | None:
            return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.int64))

        self.item_group, self.user_group = as_long(prep.item_group), as_long(prep.user_group)
        self.num_item_groups = len(prep.item_group_names)
        self.num_user_groups = len(prep.user_group_names)
        self.item_group_csr = None if prep.item_group_csr is None else (
            as_long(prep.item_group_csr[0]), as_long(prep.item_group_csr[1]),
            torch.as_tensor(prep.item_group_csr[2], dtype=torch.float32))

        user, item = torch.from_numpy(prep.user), torch.from_numpy(prep.item)
        rows = {name: torch.from_numpy(part) for name, part in zip(SPLIT_NAMES, prep.parts)}
        self.train_users, self.train_items = user[rows["train"]], item[rows["train"]]
        self.train_csr = build_csr(self.train_users, self.train_items, self.num_users)
        self._csr = {name: build_csr(user[r], item[r], self.num_users) for name, r in rows.items()}
        train_valid = torch.cat([rows["train"], rows["valid"]])
        self._exclude = {"valid": self.train_csr,
                         "test": build_csr(user[train_valid], item[train_valid], self.num_users)
                         if hp.exclude_valid_at_test else self.train_csr}
        counts = torch.bincount(self.train_items, minlength=self.num_items).double()
        self._neg_probs = counts.pow(hp.popularity_exponent) if hp.negative_sampling == "popularity" else None

        self._train_history = self._user_history = None
        if hp.history_length > 0:
            t = torch.from_numpy(prep.time[prep.parts[0]])
            self._train_history, self._user_history = histories(
                self.train_users, self.train_items, t, self.num_users, hp.history_length, self.history_pad_id)

        self._candidates: dict[str, Tensor | None] = {"valid": None, "test": None}
        match = _PROTOCOL.match(hp.eval_protocol)
        if match is not None:
            everything = build_csr(user, item, self.num_users)
            probs = counts if match.group(1) == "pop" else None
            self._check_candidate_room(int(match.group(2)), everything, probs)
            for k, stage in enumerate(("valid", "test")):
                gen = torch.Generator().manual_seed(hp.seed + 10_007 * (k + 1))  # fixed per stage, not per epoch
                self._candidates[stage] = sample_negatives(self._eval_users(stage), int(match.group(2)),
                                                           self.num_items, everything, gen, probs)
        self._warn_groups_without_targets()

    def _check_candidate_room(self, num_candidates: int, positives: tuple[Tensor, Tensor],
                              probs: Tensor | None) -> None:
        """Raise naming ``eval_protocol`` if an evaluated user has fewer than ``num_candidates`` items to draw
        candidates from: items that are not its positives and, for ``popN``, have a training interaction."""
        indptr, indices = positives
        drawable = torch.ones(self.num_items, dtype=torch.long) if probs is None else (probs > 0).long()
        owner = torch.repeat_interleave(torch.arange(self.num_users), indptr.diff())
        room = drawable.sum() - torch.zeros(self.num_users, dtype=torch.long).index_add_(0, owner, drawable[indices])
        users = torch.cat([self._eval_users("valid"), self._eval_users("test")])
        tightest = int(users[room[users].argmin()])
        most = int(room[tightest])
        if most < num_candidates:
            unsampled = "its positives" + (" and the items without a training interaction" if probs is not None else "")
            raise ValueError(f"eval_protocol={self.hparams.eval_protocol!r} draws {num_candidates} candidates per "
                             f"user, but user {self.prepared.user_tokens[tightest]!r} has only {most} items to draw "
                             f"from (the {self.num_items} items less {unsampled}); expected N <= {most}")

    def _warn_groups_without_targets(self) -> None:
        """Warn, per evaluation split, about the groups whose per-group metrics will be NaN there: user groups
        without an evaluated user, item groups (by ``item_group``, each item's first group) without a target."""
        for stage in ("valid", "test"):
            for side, groups, members, names, what in (
                    ("user", self.user_group, self._eval_users(stage), self.prepared.user_group_names,
                     "evaluated user"),
                    ("item", self.item_group, self._csr[stage][1], self.prepared.item_group_names, "target item")):
                if groups is None:
                    continue
                seen = torch.bincount(groups[members], minlength=len(names))
                missing = [names[g] for g in torch.nonzero(seen == 0).flatten().tolist()]
                if missing:
                    warnings.warn(f"{side} group(s) {missing} have no {what} in the {stage} split: their per-group "
                                  f"{stage} metrics will be NaN")

    def _eval_users(self, stage: str) -> Tensor:
        indptr = self._csr[stage][0]
        return torch.nonzero(indptr[1:] > indptr[:-1]).flatten()

    def stats(self) -> dict[str, float | int]:
        """Counts after preprocessing: users, items, interactions, split sizes, density, groups, raw counts."""
        n = len(self.prepared.user)
        sizes = {name: len(part) for name, part in zip(SPLIT_NAMES, self.prepared.parts)}
        return {**self.prepared.raw, "users": self.num_users, "items": self.num_items, "interactions": n,
                **sizes, **{f"{s}_users": len(self._eval_users(s)) for s in ("valid", "test")},
                "density": n / (self.num_users * self.num_items),
                "item_groups": self.num_item_groups, "user_groups": self.num_user_groups}

    def describe(self) -> str:
        """Print and return a one-line-per-statistic summary, with group sizes."""
        lines = [f"{k}: {v:.6f}" if isinstance(v, float) else f"{k}: {v}" for k, v in self.stats().items()]
        for side, ids, names in (("item", self.item_group, self.prepared.item_group_names),
                                 ("user", self.user_group, self.prepared.user_group_names)):
            if ids is not None:
                sizes = torch.bincount(ids, minlength=len(names)).tolist()
                lines.append(f"{side} groups: " + ", ".join(f"{a}={b}" for a, b in zip(names, sizes)))
        text = "\n".join(lines)
        print(text)
        return text

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """The loaders yield CPU tensors: on CPU there is nothing to move, so skip Lightning's generic walk over
        the batch (~0.5 ms per Lightning step for a list of 16 batches)."""
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        data = TrainInteractions(self.train_users, self.train_items, self.num_items, self.train_csr,
                                 hp.num_negatives, hp.seed, self._neg_probs, self._train_history)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(data, num_replicas=world, rank=rank, seed=hp.seed)
        collate = identity_collate if hp.batches_per_step == 1 else SplitBatches(hp.batch_size)
        return DataLoader(data, batch_size=hp.batch_size * hp.batches_per_step, sampler=sampler, collate_fn=collate,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)

    def _eval_loader(self, stage: str) -> DataLoader:
        data = EvalUsers(self._eval_users(stage), self._exclude[stage], self._csr[stage],
                         self._candidates[stage], self._user_history, self.user_group)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # Disjoint, unpadded shards: a padded DistributedSampler would count some users twice in the
        # summed metric states.
        sampler = UnrepeatedDistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.hparams.eval_batch_size, sampler=sampler,
                          collate_fn=identity_collate, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
