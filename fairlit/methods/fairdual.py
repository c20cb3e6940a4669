"""FairDual (Xu et al., ICLR 2025): item-group max-min fairness by momentum dual mirror descent.

Spec: ``specs/fairdual.md`` §2.3 (loop), §2.5 (projection), §2.6 (variants), §2.7 (Lightning/DDP), §9.
Every step runs on the module's device with no host sync; FairDiverse solves a cvxpy problem on the CPU.
"""
import torch
from torch import Tensor

from fairlit import ops
from fairlit.methods._fairdual_dual import DualConfig, dual_step
from fairlit.methods._fairdual_projection import METRICS
from fairlit.methods.base import FusedAdam, check_number
from fairlit.methods.weighted import Forward, WeightedLoss

SIGNALS = ("exposure", "utility", "paper_literal")
WEIGHT_MODES = ("target_group", "topk_exposure")
BUDGETS = ("share", "ones", "raw")
RESETS = ("beta", "epoch")
TARGETS = ("remaining", "constant")
# The FairDiverse code column of spec §2.6 (its λ, η, Q, K_f values go in the config, not here).
FAIRDIVERSE = dict(mu_init=1.0, reset="epoch", budget="ones", frozen=False, weight_mode="topk_exposure",
                   signal="exposure", metric="weighted", target="remaining")


