"""Group-segmented reductions and losses: `group_sum`, `group_mean`, `group_bpr_loss`.

Kernels: csrc/cpu/group_segment.cpp, csrc/cuda/group_segment.cu. Reductions are deterministic (no
order-dependent float atomics): the same inputs give bitwise identical outputs on the same device.
"""
import torch

from . import _validate as check
from . import reference
from ._library import has_op


def _check_groups(values_name: str, values: torch.Tensor, groups: torch.Tensor, num_groups: int,
                  validate: bool) -> None:
    check.floating(values_name, values)
    check.index("groups", groups)
    check.positive_int("num_groups", num_groups)
    check.ndim("groups", groups, (1,), "[N]")
    check.same_device((values_name, values), ("groups", groups))
    if values.shape[0] != groups.shape[0]:
        raise ValueError(f"`{values_name}` has {values.shape[0]} rows but `groups` has {groups.shape[0]}")
    if validate:
        check.id_range("groups", groups, num_groups, "group id")


def group_sum(values: torch.Tensor, groups: torch.Tensor, num_groups: int, *, validate: bool = True) -> torch.Tensor:
    r"""Sum of rows per group: :math:`\mathrm{out}_g = \sum_{n:\,\mathrm{groups}_n = g} \mathrm{values}_n`.

    Args:
        values: [N] or [N, D] float (half inputs accumulate in float32).
        groups: [N] int64 group id of each row, in [0, num_groups).
        num_groups: G.
        validate: check group ids (a host sync on CUDA); turn off in hot loops.

    Returns:
        [G] or [G, D], dtype of `values`; empty groups are 0. Differentiable in `values`.
    """
    _check_groups("values", values, groups, num_groups, validate)
    check.ndim("values", values, (1, 2), "[N] or [N, D]")
    if has_op("group_sum", values.device):
        return torch.ops.fairlit.group_sum(values, groups, num_groups)
    return reference.group_sum(values, groups, num_groups)


def group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int, *,
               validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean of rows per group and the group sizes.

    Args:
        values: [N] or [N, D] float.
        groups: [N] int64 in [0, num_groups).
        num_groups: G.
        validate: check group ids.

    Returns:
        (mean [G] or [G, D], count [G] int64). An empty group has mean 0, count 0 and zero gradient
        (never NaN). Differentiable in `values`.
    """
    _check_groups("values", values, groups, num_groups, validate)
    check.ndim("values", values, (1, 2), "[N] or [N, D]")
    if has_op("group_mean", values.device):
        return torch.ops.fairlit.group_mean(values, groups, num_groups)
    return reference.group_mean(values, groups, num_groups)


def group_bpr_loss(pos: torch.Tensor, neg: torch.Tensor, groups: torch.Tensor, num_groups: int,
                   weight: torch.Tensor | None = None, *, validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-group sums of BPR losses in one fused pass.

    Sample n contributes :math:`\ell_n = w_n \frac{1}{M}\sum_{m} \mathrm{softplus}(s^-_{n,m} - s^+_n)`
    (= :math:`-\log\sigma(s^+ - s^-)` averaged over its M negatives) to its group.

    Args:
        pos: [N] positive scores.
        neg: [N] or [N, M] negative scores (same dtype as `pos`).
        groups: [N] int64 in [0, num_groups).
        num_groups: G.
        weight: optional [N] per-sample weight >= 0 (same dtype as `pos`).
        validate: check group ids, finite scores and finite weights >= 0 (host syncs on CUDA).

    Returns:
        (loss_sum [G], count [G] int64); loss_sum is float32 for half inputs (a float16 sum overflows),
        else the input dtype. Differentiable in `pos`, `neg` and `weight`.
    """
    _check_groups("pos", pos, groups, num_groups, validate)
    check.ndim("pos", pos, (1,), "[N]")
    check.floating("neg", neg)
    check.ndim("neg", neg, (1, 2), "[N] or [N, M]")
    check.same_dtype(("pos", pos), ("neg", neg))
    check.same_device(("pos", pos), ("neg", neg))
    if neg.shape[0] != pos.shape[0]:
        raise ValueError(f"`neg` has {neg.shape[0]} rows but `pos` has {pos.shape[0]}")
    if neg.dim() == 2 and neg.shape[1] == 0:
        raise ValueError("`neg` has no negatives (shape [N, 0]); expected M >= 1")
    if weight is not None:
        check.floating("weight", weight)
        check.same_dtype(("pos", pos), ("weight", weight))
        check.same_device(("pos", pos), ("weight", weight))
        if weight.shape != pos.shape:
            raise ValueError(f"`weight` must have shape {tuple(pos.shape)}, got {tuple(weight.shape)}")
    if validate:
        check.finite("pos", pos)
        check.finite("neg", neg)
        if weight is not None:
            check.non_negative("weight", weight)
    if has_op("group_bpr_loss", pos.device):
        return torch.ops.fairlit.group_bpr_loss(pos, neg, groups, num_groups, weight)
    return reference.group_bpr_loss(pos, neg, groups, num_groups, weight)


def _rows_of_groups(grad: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``grad[groups]`` [N, ...] from a per-group gradient [G, ...], 0 for rows whose id is outside [0, G).

    Those rows are the ones the CUDA kernels skip under ``validate=False`` (the CPU ones reject them), so
    they get no gradient, and an out-of-range id is never used as an index (a device-side assert on CUDA).
    """
    invalid = (groups < 0) | (groups >= grad.shape[0])
    rows = grad.index_select(0, groups.clamp(0, grad.shape[0] - 1))
    # masked_fill, not a 0/1 multiply: the clamped read may be a non-finite group gradient (inf * 0 = NaN).
    return rows.masked_fill(invalid.reshape(-1, *([1] * (grad.dim() - 1))), 0)


def _register() -> None:
    # Fake (meta) kernels let torch.compile trace the ops without running them.
    @torch.library.register_fake("fairlit::group_sum")
    def _(values, groups, num_groups):
        return values.new_empty((num_groups, *values.shape[1:]))

    @torch.library.register_fake("fairlit::group_mean")
    def _(values, groups, num_groups):
        return values.new_empty((num_groups, *values.shape[1:])), groups.new_empty((num_groups,))

    @torch.library.register_fake("fairlit::group_bpr_loss")
    def _(pos, neg, groups, num_groups, weight):
        loss_dtype = torch.float32 if pos.dtype in (torch.float16, torch.bfloat16) else pos.dtype
        return pos.new_empty((num_groups,), dtype=loss_dtype), groups.new_empty((num_groups,))

    @torch.library.register_fake("fairlit::group_bpr_loss_backward")
    def _(grad_loss, pos, neg, groups, weight):
        return torch.empty_like(pos), torch.empty_like(neg)

    def sum_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def sum_backward(ctx, grad):
        (groups,) = ctx.saved_tensors
        return _rows_of_groups(grad, groups), None, None

    torch.library.register_autograd("fairlit::group_sum", sum_backward, setup_context=sum_setup)

    def mean_setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[1], output[1])

    def mean_backward(ctx, grad_mean, grad_count):
        groups, count = ctx.saved_tensors
        scale = count.clamp(min=1).to(grad_mean.dtype).reciprocal().reshape(-1, *([1] * (grad_mean.dim() - 1)))
        return _rows_of_groups(grad_mean * scale, groups), None, None

    torch.library.register_autograd("fairlit::group_mean", mean_backward, setup_context=mean_setup)

    # group_bpr_loss' autograd formula is registered in C++ (csrc/autograd.cpp): it runs every BPR step.


if has_op("group_sum"):
    _register()
