"""Ranking scores: `score_candidates` (fused gather-dot), `topk_scores` (top-k with exclusions) and
`sampled_topk_group_stats` (FairDual's dual signal: top-k of a shared item sample plus its group shares).

Kernels: csrc/cpu/ranking.cpp, csrc/cuda/ranking.cu.
"""
import torch

from . import _validate as check
from . import reference
from ._library import has_op


def _check_tables(user_emb: torch.Tensor, item_emb: torch.Tensor, validate: bool) -> None:
    """The embedding pair; with `validate` also finite (a host sync on CUDA): NaN or inf gives NaN scores."""
    check.embeddings(user_emb, item_emb)
    if validate:
        check.finite("user_emb", user_emb)
        check.finite("item_emb", item_emb)


def _check_candidates(candidates: torch.Tensor, user_emb: torch.Tensor, num_items: int, validate: bool) -> None:
    check.index("candidates", candidates)
    check.same_device(("user_emb", user_emb), ("candidates", candidates))
    if candidates.dim() == 2 and candidates.shape[0] != user_emb.shape[0]:
        raise ValueError(f"`candidates` has {candidates.shape[0]} rows but `user_emb` has {user_emb.shape[0]}")
    check.ndim("candidates", candidates, (1, 2), "[C] or [B, C]")
    if validate:
        check.id_range("candidates", candidates, num_items, "item id")


def score_candidates(user_emb: torch.Tensor, item_emb: torch.Tensor, candidates: torch.Tensor, *,
                     validate: bool = True) -> torch.Tensor:
    r"""Scores of candidate items, :math:`s_{b,c} = u_b \cdot v_{\mathrm{candidates}_{b,c}}`, without
    materialising [B, C, d].

    Args:
        user_emb: [B, d] float.
        item_emb: [I, d] float, same dtype and device.
        candidates: [B, C] per-row or [C] shared int64 item ids in [0, I).
        validate: check item ids, and NaN / inf embeddings (a host sync on CUDA).

    Returns:
        [B, C] scores in the embedding dtype (float32 accumulation for half). Differentiable in both
        embeddings; repeated item ids accumulate their gradients.
    """
    _check_tables(user_emb, item_emb, validate)
    _check_candidates(candidates, user_emb, item_emb.shape[0], validate)
    if has_op("score_candidates", user_emb.device):
        return torch.ops.fairlit.score_candidates(user_emb, item_emb, candidates)
    return reference.score_candidates(user_emb, item_emb, candidates)


