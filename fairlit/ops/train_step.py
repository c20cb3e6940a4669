"""Fused training steps, in place: `bpr_adam_step`, BPR steps of a matrix-factorisation model with Adam, and
`fairdual_bpr_adam_step`, FairDual's whole training step (dual signal, weights, dual update, weighted BPR step).

Kernels: csrc/cpu/train_step.cpp, csrc/cuda/train_step.cu; `fairdual_bpr_adam_step` is one C++ loop over the
kernels of `sampled_topk_group_stats`, `dual_mirror_step` and `bpr_adam_step` on either device
(csrc/composite/train_step.cpp). A small-batch BPR-MF step on CPU is ~30 calls
from Python (embedding lookups, score and loss ops, their backward, zero_grad, Adam's bookkeeping), each
costing more interpreter and dispatcher time than its arithmetic; this op is one call per step, or per S
steps. The gradient is computed in the kernel; the update is torch's fused Adam (``aten::_fused_adam_``, what
``torch.optim.Adam(fused=True)`` runs), so Adam's moments and step counters are those of ``torch.optim.Adam``
and a training run can switch between this op and the autograd path at any step.
"""
import torch

from . import _validate as check
from . import reference
from ._library import has_op
from .projection import check_dual_state
from .ranking import UTILITIES, check_item_groups

WEIGHT_MODES = ("target_group", "topk_exposure")


def _batches(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """users/pos [S, B], neg [S, B, M], weight [S, B] from one batch ([B], [B] or [B, M]) or S of them."""
    check.index("users", users)
    check.index("pos", pos)
    check.index("neg", neg)
    check.ndim("users", users, (1, 2), "[B] or [S, B]")
    if users.dim() == 1:
        users, pos, neg = users.unsqueeze(0), pos.unsqueeze(0), neg.unsqueeze(0)
        weight = None if weight is None else weight.unsqueeze(0)
    if pos.shape != users.shape:
        raise ValueError(f"`pos` must have the shape of `users` {tuple(users.shape)}, got {tuple(pos.shape)}")
    if neg.dim() == users.dim():
        neg = neg.unsqueeze(-1)
    if neg.dim() != 3 or neg.shape[:2] != users.shape or neg.shape[2] < 1:
        raise ValueError(f"`neg` must be [B] / [B, M] (or [S, B] / [S, B, M]) with [S, B] = {tuple(users.shape)} "
                         f"and M >= 1, got {tuple(neg.shape)}")
    if users.shape[1] < 1:
        raise ValueError("a batch must hold at least one row (B >= 1)")
    if weight is not None and weight.shape != users.shape:
        raise ValueError(f"`weight` must have the shape of `users`, got {tuple(weight.shape)}")
    return users, pos, neg, weight


def _check_adam_numbers(reg_weight: float, lr: float, beta1: float, beta2: float, eps: float,
                        weight_decay: float) -> None:
    # Adam divides by sqrt(v̂) + eps, and v̂ is 0 for a row without gradient yet: eps = 0 gives 0 / 0 = NaN.
    inf = float("inf")
    check.numbers(("reg_weight", reg_weight, 0 <= reg_weight < inf, ">= 0 and finite"),
                  ("lr", lr, 0 <= lr < inf, ">= 0 and finite"),
                  ("beta1", beta1, 0 <= beta1 < 1, "in [0, 1)"), ("beta2", beta2, 0 <= beta2 < 1, "in [0, 1)"),
                  ("eps", eps, 0 < eps < inf, "> 0 and finite"),
                  ("weight_decay", weight_decay, 0 <= weight_decay < inf, ">= 0 and finite"))


def _check_state(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
                 users, pos, neg, weight) -> None:
    """Dtypes, shapes and devices of the tables and Adam's state, ids against the tables, finite weights."""
    check.floating("user_emb", user_emb)
    if user_emb.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"`user_emb` must be a 2-D float32 or float64 table, got {user_emb.dtype}")
    check.embeddings(user_emb, item_emb, "[m, d]", "[n, d]")
    for table_name, table, states in (("user_emb", user_emb, (("user_exp_avg", user_exp_avg),
                                                                ("user_exp_avg_sq", user_exp_avg_sq))),
                                      ("item_emb", item_emb, (("item_exp_avg", item_exp_avg),
                                                              ("item_exp_avg_sq", item_exp_avg_sq)))):
        for name, state in states:
            if state.shape != table.shape or state.dtype != table.dtype:
                raise ValueError(f"`{name}` must be shaped like `{table_name}` {tuple(table.shape)} with dtype "
                                 f"{table.dtype}, got {state.dtype} {tuple(state.shape)}")
    for name, step in (("user_step", user_step), ("item_step", item_step)):
        if step.dtype != torch.float32:  # as torch.optim.Adam(fused=True); its CUDA kernel reads float32 unchecked
            raise TypeError(f"`{name}` (Adam's step count) must be float32, got {step.dtype}")
        if step.numel() != 1:
            raise ValueError(f"`{name}` must hold one element (Adam's step count), got shape {tuple(step.shape)}")
    if weight is not None:
        check.floating("weight", weight)
        check.same_dtype(("user_emb", user_emb), ("weight", weight))
    named = [("user_emb", user_emb), ("item_emb", item_emb), ("user_exp_avg", user_exp_avg),
             ("user_exp_avg_sq", user_exp_avg_sq), ("item_exp_avg", item_exp_avg),
             ("item_exp_avg_sq", item_exp_avg_sq), ("user_step", user_step), ("item_step", item_step),
             ("users", users), ("pos", pos), ("neg", neg)] + ([("weight", weight)] if weight is not None else [])
    check.same_device(*named)
    check.id_range("users", users, user_emb.shape[0], "user id")
    check.id_range("pos", pos, item_emb.shape[0], "item id")
    check.id_range("neg", neg, item_emb.shape[0], "item id")
    if weight is not None:
        check.finite("weight", weight)