class FairDual(WeightedLoss):
    r"""Sample weights :math:`s_b = 1 − Â[i_b]·μ` (Eq. 7) on the backbone loss, μ updated after every batch.

    Per batch (spec §2.3): every β batches copy the item tower into ``frozen_items`` and (``reset="beta"``)
    reset μ, g to μ0, 0; weight the loss with s (μ before this step's update, clamped at ``s_min``); draw
    Q items (shared by the batch and all ranks), take each user's top-K_f of them under the frozen tower,
    sum the group share d of those slots over all ranks, and apply `dual_step`. γ resets to ρ every epoch.
    With ``fused_step=True`` on one process, the batches of a Lightning step run as one
    `ops.fairdual_bpr_adam_step` call (the same steps, bit for bit, without ~25 Python-level calls per batch).

    Args:
        lam: λ ≥ 0, radius of the dual set M (trade-off).
        eta: η > 0, dual step size.
        alpha: momentum weight of the new gradient, in (0, 1].
        beta: frozen-tower refresh period in batches.
        num_samples: Q items sampled per batch (≤ number of items).
        topk: K_f, ranking size of the signal (≤ Q).
        preset: ``None`` or ``"fairdiverse"`` (FairDiverse's code column of §2.6: μ0 = 1, epoch reset, ones
            budget, live scorer, top-k exposure weights; it overrides those arguments).
        signal: ``"exposure"`` (slot counts), ``"utility"`` (σ(score)) or ``"paper_literal"`` (a user's σ-score
            sum attributed to its target's groups, §9 #5).
        weight_mode: ``"target_group"`` (Eq. 7) or ``"topk_exposure"`` (code: 1 − bw_b/Σbw,
            bw_b = mean_g(Σ_k Â[top_bk, g] μ_g)).
        budget: ``"share"`` (ρ = m/Σm, m̂ = Gρ with m_g = |I_g|), ``"ones"`` (ρ = m̂ = 1) or ``"raw"`` (ρ = m̂ = m).
        mu_init: μ0.
        reset: when μ and g reset to μ0 and 0: ``"beta"`` (at each refresh) or ``"epoch"``.
        metric: projection/mirror metric, ``"weighted"`` or ``"euclid"``.
        frozen: score the signal with the β-refreshed frozen tower (else the live one).
        s_min: lower clamp of s in ``target_group`` mode.
        target: ``"remaining"`` (γ budget) or ``"constant"`` (ρ).
        sample_seed: seed of the Q-sample stream (draw t uses ``sample_seed + t``).
        num_train_rows: N of the remaining budget (a batch of b rows uses b/N of an epoch's budget, §2.3);
            ``None``: the data module's training rows. FairDiverse's code uses the length of its training file,
            label-0 (rating < threshold) rows included, although it trains on the label-1 rows only.
        **kwargs: `WeightedLoss` / `RecModule` arguments.
    """

    def __init__(self, *args, lam: float = 2.0, eta: float = 1e-3, alpha: float = 0.2, beta: int = 640,
                 num_samples: int = 200, topk: int = 10, preset: str | None = None, signal: str = "exposure",
                 weight_mode: str = "target_group", budget: str = "share", mu_init: float = 0.0,
                 reset: str = "beta", metric: str = "weighted", frozen: bool = True, s_min: float = 0.0,
                 target: str = "remaining", sample_seed: int = 0, num_train_rows: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])
        if preset not in (None, "fairdiverse"):
            raise ValueError(f"preset must be None or 'fairdiverse', got {preset!r}")
        opts = dict(mu_init=mu_init, reset=reset, budget=budget, frozen=frozen, weight_mode=weight_mode,
                    signal=signal, metric=metric, target=target) | (FAIRDIVERSE if preset else {})
        self._check(lam, eta, alpha, beta, num_samples, topk, opts)
        self.opts = opts
        self.cfg = DualConfig(lam=lam, eta=eta, alpha=alpha, metric=opts["metric"], target=opts["target"])
        groups = self.hparams.num_item_groups
        # Checkpointed state (spec §2.7); float64 because it integrates thousands of small steps.
        self.register_buffer("mu", torch.full((groups,), float(opts["mu_init"]), dtype=torch.float64))
        self.register_buffer("gmom", torch.zeros(groups, dtype=torch.float64))
        self.register_buffer("gamma", torch.zeros(groups, dtype=torch.float64))
        self.register_buffer("batch_counter", torch.zeros((), dtype=torch.long))
        self.register_buffer("frozen_items", torch.empty(0))  # [I, d] after the first refresh
        self._t = 0  # host mirror of batch_counter: the β schedule and Q-sample seeds never read the device
        self._gen: torch.Generator | None = None
        self.num_train_rows = num_train_rows or 0

    def _check(self, lam, eta, alpha, beta, num_samples, topk, opts) -> None:
        for name, value, allowed in (("signal", opts["signal"], SIGNALS), ("weight_mode", opts["weight_mode"],
                                     WEIGHT_MODES), ("budget", opts["budget"], BUDGETS), ("reset", opts["reset"],
                                     RESETS), ("metric", opts["metric"], METRICS), ("target", opts["target"], TARGETS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.hparams.num_item_groups < 1:
            raise ValueError("FairDual needs item groups: set data.item_group (num_item_groups >= 1)")
        check_number("lam (λ)", lam, 0)
        check_number("eta (η)", eta, 0, low_open=True)
        check_number("alpha", alpha, 0, 1, low_open=True)
        check_number("mu_init (μ0)", opts["mu_init"])
        check_number("s_min", self.hparams.s_min, 0)
        if beta < 1:
            raise ValueError(f"beta (refresh period in batches) must be >= 1, got {beta}")
        if not 1 <= num_samples <= self.hparams.num_items:
            raise ValueError(f"num_samples (Q={num_samples}) must lie in [1, number of items = "
                             f"{self.hparams.num_items}]")
        if self.hparams.num_train_rows is not None and self.hparams.num_train_rows < 1:
            raise ValueError(f"num_train_rows (N) must be >= 1 or None, got {self.hparams.num_train_rows}")
        if not 1 <= topk <= num_samples:
            raise ValueError(f"topk (K_f={topk}) must lie in [1, num_samples Q = {num_samples}]")

    # ------------------------------------------------------------------------------------- data facts
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and self.hparams.num_train_rows is None:
            self.num_train_rows = len(dm.train_users)

    def set_item_groups(self, indptr: Tensor, indices: Tensor, weights: Tensor) -> None:
        super().set_item_groups(indptr, indices, weights)
        m = self.groups.size.to(self.mu.device)
        budget = self.opts["budget"]
        rho = m / m.sum() if budget == "share" else torch.ones_like(m) if budget == "ones" else m
        self.register_buffer("rho", rho, persistent=False)
        self.register_buffer("mhat", len(m) * rho if budget == "share" else rho.clone(), persistent=False)

    # ------------------------------------------------------------------------------------- state hooks
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The frozen tower's shape is only known after the first refresh: take the saved one first (this
        # hook also covers ddp_spawn's hand-back of the rank-0 weights, which skips on_load_checkpoint).
        key = prefix + "frozen_items"
        if key in state_dict:
            self.frozen_items = torch.empty_like(state_dict[key], device=self.mu.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_train_start(self) -> None:
        self._t = int(self.batch_counter)  # one sync per fit, after a resume restored the buffer

    def on_train_epoch_start(self) -> None:
        self.gamma.copy_(self.rho)  # Alg. 1 line 2
        if self.opts["reset"] == "epoch":
            self.mu.fill_(self.opts["mu_init"])
            self.gmom.zero_()

    # ------------------------------------------------------------------------------------- the step
    def _draw(self, num_items: int, device: torch.device, t: int) -> Tensor:
        """Q item ids without replacement for batch t; the same on every rank (seed = sample_seed + t)."""
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
        self._gen.manual_seed(self.hparams.sample_seed + t)
        return torch.randperm(num_items, generator=self._gen, device=device)[: self.hparams.num_samples]

    def _refresh(self, items: Tensor) -> None:
        """Every β batches (Alg. 1 lines 4-7): freeze the item tower [I, d]; ``reset="beta"`` resets μ, g."""
        self.frozen_items = items.detach().clone()
        if self.opts["reset"] == "beta":
            self.mu.fill_(self.opts["mu_init"])
            self.gmom.zero_()

    def sample_weights(self, batch: dict[str, Tensor], out: Forward) -> Tensor:
        if self._t % self.hparams.beta == 0:
            self._refresh(out.items)
        user = out.user.detach()
        items = self.frozen_items if self.opts["frozen"] else out.items.detach()
        sampled = self._draw(items.shape[0], user.device, self._t)              # [Q]
        # Each row's top-K_f of the Q items and D [G] = Σ_b Σ_k u_bk Â[top_bk] (per row too for the code's
        # weights) in one fused op; a non-finite score (a diverged model) has utility 0.
        topk_exposure = self.opts["weight_mode"] == "topk_exposure"
        top_values, _, consumed, per_row = ops.sampled_topk_group_stats(
            user, items, sampled, self.hparams.topk, self.groups.group, self.groups.weight, self.mu.numel(),
            "exposure" if self.opts["signal"] == "exposure" else "sigmoid", per_row=topk_exposure, validate=False)
        pos = batch["pos"]
        if self.opts["signal"] == "paper_literal":  # a row's σ-utility sum goes to its target's groups (§9 #5)
            util = torch.sigmoid(top_values.double()).masked_fill(~torch.isfinite(top_values), 0.0)
            consumed = self.groups.scatter(pos, util.sum(1))
        if not topk_exposure:
            weights = (1 - self.groups.mix(pos, self.mu)).clamp(min=self.hparams.s_min)
            stats = torch.cat([consumed, consumed.new_full((1,), len(pos))])
        else:
            bw = (per_row * self.mu).mean(1)                                     # [B]
            stats = torch.cat([consumed, consumed.new_full((1,), len(pos)), bw.sum().view(1)])
        (stats,) = self.all_reduce_sum(stats)
        groups = self.mu.numel()
        if topk_exposure:
            total = stats[groups + 1]
            # The code divides by Σbw unguarded; a zero sum (μ = 0 or no slot) would give NaN: use s = 1.
            weights = torch.where(total != 0, 1 - bw / torch.where(total != 0, total, 1.0), 1.0)
        self._update(stats[:groups], stats[groups])
        weights = weights.to(out.user.dtype)
        if self._logging_step(self._t):
            self._log_weights(weights, self.global_step)
        return weights

    def _update(self, consumed: Tensor, batch_rows: Tensor) -> None:
        """Dual step from the all-reduced D [G] and global batch size (every rank applies the same)."""
        batch_rows = batch_rows.clamp(min=1)
        share = consumed / (batch_rows * self.hparams.topk)                      # d: Σ_g d_g = 1 for exposure
        dual_step(self.mu, self.gmom, self.gamma, share, batch_rows / self._epoch_rows(), self.rho, self.mhat,
                  self.cfg)
        self._advance(1, self.global_step)

    def _epoch_rows(self) -> int:
        """N, the training rows of an epoch (the budget's denominator)."""
        if self.num_train_rows < 1:
            raise RuntimeError("FairDual needs the number of training rows N: fit with a RecDataModule")
        return self.num_train_rows

    def _advance(self, batches: int, step: int) -> None:
        """Count ``batches`` dual updates; on a logging step log the dual state at Lightning step ``step``
        (neg_mass = -λ when the projection was active)."""
        self.batch_counter += batches
        self._t += batches
        if self._logging_step(self._t):
            values = torch.stack([self.mu.min(), self.mu.max(), self.gamma.sum(), self.gmom.norm(),
                                  (self.mhat * self.mu.clamp(max=0)).sum()]).tolist()
            self.log_diagnostics(dict(zip(("dual/mu_min", "dual/mu_max", "dual/gamma_sum", "dual/gmom_norm",
                                           "dual/neg_mass"), values)), step)

    def _log_weights(self, weights: Tensor, step: int) -> None:
        values = torch.stack([weights.mean(), weights.min(),
                              (weights <= self.hparams.s_min).to(weights.dtype).mean()]).tolist()
        self.log_diagnostics(dict(zip(("dual/s_mean", "dual/s_min", "dual/s_clamped"), values)), step)

    # ------------------------------------------------------------------------------------- fused steps
    def fused_weighted_steps(self, adam: FusedAdam, parts: list[dict[str, Tensor]]) -> Tensor:
        """`fused_step` on one process: runs of batches as single `ops.fairdual_bpr_adam_step` calls (the same
        steps as the per-batch path, without ~25 Python-level calls per batch). A run ends before a batch that
        refreshes the frozen tower, after a batch whose weights and dual state are logged (so that the logged
        values are that batch's) and where the batch shape changes. Under DDP (the signal is all-reduced
        per batch) and with ``signal="paper_literal"`` the per-batch path runs."""
        if self.opts["signal"] == "paper_literal" or (torch.distributed.is_available()
                                                      and torch.distributed.is_initialized()):
            return super().fused_weighted_steps(adam, parts)
        every, beta = self.trainer.log_every_n_steps, self.hparams.beta
        runs: list[list[dict[str, Tensor]]] = []
        for s, part in enumerate(parts):
            t = self._t + s
            if not runs or t % beta == 0 or t % every == 0 or part["neg"].shape != runs[-1][0]["neg"].shape:
                runs.append([])
            runs[-1].append(part)
        return [self._fused_run(adam, run) for run in runs][-1][-1]

    def _fused_run(self, adam: FusedAdam, run: list[dict[str, Tensor]]) -> Tensor:
        """S batches of one shape as one op call; returns their losses [S]."""
        item_table = self.backbone.item_embedding.weight
        if self._t % self.hparams.beta == 0:
            self._refresh(item_table)
        rows = len(run[0]["pos"])
        users, pos = (torch.stack([part[key] for part in run]) for key in ("user", "pos"))
        neg = torch.stack([part["neg"].view(rows, -1) for part in run])
        sampled = torch.stack([self._draw(item_table.shape[0], users.device, self._t + s) for s in range(len(run))])
        state, adam_args = self.fused_adam_state(adam)
        cfg = self.cfg
        losses, weights = ops.fairdual_bpr_adam_step(
            *state, users, pos, neg, self.mu, self.gmom, self.gamma, sampled, self.groups.group, self.groups.weight,
            self.rho, self.mhat, topk=self.hparams.topk, batch_fraction=rows / self._epoch_rows(), lam=cfg.lam,
            eta=cfg.eta, alpha=cfg.alpha, signal_items=self.frozen_items if self.opts["frozen"] else None,
            utility="exposure" if self.opts["signal"] == "exposure" else "sigmoid",
            weight_mode=self.opts["weight_mode"], s_min=self.hparams.s_min, metric=cfg.metric, target=cfg.target,
            reg_weight=self.hparams.reg_weight, sigmoid_scores=self.hparams.bpr_on_sigmoid, **adam_args,
            validate=False)
        last = self.global_step + len(run) - 1  # the Lightning step of the run's last batch
        self.record_fused_steps(losses, rows)
        self._advance(len(run), last)
        if self._logging_step(self._t):
            self._log_weights(weights[-1], last)
        return losses

    def _logging_step(self, t: int) -> bool:
        # Statistics are computed and logged only on logging steps, straight to the loggers (`log_diagnostics`):
        # `self.log` costs ~1 ms per key, more than the dual step. Direct calls (tests, simulations) have no
        # trainer and log nothing.
        return self._trainer is not None and t % self.trainer.log_every_n_steps == 0
