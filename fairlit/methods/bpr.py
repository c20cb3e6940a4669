"""BPR (Rendle et al., UAI 2009) on any dot-product backbone: the plain baseline of every paper."""
import torch
from torch import Tensor

from fairlit import ops
from fairlit.methods.base import RecModule


class BPR(RecModule):
    r"""Bayesian personalised ranking.

    :math:`\mathcal{L} = \frac{1}{B}\sum_b \frac{1}{M}\sum_m \mathrm{softplus}(s_{b,m}^- - s_b^+)
    + \lambda\,\mathrm{reg}` with the backbone's ego-embedding L2 term ``reg`` (RecBole's EmbLoss form).

    Args:
        reg_weight: λ (LightGCN: 1e-4 in RecBole's defaults; 0 for BPR-MF).
        **kwargs: `RecModule` arguments.
    """

    def __init__(self, *args, reg_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        users, pos, neg = batch["user"], batch["pos"], batch["neg"]
        scores = self.score(batch, torch.cat([pos.unsqueeze(1), neg], 1))          # [B, 1 + M]
        zeros = torch.zeros_like(users)
        loss_sum, _ = ops.group_bpr_loss(scores[:, 0], scores[:, 1:], zeros, 1, validate=False)
        loss = loss_sum[0] / len(users)
        if self.hparams.reg_weight:
            loss = loss + self.hparams.reg_weight * self.backbone.regularization(users, pos, neg)
        return loss
