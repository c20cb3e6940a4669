"""DPR (Zhu, Wang & Caverlee, SIGIR 2020), FairNeg's adversarial baseline: BPR plus a score-based adversary
that tries to recover a positive item's group from its predicted score (the REO variant, fairneg.md §5)."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairlit import ops
from fairlit.methods.base import check_number
from fairlit.methods.bpr import BPR


class DPR(BPR):
    r"""BPR with a score-based adversary (manual optimisation, two Adam optimisers).

    Adversary: an MLP on the scalar score :math:`\hat y_{ui}` of each positive pair (hidden ``adv_hidden``,
    ReLU) with G sigmoid outputs, loss
    :math:`\mathcal{L}_{adv} = \sum_g \frac{1}{N_g} \sum_{i: g(i) = g} \lVert\sigma(f(\hat y_{ui})) - e_{g}\rVert^2`
    (``w_i = 1/N_{g(i)}``, N_g the batch's positives of group g). Recommender:
    :math:`\mathcal{L}_{BPR} + \lambda\,\mathrm{reg} + \tfrac{\mathrm{reg}_s}{2}\,\overline{(\mu_u^2 + \sigma_u^2
    - 2\log\sigma_u - 1)} - \alpha_{adv}\mathcal{L}_{adv}` with μ_u, σ_u the mean and std of user u's scores over
    all items (pulls each user's score distribution to N(0, 1)), the bar a mean over the batch's users.

    The first ``pretrain_epochs`` epochs are plain BPR (DPR's pre-training checkpoint; the score-distribution
    term starts with the adversary: from the small initial scores its −2 log σ_u would dominate and wreck the
    ranking); then each recommender step is preceded by ``adv_steps`` adversary steps on the batch's detached scores (DPR trains the
    adversary a full pass per recommender batch, which the spec replaces by k steps).

    Scale: DPR's code sums its losses over the batch; here BPR is a mean over pairs, so its weights are
    given relative to that mean. The defaults convert DPR's α_adv = 1000 and reg_s = 30 at its batch of
    1024 with 5 negatives: α_adv = 1000 / (1024 · 5) ≈ 0.2 and reg_s = 30 / 5 = 6.

    Args:
        alpha_adv: weight of the adversary's loss subtracted from the recommender's.
        reg_s: weight of the score-distribution term.
        adv_lr: the adversary's Adam learning rate (DPR: 0.005).
        adv_steps: adversary steps per recommender step (k).
        adv_hidden: hidden widths of the adversary MLP (DPR: four layers of 50).
        pretrain_epochs: BPR-only epochs before the adversarial phase.
        **kwargs: `BPR` arguments.
    """

    def __init__(self, *args, alpha_adv: float = 0.2, reg_s: float = 6.0, adv_lr: float = 0.005, adv_steps: int = 1,
                 adv_hidden: list[int] = [50, 50, 50, 50], pretrain_epochs: int = 20, **kwargs):  # noqa: B006
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        groups = self.hparams.num_item_groups
        if groups < 2:
            raise ValueError(f"DPR needs at least 2 item groups, got num_item_groups={groups}; set data.item_group")
        for name, value in (("alpha_adv", alpha_adv), ("reg_s", reg_s), ("pretrain_epochs", pretrain_epochs)):
            check_number(name, value, 0)
        check_number("adv_lr", adv_lr, 0, low_open=True)
        if adv_steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {adv_steps}")
        if not getattr(self.backbone, "dot_product", True):
            raise ValueError("DPR's score-distribution term needs a dot-product backbone (MF, LightGCN)")
        widths = [1, *adv_hidden]
        layers = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.adversary = nn.Sequential(*layers, nn.Linear(widths[-1], groups))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.register_item_groups("DPR")

    def configure_optimizers(self):
        return (self.adam(self.backbone.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay),
                self.adam(self.adversary.parameters(), lr=self.hparams.adv_lr))

    def adversary_loss(self, scores: Tensor, groups: Tensor) -> Tensor:
        """Σ_g mean over the batch's positives of group g of ‖σ(f(ŷ)) − onehot(g)‖²; scores [B], groups [B]."""
        num_groups = self.hparams.num_item_groups
        pred = torch.sigmoid(self.adversary(scores.unsqueeze(1)))                            # [B, G]
        err = (pred - F.one_hot(groups, num_groups).to(pred.dtype)).square().sum(1)         # [B]
        mean, _ = ops.group_mean(err, groups, num_groups, validate=False)                    # 0 for absent groups
        return mean.sum()

    def score_distribution_penalty(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean over the batch's users of (μ_u² + σ_u² − 2 log σ_u − 1) / 2 over all items' scores."""
        user, items = self.encode(batch)
        scores = user @ items.T                                                              # [B, I]
        mu, sigma = scores.mean(1), scores.std(1, correction=0).clamp(min=1e-8)
        return 0.5 * (mu.square() + sigma.square() - 2 * sigma.log() - 1).mean()

    def training_step(self, batch: dict[str, Tensor] | list[dict[str, Tensor]], batch_idx: int) -> Tensor:
        rec_opt, adv_opt = self.optimizers()
        adversarial = self.current_epoch >= self.hparams.pretrain_epochs
        for part in self.batches(batch):
            pos = part["pos"]
            groups = self.item_group[pos]
            if adversarial:
                with torch.no_grad():
                    fixed = self.score(part, pos.unsqueeze(1)).squeeze(1)
                for _ in range(self.hparams.adv_steps):
                    self.optimizer_update(adv_opt, self.adversary_loss(fixed, groups))
            loss = self.training_loss(part)
            if adversarial:
                loss = loss + self.hparams.reg_s * self.score_distribution_penalty(part)
                scores = self.score(part, pos.unsqueeze(1)).squeeze(1)
                loss = loss - self.hparams.alpha_adv * self.adversary_loss(scores, groups)
            self.optimizer_update(rec_opt, loss)
            self.log_training_loss(loss, len(pos))
        return loss