def bpr_adam_step(user_emb: torch.Tensor, item_emb: torch.Tensor, user_exp_avg: torch.Tensor,
                  user_exp_avg_sq: torch.Tensor, item_exp_avg: torch.Tensor, item_exp_avg_sq: torch.Tensor,
                  user_step: torch.Tensor, item_step: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                  neg: torch.Tensor, weight: torch.Tensor | None = None, *, reg_weight: float = 0.0,
                  sigmoid_scores: bool = False, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                  eps: float = 1e-8, weight_decay: float = 0.0, validate: bool = True) -> torch.Tensor:
    r"""S consecutive BPR steps of MF (:math:`\hat y_{ui} = \langle P_u, Q_i \rangle`), each followed by one Adam
    update of both tables; all tensors but the batches are updated in place.

    Batch s's loss, taken at the tables as they are before its update (BPR, Rendle et al. 2009, with
    per-row weights and RecBole's ``EmbLoss`` L2 term, as `fairlit.methods.BPR` trains):

    .. math::
        L_s = \frac1B \sum_b w_b \frac1M \sum_m \operatorname{softplus}(f(\hat y_{b,m}^-) - f(\hat y_b^+))
        + \frac{λ}{2B} \sum_b \Big(\lVert P_{u_b}\rVert^2 + \lVert Q_{i_b^+}\rVert^2
        + \sum_m \lVert Q_{i_{b,m}^-}\rVert^2\Big)

    with f the identity or the sigmoid (`sigmoid_scores`, FairDiverse's BPR on σ(ŷ)). Its gradient goes to
    ``torch.optim.Adam`` (``fused=True``) with ``lr``, ``betas = (beta1, beta2)``, ``eps`` and (L2, not
    decoupled) ``weight_decay``: each step adds 1 to both step counters and updates the moments. On CUDA the
    gradient terms of batch rows that share a user or an item are summed by ``index_add_``: deterministic under
    ``torch.use_deterministic_algorithms(True)``, otherwise the last bits may vary between runs.

    Args:
        user_emb: [m, d] P, float32 or float64, contiguous (e.g. ``nn.Embedding.weight``).
        item_emb: [n, d] Q, same dtype and device.
        user_exp_avg, user_exp_avg_sq: Adam's moments of P ([m, d], Adam's state ``exp_avg`` / ``exp_avg_sq``).
        item_exp_avg, item_exp_avg_sq: Adam's moments of Q ([n, d]).
        user_step, item_step: Adam's step counters (one-element float32 tensors on the tables' device, as
            ``torch.optim.Adam(fused=True)`` keeps them).
        users: [B] int64 (one batch) or [S, B] (S batches, applied in order).
        pos: positives, the shape of `users`.
        neg: negatives [B] / [B, M] (one batch) or [S, B] / [S, B, M].
        weight: per-row weights w, the shape of `users` and the tables' dtype; None means 1.
        reg_weight: λ ≥ 0.
        sigmoid_scores: train on σ(ŷ) instead of ŷ.
        lr, beta1, beta2, eps, weight_decay: Adam's hyper-parameters: lr >= 0, betas in [0, 1), eps > 0,
            weight_decay >= 0 (all finite).
        validate: check dtypes, shapes and devices here, ids against the tables and weights for NaN/inf (a host
            sync on CUDA). With False (the per-step call of a training loop) only the batch shapes and the
            hyper-parameters are checked in Python; the kernel still checks dtypes, shapes, devices and (CPU) ids,
            raising RuntimeError.

    Returns:
        [S] float64, each batch's loss :math:`L_s` (detached; [1] for one batch).
    """
    users, pos, neg, weight = _batches(users, pos, neg, weight)
    _check_adam_numbers(reg_weight, lr, beta1, beta2, eps, weight_decay)
    if validate or not has_op("bpr_adam_step", user_emb.device):
        _check_state(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step,
                     item_step, users, pos, neg, weight)
    args = (user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
            users, pos, neg, weight, float(reg_weight), bool(sigmoid_scores), float(lr), float(beta1), float(beta2),
            float(eps), float(weight_decay))
    with torch.no_grad():
        if has_op("bpr_adam_step", user_emb.device):
            return torch.ops.fairlit.bpr_adam_step(*args)
        return reference.bpr_adam_step(*args)


