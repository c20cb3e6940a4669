r"""Soft sorting (deterministic NeuralSort, Grover et al. 2019): `neuralsort`, the fused soft DCG
`soft_rank_gain`, and the helpers `soft_ndcg` and `soft_hit` (FADE's differentiable Hit, fade.md §2.5).

For a score list :math:`s \in \mathbb{R}^N`, :math:`A_{ij} = |s_i - s_j|`, row :math:`r` of the relaxed
permutation matrix is

.. math::  \hat P[r, :] = \mathrm{softmax}\big(((N + 1 - 2r)\, s - A \mathbf{1}) / \tau\big)

(paper Eq. 4). :math:`A\mathbf{1}` comes from one sort plus prefix sums, so the kernels never form the
N x N matrix: O(N log N + kN) time per row. Kernels: csrc/cpu/soft_sort.cpp, csrc/cuda/soft_sort.cu.
Only first-order gradients are supported.
"""
import math

import torch

from . import _validate as check
from . import reference
from ._library import has_op


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_scores(scores: torch.Tensor, tau: float, k: int | None, validate: bool) -> int:
    """Validates scores [B, N], tau and k; returns k (N when None)."""
    check.floating("scores", scores)
    check.ndim("scores", scores, (2,), "[B, N]")
    n = scores.shape[1]
    if n == 0:
        raise ValueError("`scores` has no items (shape [B, 0]); expected N >= 1")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"`tau` must be a finite number > 0, got {tau!r}")
    k = n if k is None else k
    check.positive_int("k", k)
    if k > n:
        raise ValueError(f"`k` must be <= N = {n} (the number of items per row), got {k}")
    if validate:
        check.finite("scores", scores)
    return k


def _check_same(name: str, t: torch.Tensor, scores: torch.Tensor, validate: bool) -> None:
    """`t` [B, N] like `scores`; with `validate` also finite (a NaN gain would give a NaN or, in soft_ndcg, 0)."""
    check.floating(name, t)
    check.same_dtype(("scores", scores), (name, t))
    check.same_device(("scores", scores), (name, t))
    if t.shape != scores.shape:
        raise ValueError(f"`{name}` must have the shape of `scores` {tuple(scores.shape)}, "
                         f"got {tuple(t.shape)}")
    if validate:
        check.finite(name, t)


def neuralsort(scores: torch.Tensor, tau: float, k: int | None = None, *,
               validate: bool = True) -> torch.Tensor:
    r"""Rows 1..k of the NeuralSort relaxed permutation matrix (descending order).

    :math:`P[:, r-1, :] = \mathrm{softmax}(((N + 1 - 2r)\, s - A\mathbf{1}) / \tau)`,
    :math:`A_{ij} = |s_i - s_j|`. Row r is a distribution over items: the soft "who is ranked r-th";
    as :math:`\tau \to 0^+` it tends to the one-hot of the r-th largest score.

    Args:
        scores: [B, N] float (half inputs accumulate in float32).
        tau: temperature > 0.
        k: number of leading rows, 1 <= k <= N (default N: the full matrix).
        validate: check that scores are finite (a host sync on CUDA). Without it the CPU kernel still rejects a
            non-finite score; the CUDA kernel does not check (its result is then undefined, its reads in bounds).

    Returns:
        P [B, k, N] in the dtype of `scores`; rows sum to 1. Differentiable in `scores`
        (ties use sign(0) = 0, as autograd through `torch.abs` does).
    """
    k = _check_scores(scores, tau, k, validate)
    if has_op("neuralsort", scores.device):
        return torch.ops.fairlit.neuralsort(scores, float(tau), k)
    return reference.neuralsort(scores, tau, k)


