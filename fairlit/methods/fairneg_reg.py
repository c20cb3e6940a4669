"""Reg, FairNeg's regularisation baseline (Kamishima & Akaho 2017, as in FairNeg's code): BPR plus the
squared gap between the two item groups' mean positive scores."""
from torch import Tensor

from fairlit import ops
from fairlit.methods.base import check_number
from fairlit.methods.bpr import BPR


class MeanScoreReg(BPR):
    r"""BPR + :math:`\lambda_{reg}\big(\overline{\hat y}_{z_0} - \overline{\hat y}_{z_1}\big)^2`, the means
    taken over the batch's positive pairs of each group (raw scores); the term is 0 when the batch lacks
    a group. Binary item groups only.

    Args:
        reg_lambda: λ_reg (0.3 in FairNeg's code).
        **kwargs: `BPR` arguments.

    Raises:
        ValueError: the data does not have exactly 2 item groups.
    """

    def __init__(self, *args, reg_lambda: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        if self.hparams.num_item_groups != 2:
            raise ValueError(f"MeanScoreReg is defined for binary item groups only; the data has "
                             f"{self.hparams.num_item_groups} (use ML1M-2, not ML1M-4)")
        check_number("reg_lambda", reg_lambda, 0)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.register_item_groups("MeanScoreReg")

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        loss = super().training_loss(batch)
        pos = batch["pos"]
        scores = self.score(batch, pos.unsqueeze(1)).squeeze(1)                          # [B]
        mean, count = ops.group_mean(scores, self.item_group[pos], 2, validate=False)   # [2], [2]
        gap = (mean[0] - mean[1]) * (count > 0).all()
        return loss + self.hparams.reg_lambda * gap.square()