def topk_scores(user_emb: torch.Tensor, item_emb: torch.Tensor, k: int, candidates: torch.Tensor | None = None,
                exclude_indptr: torch.Tensor | None = None, exclude_indices: torch.Tensor | None = None, *,
                validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The k best items per row by score :math:`u_b \cdot v_i`, without materialising [B, I].

    Args:
        user_emb: [B, d] float.
        item_emb: [I, d] float.
        k: number of items to return, >= 1.
        candidates: None (rank all I items), [C] shared or [B, C] per-row item ids.
        exclude_indptr: [B + 1] int64 CSR row pointers of items each row must never return.
        exclude_indices: [nnz] int64 item ids (e.g. the user's training items).
        validate: check ids, and NaN / inf embeddings (a host sync on CUDA).

    Returns:
        (values [B, k], indices [B, k] int64 item ids): descending scores, ties to the lower item id;
        where fewer than k items are eligible the tail is (-inf, -1). Not differentiable.
    """
    _check_tables(user_emb, item_emb, validate)
    check.positive_int("k", k)
    num_items = item_emb.shape[0]
    if candidates is not None:
        _check_candidates(candidates, user_emb, num_items, validate)
    if (exclude_indptr is None) != (exclude_indices is None):
        raise ValueError("pass both `exclude_indptr` and `exclude_indices`, or neither")
    if exclude_indptr is not None:
        check.csr("exclude_indptr", exclude_indptr, "exclude_indices", exclude_indices, user_emb.shape[0], "B + 1",
                  num_items, "item id", validate)
        check.same_device(("user_emb", user_emb), ("exclude_indptr", exclude_indptr),
                          ("exclude_indices", exclude_indices))
    args = (user_emb.detach(), item_emb.detach(), k, candidates, exclude_indptr, exclude_indices)
    if has_op("topk_scores", user_emb.device):
        return torch.ops.fairlit.topk_scores(*args)
    return reference.topk_scores(*args)


UTILITIES = ("exposure", "sigmoid")


def check_item_groups(group_ids: torch.Tensor, group_weights: torch.Tensor, item_emb: torch.Tensor, num_groups: int,
                      validate: bool) -> None:
    """The padded Â rows of FairDual's signal: ``group_ids`` int64 and ``group_weights`` float, both [I, P] for the
    I rows of `item_emb` and on its device; with `validate` ids in [0, G) and finite weights (host syncs on CUDA)."""
    check.positive_int("num_groups", num_groups)
    check.index("group_ids", group_ids)
    check.floating("group_weights", group_weights)
    if group_ids.dim() != 2 or group_ids.shape[0] != item_emb.shape[0]:
        raise ValueError(f"`group_ids` must be [I, P] with I = {item_emb.shape[0]} items, got {tuple(group_ids.shape)}")
    if group_weights.shape != group_ids.shape:
        raise ValueError(f"`group_weights` must have the shape of `group_ids` {tuple(group_ids.shape)}, got "
                         f"{tuple(group_weights.shape)}")
    check.same_device(("item_emb", item_emb), ("group_ids", group_ids), ("group_weights", group_weights))
    if validate:
        check.id_range("group_ids", group_ids, num_groups, "group id")
        if group_weights.numel() and check._reads_values() and not bool(torch.isfinite(group_weights).all()):
            raise ValueError("`group_weights` contains a non-finite value")


def sampled_topk_group_stats(user_emb: torch.Tensor, item_emb: torch.Tensor, sampled: torch.Tensor, k: int,
                             group_ids: torch.Tensor, group_weights: torch.Tensor, num_groups: int,
                             utility: str = "exposure", per_row: bool = False, *, validate: bool = True
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Each row's top-k among Q shared sampled items and the group-resolved utility of those k slots, fused
    (FairDual's dual signal, spec fairdual §7 K1; paper Alg. 1 line 11).

    .. math::
        D_g = \sum_b \sum_{j \le k} u_{bj}\, \hat A[\mathrm{top}_{bj}, g], \qquad
        u_{bj} = 1 \text{ (exposure) or } \sigma(s_{b,\mathrm{top}_{bj}}) \text{ (sigmoid)},

    with :math:`s_{bq} = h_b \cdot E_{\mathrm{sampled}_q}`. A non-finite score (a diverged model) has
    utility 0, so D never turns NaN.

    Args:
        user_emb: [B, d] float.
        item_emb: [I, d] float, same dtype and device.
        sampled: [Q] int64 item ids shared by all rows (repeats allowed).
        k: slots per row, 1 <= k <= Q.
        group_ids: [I, P] int64 group ids of each item's Â row (padded; padding slots have weight 0).
        group_weights: [I, P] float Â entries (row-normalised for exposure shares; a single-group map is
            ``group_ids = g[:, None]`` with weights 1).
        num_groups: G >= 1.
        utility: ``"exposure"`` or ``"sigmoid"``.
        per_row: also return each row's [G] share (FairDiverse's top-k exposure weights need it).
        validate: check ids and group weights (host syncs on CUDA).

    Returns:
        (values [B, k] in the embedding dtype, items [B, k] int64, consumed [G] float64,
        row_consumed [B, G] float64, or [0, G] when ``per_row`` is False). Order: score descending, NaN
        first (as ``torch.sort``), ties to the earlier position in ``sampled``. Not differentiable.
    """
    check.embeddings(user_emb, item_emb)
    check.index("sampled", sampled)
    check.ndim("sampled", sampled, (1,), "[Q]")
    check.positive_int("k", k)
    if k > sampled.numel():
        raise ValueError(f"`k` ({k}) must be <= the number of sampled items Q = {sampled.numel()}")
    if utility not in UTILITIES:
        raise ValueError(f"`utility` must be one of {UTILITIES}, got {utility!r}")
    check_item_groups(group_ids, group_weights, item_emb, num_groups, validate)
    check.same_device(("user_emb", user_emb), ("sampled", sampled))
    if validate:
        check.id_range("sampled", sampled, item_emb.shape[0], "item id")
    args = (user_emb.detach(), item_emb.detach(), sampled, k, group_ids, group_weights, num_groups,
            utility == "sigmoid", per_row)
    if has_op("sampled_topk_group_stats", user_emb.device):
        return torch.ops.fairlit.sampled_topk_group_stats(*args)
    return reference.sampled_topk_group_stats(*args)


def _register() -> None:
    @torch.library.register_fake("fairlit::score_candidates")
    def _(user_emb, item_emb, candidates):
        return user_emb.new_empty((user_emb.shape[0], candidates.shape[-1]))

    @torch.library.register_fake("fairlit::score_candidates_backward")
    def _(grad, user_emb, item_emb, candidates):
        return torch.empty_like(user_emb), torch.empty_like(item_emb)

    @torch.library.register_fake("fairlit::topk_scores")
    def _(user_emb, item_emb, k, candidates, exclude_indptr, exclude_indices):
        batch = user_emb.shape[0]
        return user_emb.new_empty((batch, k)), user_emb.new_empty((batch, k), dtype=torch.int64)

    @torch.library.register_fake("fairlit::sampled_topk_group_stats")
    def _(user_emb, item_emb, sampled, k, group_ids, group_weights, num_groups, sigmoid_utility, per_row):
        batch = user_emb.shape[0]
        f64 = dict(dtype=torch.float64)
        return (user_emb.new_empty((batch, k)), user_emb.new_empty((batch, k), dtype=torch.int64),
                user_emb.new_empty((num_groups,), **f64), user_emb.new_empty((batch if per_row else 0, num_groups), **f64))

    # score_candidates' autograd formula is registered in C++ (csrc/autograd.cpp): it runs every BPR step.


if has_op("score_candidates"):
    _register()