def soft_rank_gain(scores: torch.Tensor, gains: torch.Tensor, tau: float, k: int,
                   discounts: torch.Tensor | None = None, *, validate: bool = True) -> torch.Tensor:
    r"""Discounted soft gain of the top k soft ranks, fused:
    :math:`\mathrm{out}_b = \sum_{r \le k} d_r\, (\hat P_b[r, :] \cdot g_b)` (soft DCG@k for the default
    :math:`d_r = 1/\log_2(r + 1)`; fade.md §2.5 Eq. 7).

    The forward keeps only per-row softmax statistics ([B, k]); the backward recomputes the rows, as
    flash-attention does. Memory O(B N + B k), time O(N log N + k N) per row.

    Args:
        scores: [B, N] float.
        gains: [B, N], dtype and device of `scores` (e.g. relevance, or a one-hot positive).
        tau: temperature > 0.
        k: number of soft ranks, 1 <= k <= N.
        discounts: optional [k] float weights d_r (default DCG discounts).
        validate: check that scores, gains and discounts are finite (see `neuralsort`).

    Returns:
        [B] in the dtype of `scores`. Differentiable in `scores`, `gains` and `discounts`.
    """
    k = _check_scores(scores, tau, k, validate)
    _check_same("gains", gains, scores, validate)
    acc = _acc_dtype(scores.dtype)
    if discounts is None:
        discounts = reference._dcg_discounts(k, acc, scores.device)
    else:
        check.floating("discounts", discounts)
        check.same_device(("scores", scores), ("discounts", discounts))
        if discounts.shape != (k,):
            raise ValueError(f"`discounts` must be [k] = [{k}], got {tuple(discounts.shape)}")
        if validate:
            check.finite("discounts", discounts)
    if has_op("soft_rank_gain", scores.device):
        return torch.ops.fairlit.soft_rank_gain(scores, gains, float(tau), k, discounts)[0]
    return reference.soft_rank_gain(scores, gains, tau, k, discounts)


def soft_ndcg(scores: torch.Tensor, relevance: torch.Tensor, tau: float, k: int, *,
              validate: bool = True) -> torch.Tensor:
    r"""Soft NDCG@k with linear gains: :math:`\mathrm{softDCG@k}(s, y) / \mathrm{IDCG@k}(y)`.

    The ideal DCG sorts `relevance` itself (for binary relevance it is
    :math:`\sum_{r \le \min(k, |y|)} 1/\log_2(r+1)`, fade.md §7 K1). Rows with no relevant item give 0.

    Args:
        scores: [B, N] float.
        relevance: [B, N] non-negative, dtype and device of `scores`.
        tau: temperature > 0.
        k: cut-off, 1 <= k <= N.
        validate: check that scores and relevance are finite (see `neuralsort`).

    Returns:
        [B] in the dtype of `scores`, in [0, 1] for non-negative relevance. Differentiable in `scores`.
    """
    k = _check_scores(scores, tau, k, validate)
    _check_same("relevance", relevance, scores, validate)
    acc = _acc_dtype(scores.dtype)
    disc = reference._dcg_discounts(k, acc, scores.device)
    dcg = soft_rank_gain(scores, relevance, tau, k, disc, validate=False).to(acc)
    ideal = (relevance.to(acc).topk(k, dim=-1).values * disc).sum(-1)
    has_rel = ideal > 0
    # The safe denominator keeps the gradient of empty rows at 0 instead of 0 * inf = NaN.
    safe_ideal = torch.where(has_rel, ideal, torch.ones_like(ideal))
    return torch.where(has_rel, dcg / safe_ideal, 0.0).to(scores.dtype)


