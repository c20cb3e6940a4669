"""BPR (Rendle et al., UAI 2009) on any dot-product backbone: the plain baseline of every paper."""
import torch
from torch import Tensor

from fairlit import ops
from fairlit.methods.base import FusedAdam, RecModule
from fairlit.models import MF


class BPR(RecModule):
    r"""Bayesian personalised ranking.

    :math:`\mathcal{L} = \frac{1}{B}\sum_b \frac{1}{M}\sum_m \mathrm{softplus}(s_{b,m}^- - s_b^+)
    + \lambda\,\mathrm{reg}` with the backbone's ego-embedding L2 term ``reg`` (RecBole's EmbLoss form).

    Subclasses that only change the negatives (samplers: FairNeg, DNS, ...) override `negatives`.

    Args:
        reg_weight: λ (LightGCN: 1e-4 in RecBole's defaults; 0 for BPR-MF).
        fused_step: train each batch with `fairlit.ops.bpr_adam_step` (loss, gradient and Adam update in one
            call; consecutive batches of one Lightning step in one call when their negatives do not depend on
            the current model) instead of autograd + ``optimizer.step()``. The same loss and the same Adam
            state, equal up to float rounding; several times faster for small batches on CPU. Needs the MF
            backbone, one process, full precision and no backward/optimizer hooks (checked at the first step).
        **kwargs: `RecModule` arguments.
    """

    def __init__(self, *args, reg_weight: float = 0.0, fused_step: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        self._fused_for = 0

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
        zeros = torch.zeros_like(users)
        loss_sum, _ = ops.group_bpr_loss(scores[:, 0], scores[:, 1:], zeros, 1, validate=False)
        loss = loss_sum[0] / len(users)
        if self.hparams.reg_weight:
            loss = loss + self.hparams.reg_weight * self.backbone.regularization(users, pos, neg)
        return loss

    def training_step(self, batch: dict[str, Tensor] | list[dict[str, Tensor]], batch_idx: int) -> Tensor:
        if not self.hparams.fused_step:
            return super().training_step(batch, batch_idx)
        optimizer = self.optimizers()
        adam = self._fused_adam(optimizer.optimizer)
        parts = self.batches(batch)
        runs = [[part] for part in parts]
        if not self.negatives_follow_model():  # consecutive batches of one size share one call
            runs = [[parts[0]]]
            for part in parts[1:]:
                if part["user"].shape == runs[-1][0]["user"].shape:
                    runs[-1].append(part)
                else:
                    runs.append([part])
        for run in runs:
            negs = torch.stack([self.negatives(part) for part in run])                # [S, B, M]
            losses = self._fused_update(adam, torch.stack([p["user"] for p in run]),
                                        torch.stack([p["pos"] for p in run]), negs)
            for part, loss in zip(run, losses):
                self.log_training_loss(loss, len(part["user"]))
                optimizer._on_before_step()   # Lightning's progress tracking: global_step counts each batch
                optimizer._on_after_step()
        return loss

    def _fused_update(self, adam: FusedAdam, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """S batches (users/pos [S, B], neg [S, B, M]) through `ops.bpr_adam_step`; returns their losses [S]."""
        tables = (self.backbone.user_embedding.weight, self.backbone.item_embedding.weight)
        group = adam.param_groups[0]
        for p in tables:  # Adam's own state layout (fused: float32 step on the parameter's device)
            if "step" not in adam.state[p]:
                adam.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                                     exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                     exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        su, si = adam.state[tables[0]], adam.state[tables[1]]
        beta1, beta2 = group["betas"]
        return ops.bpr_adam_step(tables[0], tables[1], su["exp_avg"], su["exp_avg_sq"], si["exp_avg"],
                                 si["exp_avg_sq"], su["step"], si["step"], users, pos, neg,
                                 reg_weight=self.hparams.reg_weight, lr=group["lr"], beta1=beta1, beta2=beta2,
                                 eps=group["eps"], weight_decay=group["weight_decay"], validate=False)

    def _fused_adam(self, optimizer) -> FusedAdam:
        """The optimizer, after checking (once per trainer) that the fused step computes what autograd would."""
        if self._fused_for == id(self.trainer):
            return optimizer
        name = type(self).__name__
        problems = []
        if type(self).training_loss is not BPR.training_loss:
            problems.append(f"{name} changes BPR's loss (training_loss)")
        backbone = self.backbone
        if not isinstance(backbone, MF) or type(backbone).encode is not MF.encode:
            problems.append(f"the backbone is {type(backbone).__name__}, not MF")
        if not self._direct_steps():
            problems.append("it needs one process, no gradient scaler and no backward/optimizer hooks")
        if str(self.trainer.precision) not in ("32-true", "64-true", "32", "64"):
            problems.append(f"precision {self.trainer.precision} is not full precision")
        tables = {id(backbone.user_embedding.weight), id(backbone.item_embedding.weight)} if isinstance(
            backbone, MF) else set()
        groups = getattr(optimizer, "param_groups", [])
        if (type(optimizer) is not FusedAdam or len(groups) != 1 or {id(p) for p in groups[0]["params"]} != tables
                or not isinstance(groups[0]["lr"], float)):
            problems.append("the optimizer must be configure_optimizers' FusedAdam over the two MF tables")
        if problems:
            raise ValueError(f"fused_step=True cannot train {name}: " + "; ".join(problems)
                             + ". Set model.fused_step=false.")
        self._fused_for = id(self.trainer)
        return optimizer
