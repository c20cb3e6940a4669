"""FairNeg (Chen et al., WWW 2023): fairly adaptive negative sampling for BPR on any dot-product backbone.

The group-level negative sampling distribution p [A] is an outer variable: once per epoch the model's
G-BCE per item group (§3.2) drives a momentum step on p (Eqs. 4-5); every training positive then gets
one negative drawn from the mixup of the fairness-aware distribution (Eq. 6) and a hardness-aware
softmax over scores (Eq. 7), Eq. 8. Choices where the paper is silent follow
``shared/specs/fairneg.md`` §2 and §8.
"""
import logging

import torch
from torch import Tensor

from fairlit.methods._fairneg_sampler import (IMP_SCORES, code_momentum_step, csr_row_mask, draw_inverse_cdf,
                                              draw_stacked, gbce_group_sums, mixup_probs, momentum_step,
                                              stacked_cdf)
from fairlit.methods.base import check_number
from fairlit.methods.bpr import BPR

log = logging.getLogger(__name__)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


class FairNeg(BPR):
    r"""BPR whose negatives come from FairNeg's adaptive, fairness-aware mixup distribution.

    Per epoch t (paper Algorithm 1): G-BCE :math:`\mathcal L_a` over all training positives with the model
    fixed, :math:`v \leftarrow \gamma v + \alpha(\mathcal L - \bar{\mathcal L})`, :math:`p \leftarrow p - v`
    (projected onto the simplex with floor ``p_min``); then every training pair (u, i) is trained with one
    negative :math:`j \sim w_{fair} p^{fair}_u + (1 - w_{fair}) p^{imp}_u`.

    The outer step for epoch t's model runs at the start of epoch t+1 (``outer_update_at="epoch_end"``, the
    paper's order: same model, same p for the next epoch's draws). Running it there rather than in
    ``on_train_epoch_end`` keeps p in the checkpoint written after epoch t consistent with the model in it,
    so a resumed run continues the same sampling distribution. ``"epoch_start"`` (official code) adds one
    update before epoch 0.

    Draws are reproducible and independent of the number of processes: at the start of each epoch one
    uniform per training pair is drawn from ``seed + epoch``; a batch row looks up its pair's uniform by
    key ``user * n + item``, so DDP ranks draw exactly the negatives a single process would.

    Variants (spec §2.8): ``w_fair=1`` is FairNeg-Imp (w/o importance), ``dynamic=False`` FairNeg-Dynamic
    (p frozen at its initial value), ``gamma=0`` FairNeg-Momentum; FairStatic is ``w_fair=1`` and
    ``dynamic=False`` (see `fairlit.methods.FairStatic`).

    Args:
        w_fair: β of Eq. 8 (weight of the fairness-aware part), in [0, 1]. The code's ``--br`` is 1 - w_fair.
        gamma: momentum γ (Eq. 5).
        alpha: outer learning rate α (Eq. 5).
        tau: temperature τ of the importance softmax (Eq. 7).
        imp_score: ``"sigmoid"`` (code: softmax over σ(ŷ)/τ) or ``"logit"`` (ŷ/τ).
        imp_refresh: ``"epoch"`` (code: scores from a model snapshot taken at the start of each epoch) or
            ``"batch"`` (current model, Algorithm 1).
        init: initial p: ``"fairstatic"`` (paper: group shares of training positives) or ``"item_share"``
            (code: group shares of items, what uniform sampling implies).
        outer_update_at: ``"epoch_end"`` (paper) or ``"epoch_start"`` (code; one extra update before epoch 0).
        momentum_impl: ``"paper"`` (Eq. 5) or ``"code"`` (official 2-tap filter, spec §8 item 3).
        p_min: floor of every p entry after the update, in [0, 1/A).
        dynamic: run the outer update at all (False: p stays at its initial value).
        sample_seed: seeds the per-epoch uniforms of the negative draws; None takes ``torch.initial_seed()``
            at construction (i.e. ``seed_everything``).
        gbce_chunk: training pairs scored at once for G-BCE.
        sample_block: bound on the [users, n] entries of one probability block.
        epoch_table_max: with ``imp_refresh="epoch"``, draw the whole epoch's negatives at its start when
            m * n is at most this (one [m * n] float64 CDF table); above it, each batch draws its own from
            the same snapshot (same distribution, less memory).
        **kwargs: `BPR` / `RecModule` arguments (``reg_weight`` is λ of the L2 term, spec §2.2).
    """

    def __init__(self, *args, w_fair: float = 0.6, gamma: float = 0.1, alpha: float = 0.1, tau: float = 0.4,
                 imp_score: str = "sigmoid", imp_refresh: str = "epoch", init: str = "fairstatic",
                 outer_update_at: str = "epoch_end", momentum_impl: str = "paper", p_min: float = 0.0,
                 dynamic: bool = True, sample_seed: int | None = None, gbce_chunk: int = 1 << 20,
                 sample_block: int = 1 << 22, epoch_table_max: int = 1 << 25, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        # Explicit, because under LightningCLI a subclass (FairStatic) records only its own config's args.
        self.hparams.update(w_fair=w_fair, gamma=gamma, alpha=alpha, tau=tau, imp_score=imp_score,
                            imp_refresh=imp_refresh, init=init, outer_update_at=outer_update_at,
                            momentum_impl=momentum_impl, p_min=p_min, dynamic=dynamic, gbce_chunk=gbce_chunk,
                            sample_block=sample_block, epoch_table_max=epoch_table_max,
                            sample_seed=torch.initial_seed() % (1 << 31) if sample_seed is None else sample_seed)
        groups = self.hparams.num_item_groups
        if groups < 2:
            raise ValueError(f"FairNeg needs at least 2 item groups, got num_item_groups={groups}; "
                             "set data.item_group (e.g. genre_exclusive with item_group_genres)")
        check_number("w_fair (β of Eq. 8)", w_fair, 0, 1)
        check_number("gamma", gamma, 0)
        check_number("alpha", alpha, 0)
        check_number("tau", tau, 0, low_open=True)
        check_number(f"p_min (below 1/A with A = {groups} groups)", p_min, 0, 1.0 / groups, high_open=True)
        _choice("imp_score", imp_score, IMP_SCORES)
        _choice("imp_refresh", imp_refresh, ("epoch", "batch"))
        _choice("init", init, ("fairstatic", "item_share"))
        _choice("outer_update_at", outer_update_at, ("epoch_end", "epoch_start"))
        _choice("momentum_impl", momentum_impl, ("paper", "code"))
        # Group state: checkpointed, identical on every rank (updated from all-reduced sums only).
        self.register_buffer("p", torch.zeros(groups, dtype=torch.float64))
        self.register_buffer("v", torch.zeros(groups, dtype=torch.float64))  # "code": previous raw gradient
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # Training graph, groups and per-epoch counters are plain tensors, not buffers: DDP re-broadcasts
        # buffers from rank 0 before every forward, which would overwrite the per-rank negative counts.
        self._data: dict[str, Tensor] = {}
        self._snapshot: tuple[Tensor, Tensor] | None = None
        self._uniforms: Tensor | None = None
        self._epoch_neg: Tensor | None = None

    # ----------------------------------------------------------------------------------------- data facts
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or dm.item_group is None:
            raise ValueError("FairNeg needs a data module with item groups (data.item_group)")
        if not getattr(self.backbone, "dot_product", True):
            raise ValueError(f"FairNeg needs a dot-product backbone, got {type(self.backbone).__name__}")
        if getattr(self.backbone, "sequential", False):
            # Its G-BCE and importance scores are per user (one embedding per user id); the FairDual spec
            # (§4.1, §5) applies FairNeg to pairwise BPR on MF only. Sequential backbones train with full-softmax CE.
            raise ValueError(f"FairNeg is defined for pairwise BPR on user-embedding backbones (MF, LightGCN), not "
                             f"the sequential {type(self.backbone).__name__}: use it with model.backbone MF or LightGCN")
        self.set_training_data(dm.train_users, dm.train_items, dm.train_csr, dm.item_group,
                               item_group_csr=dm.item_group_csr)

    def set_training_data(self, train_users: Tensor, train_items: Tensor, train_csr: tuple[Tensor, Tensor],
                          item_group: Tensor, item_group_csr: tuple[Tensor, ...] | None = None) -> None:
        """Keep the training graph and groups (moved to the module's device on first use) and check them.

        Args:
            train_users: [P] int64 user of each training row.
            train_items: [P] int64 item of each training row.
            train_csr: (indptr [m+1], indices) of each user's sorted unique training items.
            item_group: [n] int64 group of each item.
            item_group_csr: item->groups CSR; every item must have exactly one group.

        Raises:
            ValueError: multi-group items, a group without items or without training interactions, or a user with
                no candidate negative.
        """
        groups, num_items = self.hparams.num_item_groups, self.hparams.num_items
        # Built on CPU whatever the inputs' device (one-time set-up; `_t` moves what training reads).
        train_users, train_items, item_group = train_users.cpu(), train_items.cpu(), item_group.cpu()
        train_csr = tuple(t.cpu() for t in train_csr)
        if item_group_csr is not None and bool((item_group_csr[0].diff() != 1).any()):
            raise ValueError("FairNeg needs exactly one group per item (item_group='genre_exclusive')")
        grp_size = torch.bincount(item_group, minlength=groups)
        if bool((grp_size == 0).any()):
            empty = torch.nonzero(grp_size == 0).flatten().tolist()
            raise ValueError(f"item group(s) {empty} have no items; FairNeg's Eq. 6 is undefined for them")
        train_size = torch.bincount(item_group[train_items], minlength=groups)
        if bool((train_size == 0).any()):
            empty = torch.nonzero(train_size == 0).flatten().tolist()
            raise ValueError(f"item group(s) {empty} have items but no training interaction; FairNeg's group loss "
                             "(Eq. 6, a mean over the group's training positives) is undefined for them")
        indptr, indices = train_csr
        rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
        pos_cnt = torch.zeros(len(indptr) - 1, groups, dtype=torch.long).index_put_(
            (rows, item_group[indices]), torch.ones_like(indices), accumulate=True)          # C[u, a]
        n_cand = num_items - indptr.diff()
        trained = torch.unique(train_users)
        if bool((n_cand[trained] < 1).any()):
            raise ValueError(f"user {int(trained[n_cand[trained] < 1][0])} has interacted with every item: "
                             "its negative pool is empty")
        self._data = {"item_group": item_group, "grp_size": grp_size, "pos_cnt": pos_cnt,
                      "train_indptr": indptr, "train_indices": indices,
                      "train_keys": rows * num_items + indices,
                      "train_users": train_users, "train_items": train_items,
                      "neg_group_count": torch.zeros(groups, dtype=torch.float64)}
        if float(self.p.sum()) == 0.0:  # not set yet (a checkpoint restored later overrides this)
            fairstatic = self.hparams.init == "fairstatic"
            share = train_size if fairstatic else grp_size
            self.p.copy_(share.double() / share.sum())

    def _t(self, name: str) -> Tensor:
        """A training-data tensor on the module's device (moved once, on first use there)."""
        value = self._data[name]
        if value.device != self.p.device:
            value = self._data[name] = value.to(self.p.device)
        return value

    # ----------------------------------------------------------------------------------------- outer step
    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        if hp.dynamic and (self.current_epoch > 0 or hp.outer_update_at == "epoch_start"):
            self.outer_update()
        self._t("neg_group_count").zero_()
        gen = torch.Generator(device=self.p.device)
        gen.manual_seed(hp.sample_seed * 1_000_003 + self.current_epoch)
        self._uniforms = torch.rand(len(self._t("train_keys")), generator=gen, dtype=torch.float64,
                                    device=self.p.device)
        self._snapshot = self._all_embeddings() if hp.imp_refresh == "epoch" and hp.w_fair < 1 else None
        table = hp.imp_refresh == "epoch" and hp.num_users * hp.num_items <= hp.epoch_table_max
        self._epoch_neg = self._epoch_negatives() if table else None
        self.log_diagnostics({f"fairneg/p_g{a}": value for a, value in enumerate(self.p.tolist())})

    @torch.no_grad()
    def _all_embeddings(self) -> tuple[Tensor, Tensor]:
        users = torch.arange(self.hparams.num_users, device=self.p.device)
        user_vecs, item_vecs = self.backbone.encode(users)
        return user_vecs.detach(), item_vecs.detach()

    @torch.no_grad()
    def group_losses(self) -> Tensor:
        """G-BCE per group (§3.2) of the current model over all training positives, summed over ranks.

        Returns:
            [A] float64 :math:`\\mathcal L^+_{z_a}`.
        """
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        user_vecs, item_vecs = self._all_embeddings()
        users, items = self._t("train_users")[rank::world], self._t("train_items")[rank::world]
        sums, counts = gbce_group_sums(user_vecs, item_vecs, users, items, self._t("item_group"),
                                       self.hparams.num_item_groups, self.hparams.gbce_chunk)
        sums, counts = self.all_reduce_sum(sums, counts)
        return sums / counts.clamp_min(1)

    def outer_update(self) -> Tensor:
        """One outer step on p (Eqs. 4-5) from the current model; returns the group losses [A]."""
        hp = self.hparams
        loss = self.group_losses()
        if hp.momentum_impl == "paper":
            p, v, clamped = momentum_step(self.p, self.v, loss, hp.gamma, hp.alpha, hp.p_min)
        else:
            p, v, clamped = code_momentum_step(self.p, self.v, loss, hp.alpha, int(self.num_updates) == 0)
        if clamped:
            log.info("FairNeg: p left the simplex at update %d and was projected back", int(self.num_updates))
        self.p.copy_(p)
        self.v.copy_(v)
        self.num_updates += 1
        self.log_diagnostics({f"fairneg/gbce_g{a}": value for a, value in enumerate(loss.tolist())}
                             | {f"fairneg/v_g{a}": value for a, value in enumerate(v.tolist())})
        return loss

    def on_train_epoch_end(self) -> None:
        # Share of drawn negatives per group (vs. p and the positive shares): the paper's diagnostic.
        (count,) = self.all_reduce_sum(self._t("neg_group_count"))
        share = count / count.sum().clamp_min(1)
        self.log_diagnostics({f"fairneg/neg_share_g{a}": value for a, value in enumerate(share.tolist())})

    # ----------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def mix_probs(self, users: Tensor) -> Tensor:
        """The mixup distribution (Eqs. 6-8) of `users` [B] over all items: [B, n] float32, rows sum to 1."""
        hp = self.hparams
        mask = csr_row_mask(self._t("train_indptr"), self._t("train_indices"), users, hp.num_items)   # [B, n]
        n_ua = self._t("grp_size").unsqueeze(0) - self._t("pos_cnt")[users]                         # [B, A]
        scores = None
        if hp.w_fair < 1:
            if self._snapshot is not None:
                user_vecs, item_vecs = self._snapshot[0][users], self._snapshot[1]
            else:
                user_vecs, item_vecs = self.backbone.encode(users)
            scores = user_vecs @ item_vecs.T                                                        # [B, n]
        return mixup_probs(scores, mask, self._t("item_group"), self.p, n_ua, hp.w_fair, hp.tau, hp.imp_score)

    @torch.no_grad()
    def _epoch_negatives(self) -> Tensor:
        """Negatives of every training pair for this epoch, drawn at once from one snapshot (code order).

        The users' CDF rows are stacked into one sorted [m * n] array (built in blocks of users), so the
        draw for all P pairs is a single searchsorted.
        """
        num_users, num_items = self.hparams.num_users, self.hparams.num_items
        device = self.p.device
        flat = torch.empty(num_users * num_items, dtype=torch.float64, device=device)
        block = max(1, self.hparams.sample_block // num_items)
        for s in range(0, num_users, block):
            users = torch.arange(s, min(s + block, num_users), device=device)
            rows = stacked_cdf(self.mix_probs(users), users)                              # [block, n]
            flat[s * num_items:(s + len(users)) * num_items] = rows.flatten()
        keys = self._t("train_keys")
        return draw_stacked(flat, keys // num_items, self._uniforms, num_items)

    @torch.no_grad()
    def draw_negatives(self, users: Tensor, pos: Tensor) -> Tensor:
        """One negative per training pair from the mixup distribution (Eqs. 6-8).

        Args:
            users: [B] int64.
            pos: [B] int64 positives (identify the pair's uniform).

        Returns:
            [B] int64 negatives, never a training positive of the user.
        """
        slot = torch.searchsorted(self._t("train_keys"), users * self.hparams.num_items + pos)
        if self._epoch_neg is not None:
            return self._epoch_neg[slot]
        return draw_inverse_cdf(self.mix_probs(users), self._uniforms[slot])

    def negatives(self, batch: dict[str, Tensor]) -> Tensor:
        neg = self.draw_negatives(batch["user"], batch["pos"])
        groups = self._t("item_group")[neg]  # counted by index_add_: bincount reads its max back (a CUDA sync)
        self._t("neg_group_count").index_add_(0, groups, torch.ones_like(groups, dtype=torch.float64))
        return neg.unsqueeze(1)

    def negatives_follow_model(self) -> bool:
        return self.hparams.w_fair < 1 and self.hparams.imp_refresh == "batch"