def soft_hit(scores: torch.Tensor, pos_index: torch.Tensor | int, tau: float, k: int = 1, *,
             validate: bool = True) -> torch.Tensor:
    r"""FADE's differentiable Hit@k: the probability mass of the positive item in the first k soft ranks,
    :math:`DH_b = \sum_{r \le k} \hat P_b[r, \mathrm{pos}_b]` (fade.md §2.5; FADE uses k = 1, positive in
    column 0).

    Args:
        scores: [B, N] candidate scores.
        pos_index: [B] int64 column of each row's positive, or one int for all rows.
        tau: temperature > 0.
        k: number of soft ranks, 1 <= k <= N.
        validate: check scores and the positive's column (host syncs on CUDA).

    Returns:
        [B] in (0, 1] (in the dtype of `scores`); 1/N for constant scores and k = 1. Differentiable in
        `scores`.
    """
    k = _check_scores(scores, tau, k, validate)
    n = scores.shape[1]
    if isinstance(pos_index, int) and not isinstance(pos_index, bool):
        if not 0 <= pos_index < n:
            raise ValueError(f"`pos_index` must be in [0, {n}), got {pos_index}")
        gains = (torch.arange(n, device=scores.device) == pos_index).to(scores.dtype).expand_as(scores)
    else:
        check.index("pos_index", pos_index)
        check.same_device(("scores", scores), ("pos_index", pos_index))
        if pos_index.shape != (scores.shape[0],):
            raise ValueError(f"`pos_index` must be [B] = [{scores.shape[0]}], got {tuple(pos_index.shape)}")
        if validate:
            check.id_range("pos_index", pos_index, n, "column")
        gains = (torch.arange(n, device=scores.device) == pos_index.unsqueeze(1)).to(scores.dtype)
    ones = torch.ones(k, dtype=_acc_dtype(scores.dtype), device=scores.device)
    return soft_rank_gain(scores, gains, tau, k, ones, validate=False)


def _register() -> None:
    # Fake (meta) kernels let torch.compile trace the ops without running them.
    @torch.library.register_fake("fairlit::neuralsort")
    def _(scores, tau, k):
        return scores.new_empty((scores.shape[0], k, scores.shape[1]))

    @torch.library.register_fake("fairlit::neuralsort_backward")
    def _(grad, P, scores, tau):
        return torch.empty_like(scores)

    @torch.library.register_fake("fairlit::soft_rank_gain")
    def _(scores, gains, tau, k, discounts):
        acc = _acc_dtype(scores.dtype)
        rows = scores.shape[0]
        stats = scores.new_empty((rows, k), dtype=acc)
        return scores.new_empty((rows,)), stats, torch.empty_like(stats)

    @torch.library.register_fake("fairlit::soft_rank_gain_backward")
    def _(grad, scores, gains, tau, k, discounts, lse, dots):
        return torch.empty_like(scores), torch.empty_like(gains)

    def neuralsort_setup(ctx, inputs, output):
        scores, tau, _ = inputs
        ctx.tau = tau
        ctx.save_for_backward(scores, output)

    def neuralsort_backward(ctx, grad):
        scores, p = ctx.saved_tensors
        return torch.ops.fairlit.neuralsort_backward(grad, p, scores, ctx.tau), None, None

    torch.library.register_autograd("fairlit::neuralsort", neuralsort_backward,
                                    setup_context=neuralsort_setup)

    def gain_setup(ctx, inputs, output):
        scores, gains, tau, k, discounts = inputs
        _, lse, dots = output
        ctx.mark_non_differentiable(lse, dots)
        ctx.tau, ctx.k = tau, k
        ctx.save_for_backward(scores, gains, discounts, lse, dots)

    def gain_backward(ctx, grad, grad_lse, grad_dots):
        scores, gains, discounts, lse, dots = ctx.saved_tensors
        grad_scores, grad_gains = torch.ops.fairlit.soft_rank_gain_backward(
            grad, scores, gains, ctx.tau, ctx.k, discounts, lse, dots)
        grad_discounts = None
        if ctx.needs_input_grad[4]:
            grad_discounts = (grad.to(dots.dtype).unsqueeze(1) * dots).sum(0).to(discounts.dtype)
        return grad_scores, grad_gains, None, None, grad_discounts

    torch.library.register_autograd("fairlit::soft_rank_gain", gain_backward, setup_context=gain_setup)


if has_op("neuralsort"):
    _register()