def fairdual_bpr_adam_step(user_emb: torch.Tensor, item_emb: torch.Tensor, user_exp_avg: torch.Tensor,
                           user_exp_avg_sq: torch.Tensor, item_exp_avg: torch.Tensor, item_exp_avg_sq: torch.Tensor,
                           user_step: torch.Tensor, item_step: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                           neg: torch.Tensor, mu: torch.Tensor, gmom: torch.Tensor, gamma: torch.Tensor,
                           sampled: torch.Tensor, group_ids: torch.Tensor, group_weights: torch.Tensor,
                           rho: torch.Tensor, mhat: torch.Tensor, *, topk: int, batch_fraction: float, lam: float,
                           eta: float, alpha: float, signal_items: torch.Tensor | None = None,
                           utility: str = "exposure", weight_mode: str = "target_group", s_min: float = 0.0,
                           metric: str = "weighted", target: str = "remaining", reg_weight: float = 0.0,
                           sigmoid_scores: bool = False, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                           eps: float = 1e-8, weight_decay: float = 0.0, validate: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""S consecutive FairDual training steps of BPR-MF (Xu et al., ICLR 2025, Alg. 1; spec fairdual §2.3), in
    place on the tables, their Adam state and the dual state μ, g, γ. Per batch s, in this order:

    1. dual signal (`sampled_topk_group_stats`): each row's top-``topk`` of the Q items ``sampled[s]`` scored by
       ``P[users_s] · E^T`` (E = `signal_items`, FairDual's frozen tower, or the item table Q as it is before this
       batch's update), D [G] = its group shares (exposure or σ utility);
    2. sample weights from μ before the update: :math:`w_b = \max(1 − \hat A[i^+_b]·μ, s_{min})` (Eq. 7,
       ``weight_mode="target_group"``) or FairDiverse's :math:`1 − bw_b / \sum_b bw_b` with
       :math:`bw_b = \mathrm{mean}_g(\text{row share}_{bg}\, μ_g)` (``"topk_exposure"``; 1 where the sum is 0);
    3. `dual_mirror_step` with d = D / (B·topk) and f = `batch_fraction` (Alg. 1 lines 12–14);
    4. `bpr_adam_step` with w (weighted BPR of Eq. 7 and one Adam update of both tables).

    This is what `fairlit.methods.FairDual` runs per batch with ``fused_step=True`` on one process (the same
    result: the same kernels in the same order; on CUDA bit for bit under ``torch.use_deterministic_algorithms``,
    as `bpr_adam_step` is deterministic there), as one call: from Python the step is ~25 small calls.

    Args:
        user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step:
            the MF tables and their Adam state, as for `bpr_adam_step`.
        users, pos: [S, B] int64 (or [B], one batch).
        neg: [S, B, M] / [S, B] (or [B, M] / [B]).
        mu, gmom, gamma: [G] dual state (float32 or float64), as for `dual_mirror_step`.
        sampled: [S, Q] int64 item ids of each batch's dual signal (or [Q], one batch); ``topk <= Q``.
        group_ids, group_weights: [I, P] padded Â rows, as for `sampled_topk_group_stats`.
        rho, mhat: [G] budget shares ρ >= 0 and weights m̂ > 0 (dtype of `mu`).
        topk: K_f >= 1.
        batch_fraction: f = B / N, each batch's share of an epoch's budget.
        lam, eta, alpha, metric, target: the dual step's constants, as for `dual_mirror_step`.
        signal_items: [I, d] table the signal scores against (the tables' dtype); None: the live item table.
        utility: ``"exposure"`` or ``"sigmoid"`` (slot utility of the signal).
        weight_mode: ``"target_group"`` or ``"topk_exposure"``.
        s_min: lower clamp of w in ``"target_group"`` mode.
        reg_weight, sigmoid_scores, lr, beta1, beta2, eps, weight_decay: as for `bpr_adam_step`.
        validate: the checks of the three ops with ``validate=True`` (ids, group ids, finite state; host syncs on
            CUDA). With False only shapes, dtypes, devices and the Python numbers are checked (the kernels still
            check ids on CPU; on CUDA an out-of-range user, positive or group id stops at a device-side assert of
            the row gathers, as torch indexing does).

    Returns:
        (losses [S] float64, each batch's loss; weights [S, B] in the tables' dtype, each batch's w). Detached;
        no derivative: under grad mode with a table or state that requires grad it raises.
    """
    if utility not in UTILITIES:
        raise ValueError(f"`utility` must be one of {UTILITIES}, got {utility!r}")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"`weight_mode` must be one of {WEIGHT_MODES}, got {weight_mode!r}")
    one_batch = isinstance(users, torch.Tensor) and users.dim() == 1
    users, pos, neg, _ = _batches(users, pos, neg, None)
    check.index("sampled", sampled)
    if one_batch and sampled.dim() == 1:
        sampled = sampled.unsqueeze(0)
    if sampled.dim() != 2 or sampled.shape[0] != users.shape[0]:
        raise ValueError(f"`sampled` must be [S, Q] with S = {users.shape[0]} batches (or [Q] with one batch), got "
                         f"{tuple(sampled.shape)}")
    check.positive_int("topk", topk)
    if topk > sampled.shape[1]:
        raise ValueError(f"`topk` ({topk}) must be <= the number of sampled items Q = {sampled.shape[1]}")
    _check_adam_numbers(reg_weight, lr, beta1, beta2, eps, weight_decay)
    check.numbers(("batch_fraction", batch_fraction, 0 <= batch_fraction < float("inf"), "finite and >= 0"),
                  ("s_min", s_min, s_min == s_min, "a number (not NaN)"))
    check_dual_state(mu, (("gmom", gmom), ("gamma", gamma), ("rho", rho), ("mhat", mhat)), lam, eta, alpha, metric,
                     target, validate)
    if validate or not has_op("fairdual_bpr_adam_step", user_emb.device):
        _check_state(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step,
                     item_step, users, pos, neg, None)
        check_item_groups(group_ids, group_weights, item_emb, mu.numel(), validate)
        check.same_device(("user_emb", user_emb), ("mu", mu), ("sampled", sampled))
        check.id_range("sampled", sampled, item_emb.shape[0], "item id")
        if signal_items is not None:
            check.floating("signal_items", signal_items)
            if signal_items.shape != item_emb.shape or signal_items.dtype != item_emb.dtype:
                raise ValueError(f"`signal_items` must be shaped like `item_emb` {tuple(item_emb.shape)} with dtype "
                                 f"{item_emb.dtype}, got {signal_items.dtype} {tuple(signal_items.shape)}")
            check.same_device(("item_emb", item_emb), ("signal_items", signal_items))
    args = (user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
            users, pos, neg, mu, gmom, gamma, sampled, signal_items, group_ids, group_weights, rho, mhat, topk,
            utility == "sigmoid", weight_mode == "topk_exposure", float(s_min), float(batch_fraction), float(lam),
            float(eta), float(alpha), metric == "weighted", target == "remaining", float(reg_weight),
            bool(sigmoid_scores), float(lr), float(beta1), float(beta2), float(eps), float(weight_decay))
    with torch.no_grad():
        if has_op("fairdual_bpr_adam_step", user_emb.device):
            return torch.ops.fairlit.fairdual_bpr_adam_step(*args)
        return reference.fairdual_bpr_adam_step(*args)


def _register() -> None:
    # Fake (meta) kernel: the tables and states are updated in place (declared in the schema); the losses are new.
    @torch.library.register_fake("fairlit::bpr_adam_step")
    def _(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
          users, pos, neg, weight, reg_weight, sigmoid_scores, lr, beta1, beta2, eps, weight_decay):
        return user_emb.new_empty((users.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("fairlit::fairdual_bpr_adam_step")  # also updates the dual state in place
    def _(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
          users, pos, neg, mu, gmom, gamma, sampled, signal_items, group_ids, group_weights, rho, mhat, topk,
          sigmoid_utility, topk_exposure_weights, s_min, batch_fraction, lam, eta, alpha, weighted, remaining,
          reg_weight, sigmoid_scores, lr, beta1, beta2, eps, weight_decay):
        return user_emb.new_empty((users.shape[0],), dtype=torch.float64), user_emb.new_empty(tuple(users.shape))

    # The autograd kernels are C++ (csrc/autograd.cpp): an optimizer step has no derivative; they refuse to run
    # where autograd would have to record an in-place update of a table (or dual state) that requires grad.


if has_op("bpr_adam_step"):
    _register()
