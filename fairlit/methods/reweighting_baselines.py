"""FairDual's baselines that reweight or regularise the same loss (spec §5): DRO, S-DRO, Prop, IFairLRS,
Maxmin, FOCF and Reg (here `GroupVarReg`), all on `WeightedLoss`.

Notation (spec §5): ℓ_b per-sample loss, Â[i_b] the target's group row, ``L_g = Σ_b Â[i_b,g] ℓ_b / (n_g + 0.1)``
the batch group loss and ``n_g = Σ_b Â[i_b,g]`` (both summed over all ranks, so every rank derives the same
group weights). Group weights q [G] become sample weights ``w_b = Â[i_b]·q``. Where FairDiverse normalises
weights to sum 1 we normalise to mean 1 over the global batch instead, so the loss keeps UNI's scale.
Regularisers (FOCF, Reg) use the local batch's scores, as a per-rank batch statistic.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairlit.methods.base import check_number
from fairlit.methods.weighted import Forward, WeightedLoss


class _GroupReweighting(WeightedLoss):
    """w_b = Â[i_b]·q with q [G] from `group_weights(L, n)`; ``normalize`` rescales w to global mean 1."""

    normalize = True

    def group_weights(self, losses: Tensor, counts: Tensor, out: Forward) -> Tensor:
        raise NotImplementedError

    def sample_weights(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        losses, counts = self.group_losses(batch["pos"], out.loss)
        q = self.group_weights(losses, counts, out)
        weights = self.groups.mix(batch["pos"], q)
        if self.normalize:  # Σ_b Â[i_b]·q over the global batch is n·q: no extra all-reduce
            weights = weights * counts.sum() / (counts * q).sum().clamp(min=1e-12)
        return weights.to(out.loss.dtype)


def _present(values: Tensor, counts: Tensor, fill: float) -> Tensor:
    """values with groups absent from the batch (n_g = 0) set to ``fill``."""
    return torch.where(counts > 0, values, torch.full_like(values, fill))


class DRO(WeightedLoss):
    r"""Distributionally robust optimisation (Hashimoto et al., ICML 2018).

    ``mode="worst_group"`` (default): only the worst present group's loss, :math:`\max_g L_g` — written as
    sample weights :math:`w_b = B\,Â[i_b,g^*] / (n_{g^*} + 0.1)`. ``mode="chi2"``: χ²-DRO,
    :math:`C\sqrt{\mathrm{mean}_b\,\mathrm{relu}(\ell_b − η)^2} + η` with a learnable η and
    :math:`C = \sqrt{2ρ + 1}`.

    Args:
        mode: ``"worst_group"`` or ``"chi2"``.
        chi2_radius: ρ of the χ² ball.
    """

    def __init__(self, *args, mode: str = "worst_group", chi2_radius: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        if mode not in ("worst_group", "chi2"):
            raise ValueError(f"mode must be 'worst_group' or 'chi2', got {mode!r}")
        check_number("chi2_radius", chi2_radius, 0)
        if mode == "chi2":
            self.dro_eta = nn.Parameter(torch.zeros(()))

    def objective(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        if self.hparams.mode == "chi2":
            scale = math.sqrt(2 * self.hparams.chi2_radius + 1)
            excess = torch.relu(out.loss - self.dro_eta).pow(2).mean()
            return scale * torch.sqrt(excess + 1e-12) + self.dro_eta
        losses, counts = self.group_losses(batch["pos"], out.loss)
        worst = _present(losses, counts, -math.inf).argmax()
        worst_count = counts.gather(0, worst.view(1)).squeeze(0)  # counts[worst] would read worst back (a sync)
        q = F.one_hot(worst, len(counts)).to(counts.dtype) * counts.sum() / (worst_count + 0.1)
        return (self.groups.mix(batch["pos"], q).to(out.loss.dtype) * out.loss).mean()


class SDRO(_GroupReweighting):
    r"""Streaming DRO over groups (Wen et al., 2022).

    ``mode="streaming"`` (paper): :math:`\hat L_g ← (1−β_s)\hat L_g + β_s L_g` for present groups, then
    :math:`q_g ∝ q_g \exp(η_s \hat L_g)`. ``mode="fairdiverse"`` (class ``SDRO``): :math:`q ←
    \mathrm{softmax}(q + η_s L)` from ones, reset every epoch.

    Args:
        eta: η_s.
        ema: β_s.
        mode: ``"streaming"`` or ``"fairdiverse"``.
    """

    def __init__(self, *args, eta: float = 1.0, ema: float = 0.1, mode: str = "streaming", **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        if mode not in ("streaming", "fairdiverse"):
            raise ValueError(f"mode must be 'streaming' or 'fairdiverse', got {mode!r}")
        check_number("eta (η_s)", eta, 0)
        check_number("ema (β_s)", ema, 0, 1)
        groups = self.hparams.num_item_groups
        self.register_buffer("q", torch.ones(groups, dtype=torch.float64) / max(groups, 1))
        self.register_buffer("loss_ema", torch.zeros(groups, dtype=torch.float64))

    def on_train_epoch_start(self) -> None:
        if self.hparams.mode == "fairdiverse":
            self.q.fill_(1.0)

    def group_weights(self, losses: Tensor, counts: Tensor, out: Forward) -> Tensor:
        eta = self.hparams.eta
        if self.hparams.mode == "fairdiverse":
            self.q.copy_(torch.softmax(self.q + eta * losses, 0))
            return self.q
        ema = self.hparams.ema
        self.loss_ema.copy_(torch.where(counts > 0, (1 - ema) * self.loss_ema + ema * losses, self.loss_ema))
        logits = self.q.log() + eta * self.loss_ema
        self.q.copy_(torch.softmax(logits, 0))
        return self.q


class Prop(_GroupReweighting):
    r"""Adaptive priority reweighing (Hu et al., 2023), "Prop".

    ``mode="group_loss"`` (FairDiverse ``APR``): :math:`q_g = \exp(η((1−β) + β L_g))`.
    ``mode="boundary"`` (paper): priority :math:`\exp(−η|p_b − ½|)` with :math:`p_b = e^{−\ell_b}` the
    model's probability of the positive, renormalised so each group keeps its total weight n_g.

    Args:
        eta: η.
        beta: β.
        mode: ``"group_loss"`` or ``"boundary"``.
    """

    def __init__(self, *args, eta: float = 0.1, beta: float = 0.5, mode: str = "group_loss", **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        if mode not in ("group_loss", "boundary"):
            raise ValueError(f"mode must be 'group_loss' or 'boundary', got {mode!r}")
        check_number("eta (η)", eta, 0)
        check_number("beta (β)", beta, 0, 1)

    def group_weights(self, losses: Tensor, counts: Tensor, out: Forward) -> Tensor:
        return torch.exp(self.hparams.eta * ((1 - self.hparams.beta) + self.hparams.beta * losses))

    def sample_weights(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        if self.hparams.mode == "group_loss":
            return super().sample_weights(batch, out)
        prio = torch.exp(-self.hparams.eta * (torch.exp(-out.loss.detach()) - 0.5).abs())
        pos = batch["pos"]
        totals, counts = self.all_reduce_sum(self.groups.scatter(pos, prio), self.groups.scatter(pos))
        return (prio * self.groups.mix(pos, counts / totals.clamp(min=1e-12))).to(out.loss.dtype)


class IFairLRS(WeightedLoss):
    r"""Inverse group popularity weights (Jiang et al., 2024; FairDiverse ``IPS``).

    Running per-epoch target counts per group give :math:`\mathrm{pop}_g = c_g/Σc`;
    :math:`bw_b = Â[i_b]·\mathrm{pop}`, normalised over the global batch, and :math:`w_b = 1/(bw_b + M)`.
    ``normalize="sum"`` is the code (bw/Σbw, ≈ 1/B, so w ≈ 1/M nearly uniform); ``"mean"`` (bw/mean bw)
    keeps the inverse-popularity contrast the method intends.

    Args:
        smoothing: M.
        normalize: ``"mean"`` or ``"sum"``.
    """

    def __init__(self, *args, smoothing: float = 0.1, normalize: str = "mean", **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        if normalize not in ("mean", "sum"):
            raise ValueError(f"normalize must be 'mean' or 'sum', got {normalize!r}")
        check_number("smoothing (M)", smoothing, 0)
        self.register_buffer("target_counts", torch.zeros(self.hparams.num_item_groups, dtype=torch.float64))

    def on_train_epoch_start(self) -> None:
        self.target_counts.zero_()

    def sample_weights(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        pos = batch["pos"]
        (counts,) = self.all_reduce_sum(self.groups.scatter(pos))
        self.target_counts += counts
        pop = self.target_counts / self.target_counts.sum()
        bw = self.groups.mix(pos, pop)
        total = (counts * pop).sum()  # Σ_b bw_b over the global batch
        scale = counts.sum() / total if self.hparams.normalize == "mean" else 1 / total
        return (1 / (bw * scale + self.hparams.smoothing)).to(out.loss.dtype)


class Maxmin(_GroupReweighting):
    r"""Min-max fairness by worst-group emphasis (Abernethy et al., 2022), in two modes (spec §5).

    * ``mode="reweight"`` (FairDiverse ``Minmax_SGD``): :math:`q_g = p`, except :math:`q_{g^*} = 1 − p` for
      :math:`g^* = \arg\max_g L_g` of the batch (weights not normalised).
    * ``mode="resample"`` (the paper's active sampling): every row of a training batch is replaced, with
      probability 1 − p, by a training row drawn uniformly among those whose target item belongs to the
      current worst group g*, and the loss is unweighted. g* is the argmax of the group losses L_g of the
      previous (resampled) batch, summed over all ranks, kept in the checkpointed buffer ``worst_group``
      (−1, no resampling, before the first step). Reading g* costs one host sync per step.

    Args:
        p: weight of the other groups (reweight) / probability of keeping a row (resample).
        mode: ``"reweight"`` or ``"resample"``.
        sample_seed: seed of the resampling stream (step t of rank r draws with ``sample_seed + t·W + r``).
    """

    normalize = False

    def __init__(self, *args, p: float = 0.02, mode: str = "reweight", sample_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        check_number("p", p, 0, 1)
        if mode not in ("reweight", "resample"):
            raise ValueError(f"mode must be 'reweight' or 'resample', got {mode!r}")
        self.register_buffer("worst_group", torch.tensor(-1))
        self._group_rows: tuple[Tensor, Tensor] | None = None

    def group_weights(self, losses: Tensor, counts: Tensor, out: Forward) -> Tensor:
        worst = _present(losses, counts, -math.inf).argmax()
        q = torch.full_like(losses, self.hparams.p)
        return q.index_fill(0, worst.view(1), 1 - self.hparams.p)

    def group_training_rows(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """CSR ``(indptr [G + 1], rows)``: the training rows whose item (``items`` [N]) belongs to each group."""
        group, weight = self.groups.rows(items.to(self.groups.group.device))
        member = torch.zeros(len(items), self.hparams.num_item_groups, dtype=torch.int32, device=group.device)
        member.scatter_add_(1, group, (weight > 0).to(torch.int32))             # padding slots add 0
        by_group = (member.T > 0).nonzero()                                      # (g, row), sorted by g
        counts = torch.bincount(by_group[:, 0], minlength=self.hparams.num_item_groups)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).cpu(), by_group[:, 1].cpu()

    def resample(self, batch: dict[str, Tensor], rows: dict[str, Tensor]) -> dict[str, Tensor]:
        """Replace each row of ``batch`` with probability 1 − p by a random training row of group g*.

        ``rows`` holds the training table the rows come from (``user``, ``pos``, ``neg`` and optionally
        ``history``, first dimension N, on the CPU).
        """
        worst = int(self.worst_group)
        if worst < 0:
            return batch
        indptr, members = self._group_rows
        lo, hi = int(indptr[worst]), int(indptr[worst + 1])
        world = self.trainer.world_size if self._trainer is not None else 1
        gen = torch.Generator().manual_seed(self.hparams.sample_seed + self.global_step * world + self.global_rank)
        size = len(batch["pos"])
        replace = torch.rand(size, generator=gen) >= self.hparams.p
        picked = members[lo + torch.randint(0, hi - lo, (size,), generator=gen)]
        out = {}
        for key, value in batch.items():
            if key in rows:
                mask = replace.view(-1, *([1] * (value.dim() - 1))).to(value.device)
                value = torch.where(mask, rows[key][picked].to(value.device), value)
            out[key] = value
        return out

    def on_train_start(self) -> None:
        if self.hparams.mode == "resample":
            data = self.trainer.train_dataloader.dataset
            self._group_rows = self.group_training_rows(data.items)

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        if self.hparams.mode == "resample":
            data = self.trainer.train_dataloader.dataset
            table = {"user": data.users, "pos": data.items, "neg": data.neg}
            if data.history is not None:
                table["history"] = data.history
            batch = self.resample(batch, table)
        return super().training_loss(batch)

    def sample_weights(self, batch: dict[str, Tensor], out: Forward) -> Tensor | None:
        if self.hparams.mode == "reweight":
            return super().sample_weights(batch, out)
        losses, counts = self.group_losses(batch["pos"], out.loss)               # summed over all ranks
        self.worst_group.copy_(_present(losses, counts, -math.inf).argmax())
        return None


class _ScoreRegularizer(WeightedLoss):
    """Adds ``weight · R(group means of the positives' scores)``; ``grouped=False`` is FairDiverse's
    ungrouped batch form."""

    def __init__(self, *args, weight: float = 1.0, grouped: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        check_number("weight", weight, 0)

    def group_score_means(self, batch: dict[str, Tensor], out: Forward) -> tuple[Tensor, Tensor]:
        """(mean positive score per group [G], present mask [G]) of the local batch; differentiable."""
        pos = batch["pos"]
        counts = self.groups.scatter(pos)
        sums = self.groups.scatter(pos, out.pos_score)
        return sums / counts.clamp(min=1e-12), counts > 0


class FOCF(_ScoreRegularizer):
    r"""Fairness-regularised CF (Yao & Huang, 2017), multi-group:
    :math:`R = Σ_g \mathrm{smoothL1}(|\bar y_g − \bar y|)` over present groups (``grouped=False``:
    :math:`\mathrm{mean}_b\,\mathrm{smoothL1}(ŷ_b − \bar y)`, FairDiverse). Default weight λ_f = 2."""

    def __init__(self, *args, weight: float = 2.0, **kwargs):
        super().__init__(*args, weight=weight, **kwargs)

    def regularizer(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        score = out.pos_score
        if not self.hparams.grouped:
            return self.hparams.weight * F.smooth_l1_loss(score - score.mean(), torch.zeros_like(score))
        means, present = self.group_score_means(batch, out)
        gap = (means - score.mean().double()) * present
        return self.hparams.weight * F.smooth_l1_loss(gap, torch.zeros_like(gap), reduction="sum").to(score.dtype)


class GroupVarReg(_ScoreRegularizer):
    r"""FairDual's "Reg" baseline (Kamishima & Akaho, 2017), multi-group:
    :math:`R = \mathrm{Var}_g(\bar y_g)` over present groups (for two groups (gap/2)²); ``grouped=False`` is
    FairDiverse's ``Reg``, :math:`\mathrm{var}_b(ŷ_b)`. Default weight λ_r = 5."""

    def __init__(self, *args, weight: float = 5.0, **kwargs):
        super().__init__(*args, weight=weight, **kwargs)

    def regularizer(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        score = out.pos_score
        if not self.hparams.grouped:
            return self.hparams.weight * score.var(unbiased=False)
        means, present = self.group_score_means(batch, out)
        num = present.sum().clamp(min=1)
        center = (means * present).sum() / num
        return self.hparams.weight * (((means - center) * present).pow(2).sum() / num).to(score.dtype)
