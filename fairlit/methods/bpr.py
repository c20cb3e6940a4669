"""BPR (Rendle et al., UAI 2009) on any dot-product backbone: the plain baseline of every paper."""
import torch
from torch import Tensor

from fairlit import ops
from fairlit.methods.base import RecModule, check_number


class BPR(RecModule):
    r"""Bayesian personalised ranking.

    :math:`\mathcal{L} = \frac{1}{B}\sum_b \frac{1}{M}\sum_m \mathrm{softplus}(s_{b,m}^- - s_b^+)
    + \lambda\,\mathrm{reg}` with the backbone's ego-embedding L2 term ``reg`` (RecBole's EmbLoss form).

    Subclasses that only change the negatives (samplers: FairNeg, DNS, ...) override `negatives`; with
    ``fused_step=True`` consecutive batches of one Lightning step share one `fairlit.ops.bpr_adam_step` call
    when their negatives do not read the current model (`negatives_follow_model`).

    Args:
        reg_weight: λ (LightGCN: 1e-4 in RecBole's defaults; 0 for BPR-MF).
        bpr_on_sigmoid: FairDiverse parity (its BPR model scores σ(ŷ), so its loss is softplus(σ(ŷ⁻) − σ(ŷ⁺))):
            BPR on σ(ŷ) instead of raw scores.
        **kwargs: `RecModule` arguments.
    """

    def __init__(self, *args, reg_weight: float = 0.0, bpr_on_sigmoid: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        check_number("reg_weight", reg_weight, 0)

    def negatives(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's negatives [B, M] (default: the data module's draw)."""
        return batch["neg"]

    def negatives_follow_model(self) -> bool:
        """Whether `negatives` reads the current model (then every batch is drawn after the previous update)."""
        return False

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        users, pos = batch["user"], batch["pos"]
        neg = self.negatives(batch)
        scores = self.score(batch, torch.cat([pos.unsqueeze(1), neg], 1))          # [B, 1 + M]
        if self.hparams.bpr_on_sigmoid:
            scores = torch.sigmoid(scores)
        zeros = torch.zeros_like(users)
        loss_sum, _ = ops.group_bpr_loss(scores[:, 0], scores[:, 1:], zeros, 1, validate=False)
        loss = loss_sum[0] / len(users)
        if self.hparams.reg_weight:
            loss = loss + self.hparams.reg_weight * self.backbone.regularization(users, pos, neg)
        return loss

    def fused_training_step(self, parts: list[dict[str, Tensor]]) -> Tensor:
        """`fused_step` training: one `fused_bpr_update` per run of equal-size batches (per batch when the
        negatives read the current model)."""
        loss_changed = type(self).training_loss is not BPR.training_loss
        adam = self.fused_optimizer([f"{type(self).__name__} changes BPR's loss (training_loss)"] if loss_changed
                                    else [])
        share = not self.negatives_follow_model()
        runs = []
        for part in parts:
            if share and runs and part["user"].shape == runs[-1][0]["user"].shape:
                runs[-1].append(part)
            else:
                runs.append([part])
        for run in runs:
            # One negatives call for the run's S * B rows (a row's negatives never depend on its batch here).
            joined = run[0] if len(run) == 1 else {key: torch.cat([p[key] for p in run]) for key in run[0]}
            shape = (len(run), len(run[0]["user"]))
            losses = self.fused_bpr_update(adam, joined["user"].view(shape), joined["pos"].view(shape),
                                           self.negatives(joined).view(*shape, -1),
                                           reg_weight=self.hparams.reg_weight,
                                           sigmoid_scores=self.hparams.bpr_on_sigmoid)
        return losses[-1]
