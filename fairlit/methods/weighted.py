"""`WeightedLoss`: the per-sample-weighted accuracy loss that FairDual and its reweighting baselines share.

Every method of FairDual's comparison (spec §5) trains ``L = (1/B) Σ_b w_b ℓ_b + R`` on the same backbone:
ℓ_b is BPR for ID models and full-softmax CE for sequential ones (spec §2.2); a method only chooses the
detached sample weights w_b (reweighting) or a regulariser R. `ItemGroupTable` holds the item-group
adjacency Â they all read.
"""
from collections.abc import Callable
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairlit import ops
from fairlit.methods.base import STAGES, FusedAdam, RecModule, check_number
from fairlit.metrics import RankingMetrics

LOSSES = ("bpr", "ce")


class ItemGroupTable(nn.Module):
    """Row-normalised item-group adjacency Â [I, G] stored padded: ``group [I, P]``, ``weight [I, P]``.

    P = the most groups any item has; padding slots have weight 0, so every gather and scatter has a
    static shape and never syncs with the host. ``size [G]`` = |I_g| (items with a membership in g).

    Args:
        indptr: [I+1] CSR row pointers of Â.
        indices: [nnz] group ids.
        weights: [nnz] Â entries (1/n_i).
        num_groups: G.

    Raises:
        ValueError: an item has no group, a group id is out of range, or a group has no item.
    """

    def __init__(self, indptr: Tensor, indices: Tensor, weights: Tensor, num_groups: int):
        super().__init__()
        indptr, indices, weights = indptr.cpu(), indices.cpu(), weights.cpu()  # built on CPU; buffers follow .to()
        counts = indptr.diff()
        if bool((counts == 0).any()):
            raise ValueError(f"{int((counts == 0).sum())} item(s) have no group (first: item "
                             f"{int((counts == 0).nonzero()[0])}); every item needs one for group reweighting")
        if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < num_groups):
            raise ValueError(f"item group ids must lie in [0, {num_groups})")
        size = torch.bincount(indices, minlength=num_groups).double()
        if bool((size == 0).any()):
            raise ValueError(f"item group(s) {(size == 0).nonzero().flatten().tolist()} have no items; "
                             "drop or merge them (num_item_groups must count non-empty groups)")
        num_items, width = len(counts), int(counts.max())
        row = torch.repeat_interleave(torch.arange(num_items), counts)
        pos = torch.arange(len(indices)) - torch.repeat_interleave(indptr[:-1], counts)
        group = torch.zeros(num_items, width, dtype=torch.long)
        weight = torch.zeros(num_items, width, dtype=torch.float32)
        group[row, pos], weight[row, pos] = indices.long(), weights.float()
        self.num_groups = num_groups
        self.register_buffer("group", group, persistent=False)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("size", size, persistent=False)

    def rows(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """(group ids, Â weights), each [..., P], of ``items`` [...]; id -1 (an empty slot) gets weight 0."""
        safe = items.clamp(min=0)
        return self.group[safe], self.weight[safe] * (items >= 0).unsqueeze(-1)

    def mix(self, items: Tensor, per_group: Tensor) -> Tensor:
        """Â[items] @ per_group: [...] from items [...] and per_group [G]."""
        group, weight = self.rows(items)
        return (weight.to(per_group.dtype) * per_group[group]).sum(-1)

    def scatter(self, items: Tensor, values: Tensor | None = None, dtype=torch.float64) -> Tensor:
        """[G] with entry g = Σ_n Â[items_n, g] · values_n (values default 1)."""
        group, weight = self.rows(items)
        contrib = weight.to(dtype) * (1 if values is None else values.to(dtype).unsqueeze(-1))
        return torch.zeros(self.num_groups, dtype=dtype, device=items.device).index_add_(
            0, group.flatten(), contrib.flatten())


class Forward:
    """One training forward: the towers ``user [B, d]`` and ``items [I, d]``, and from them, computed on first
    use, ``loss [B]`` (ℓ_b) and ``pos_score [B]``. Weights that read only the towers (FairDual's) thereby skip
    the scoring in `fused_step` training, where the loss itself is computed inside `ops.bpr_adam_step`."""

    def __init__(self, user: Tensor, items: Tensor, losses: Callable[[], tuple[Tensor, Tensor]]):
        self.user, self.items, self._losses = user, items, losses

    @cached_property
    def _values(self) -> tuple[Tensor, Tensor]:
        return self._losses()

    @property
    def loss(self) -> Tensor:
        return self._values[0]

    @property
    def pos_score(self) -> Tensor:
        return self._values[1]


class WeightedLoss(RecModule):
    r"""Base of the reweighting/regularising methods: :math:`L = \frac1B \sum_b w_b \ell_b + R` (spec §2.4).

    Subclasses override `sample_weights` (detached w_b; default 1 = UNI) and/or `regularizer` (R), or
    `objective` for losses that are not a weighted mean (group DRO).

    Args:
        loss: ``"bpr"`` (ℓ_b = mean over the row's negatives of softplus(ŷ⁻ − ŷ⁺)) or ``"ce"`` (full-softmax
            cross-entropy over all items, for GRU4Rec/SASRec).
        bpr_on_sigmoid: FairDiverse parity (spec §9 #23): BPR on σ(ŷ) instead of raw scores.
        reg_weight: weight of the backbone's embedding L2 term.
        **kwargs: `RecModule` arguments.
    """

    def __init__(self, *args, loss: str = "bpr", bpr_on_sigmoid: bool = False, reg_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        check_number("reg_weight", reg_weight, 0)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        for stage in STAGES:  # FairDual's tables also report HR@K = hits / min(|T_u|, K)
            self.metrics[stage]["ranking"] = RankingMetrics(self.ks, metrics=("recall", "ndcg", "hit", "mrr",
                                                                              "precision", "hr"))
        self.groups: ItemGroupTable | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.groups is None and dm is not None and self.hparams.num_item_groups > 0:
            self.set_item_groups(*dm.item_group_csr)

    def set_item_groups(self, indptr: Tensor, indices: Tensor, weights: Tensor) -> None:
        """Install Â (CSR) on the module's device; called from `setup` with the data module's groups."""
        self.groups = ItemGroupTable(indptr, indices, weights, self.hparams.num_item_groups).to(self.device)

    def forward_losses(self, batch: dict[str, Tensor]) -> Forward:
        """The tower outputs and (on first use) the per-sample losses ℓ [B] from them (spec §2.2)."""
        user, items = self.encode(batch)
        return Forward(user, items, lambda: self.sample_losses(batch, user, items))

    def sample_losses(self, batch: dict[str, Tensor], user: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """ℓ [B] and the positive's score ŷ⁺ [B] from the towers ``user [B, d]``, ``items [I, d]``."""
        pos = batch["pos"]
        if self.hparams.loss == "ce":
            logits = user @ items.T                                              # [B, I]
            return F.cross_entropy(logits, pos, reduction="none"), logits.gather(1, pos[:, None]).squeeze(1)
        scores = ops.score_candidates(user, items, torch.cat([pos[:, None], batch["neg"].view(len(pos), -1)], 1),
                                      validate=False)                            # [B, 1 + M]
        if self.hparams.bpr_on_sigmoid:
            scores = torch.sigmoid(scores)
        return F.softplus(scores[:, 1:] - scores[:, :1]).mean(1), scores[:, 0]

    def sample_weights(self, batch: dict[str, Tensor], out: Forward) -> Tensor | None:
        """Detached weights w [B]; None means all ones. Stateful methods update their state here."""
        return None

    def regularizer(self, batch: dict[str, Tensor], out: Forward) -> Tensor | float:
        """Extra loss term R (default 0)."""
        return 0.0

    def objective(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        weights = self.sample_weights(batch, out)
        loss = out.loss.mean() if weights is None else (weights.detach() * out.loss).mean()
        return loss + self.regularizer(batch, out)

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        loss = self.objective(batch, self.forward_losses(batch))
        if self.hparams.reg_weight:
            loss = loss + self.hparams.reg_weight * self.backbone.regularization(batch["user"], batch["pos"],
                                                                                 batch["neg"])
        return loss

    def fused_training_step(self, parts: list[dict[str, Tensor]]) -> Tensor:
        """`fused_step` training, after checking that the method trains the weighted BPR mean on MF:
        `fused_weighted_steps`."""
        name, cls = type(self).__name__, type(self)
        changed = [f"{name} changes the weighted-mean objective ({fn})" for fn in
                   ("objective", "regularizer", "training_loss", "forward_losses", "sample_losses")
                   if getattr(cls, fn) is not getattr(WeightedLoss, fn)]
        if self.hparams.loss != "bpr":
            changed.append(f"loss={self.hparams.loss!r} is not BPR")
        return self.fused_weighted_steps(self.fused_optimizer(changed), parts)

    def fused_weighted_steps(self, adam: FusedAdam, parts: list[dict[str, Tensor]]) -> Tensor:
        """The batches' fused steps: per batch `sample_weights` without autograd, then one `fused_bpr_update` with
        w; returns the last batch's loss."""
        for part in parts:
            with torch.no_grad():  # ℓ is computed here only if sample_weights reads it
                weights = self.sample_weights(part, self.forward_losses(part))
            losses = self.fused_bpr_update(adam, part["user"], part["pos"], part["neg"].view(len(part["pos"]), -1),
                                           weights, reg_weight=self.hparams.reg_weight,
                                           sigmoid_scores=self.hparams.bpr_on_sigmoid)
        return losses[-1]

    def group_losses(self, items: Tensor, loss: Tensor, eps: float = 0.1) -> tuple[Tensor, Tensor]:
        """Batch group losses summed over all ranks: ``L_g = Σ_b Â[i_b,g] ℓ_b / (n_g + eps)`` (FairDiverse's
        +0.1) and ``n_g = Σ_b Â[i_b,g]`` (both [G] float64, detached)."""
        sums, counts = self.all_reduce_sum(self.groups.scatter(items, loss.detach()), self.groups.scatter(items))
        return sums / (counts + eps), counts


class UNI(WeightedLoss):
    """The unweighted backbone loss (w_b = 1): FairDual's "UNI" row, for BPR and CE alike."""
