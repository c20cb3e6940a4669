"""FairNeg's pure tensor functions: mixup negative distribution, inverse-CDF draw, G-BCE, momentum update.

Equation numbers refer to Chen et al., "Fairly Adaptive Negative Sampling for Recommendations", WWW 2023.
Everything is batched over users and runs on the tensors' device; nothing loops over users in Python.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from fairlit import ops

IMP_SCORES = ("sigmoid", "logit")


def csr_row_mask(indptr: Tensor, indices: Tensor, rows: Tensor, num_cols: int) -> Tensor:
    """Dense boolean rows of a CSR matrix (e.g. each user's training positives).

    Args:
        indptr: [R+1] int64 row pointers.
        indices: [nnz] int64 column ids.
        rows: [B] int64 rows to take.
        num_cols: n.

    Returns:
        [B, n] bool, True where the row stores the column.
    """
    start = indptr[rows]
    length = indptr[rows + 1] - start
    total = int(length.sum())  # one host sync: repeat_interleave needs the output size
    row_of = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), length, output_size=total)
    first = torch.cumsum(length, 0) - length
    offset = (torch.arange(total, device=rows.device)
              - torch.repeat_interleave(first, length, output_size=total))
    cols = indices[torch.repeat_interleave(start, length, output_size=total) + offset]
    mask = torch.zeros(len(rows), num_cols, dtype=torch.bool, device=rows.device)
    mask[row_of, cols] = True
    return mask


def mixup_probs(scores: Tensor | None, train_mask: Tensor, item_group: Tensor, p_group: Tensor, n_ua: Tensor,
                w_fair: float, tau: float = 0.4, imp_score: str = "sigmoid") -> Tensor:
    r"""Per-user negative sampling distribution over all items (Eqs. 6-8).

    .. math::
        p^{fair}_{u,j} = \frac{\tilde p_{u,g(j)}}{n_{u,g(j)}}, \quad
        p^{imp}_{u,j} = \operatorname{softmax}_{j \in V^-_u}\big(\phi(\hat y_{u,j}) / \tau\big), \quad
        p_{u,j} = w_{fair}\, p^{fair}_{u,j} + (1 - w_{fair})\, p^{imp}_{u,j}

    where :math:`\tilde p_u` is ``p_group`` restricted to the groups in which u still has candidates and
    renormalised (spec §2.5: a group with :math:`n_{u,a} = 0` cannot receive mass), and φ is the sigmoid
    (official code) or the identity.

    Args:
        scores: [B, n] model scores of the batch users, or None when ``w_fair == 1`` (no importance part).
        train_mask: [B, n] bool, True on the user's training positives (probability 0 there).
        item_group: [n] int64 group of each item.
        p_group: [A] group-level negative sampling distribution.
        n_ua: [B, A] number of candidate negatives of each user in each group.
        w_fair: β of Eq. 8 (weight of the fairness-aware part); the code's ``br`` is ``1 - w_fair``.
        tau: softmax temperature of Eq. 7.
        imp_score: ``"sigmoid"`` or ``"logit"`` (φ above).

    Returns:
        [B, n] float32 rows summing to 1, zero on training positives.
    """
    n_ua = n_ua.to(torch.float32)
    pg = p_group.to(torch.float32).unsqueeze(0) * (n_ua > 0)                       # [B, A]
    pg = pg / pg.sum(1, keepdim=True).clamp_min(1e-30)
    per_item = (pg / n_ua.clamp_min(1)).index_select(1, item_group)                 # [B, n]
    probs = per_item.masked_fill(train_mask, 0.0)
    if w_fair >= 1.0:
        return probs
    phi = torch.sigmoid(scores.float()) if imp_score == "sigmoid" else scores.float()
    p_imp = torch.softmax((phi / tau).masked_fill(train_mask, float("-inf")), dim=1)
    return w_fair * probs + (1.0 - w_fair) * p_imp


def draw_inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """One categorical draw per row by inverse CDF, from given uniforms (deterministic and testable).

    Args:
        probs: [B, n] non-negative rows with positive sums (need not be normalised).
        uniforms: [B] float in [0, 1).

    Returns:
        [B] int64 item ids; an item with probability 0 is never returned.
    """
    cdf = probs.double().cumsum(1)                                                   # [B, n]
    total = cdf[:, -1:]
    # u * total can round up to total; keeping the target strictly below it never selects a trailing
    # zero-mass item (the first cdf entry > target is then at most the last item with mass).
    below = torch.nextafter(total, torch.zeros_like(total))
    target = torch.minimum(uniforms.double().unsqueeze(1) * total, below)
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def stacked_cdf(probs: Tensor, rows: Tensor) -> Tensor:
    """Row-normalised CDFs shifted by their row id, so that the rows of all users form one sorted array.

    Args:
        probs: [B, n] non-negative rows with positive sums.
        rows: [B] row ids (user ids) of the block.

    Returns:
        [B, n] float64 with ``rows[b] < out[b, j] <= rows[b] + 1`` and ``out[b, -1] == rows[b] + 1``.
    """
    cdf = probs.double().cumsum(1)
    return cdf / cdf[:, -1:] + rows.double().unsqueeze(1)


def draw_stacked(flat_cdf: Tensor, rows: Tensor, uniforms: Tensor, num_items: int) -> Tensor:
    """Draws for many (row, uniform) pairs at once from :func:`stacked_cdf` rows flattened to [R * n].

    The value ``row + u`` falls inside the row's own segment, so one searchsorted serves every pair.

    Args:
        flat_cdf: [R * n] float64, rows of :func:`stacked_cdf` for all rows 0..R-1, flattened.
        rows: [P] int64 row of each draw.
        uniforms: [P] float64 in [0, 1).
        num_items: n.

    Returns:
        [P] int64 column ids; zero-mass columns are never returned.
    """
    base = rows.double()
    target = torch.minimum(base + uniforms.double(), torch.nextafter(base + 1, base))
    return torch.searchsorted(flat_cdf, target, right=True) - rows * num_items


def gbce_group_sums(user_vecs: Tensor, item_vecs: Tensor, users: Tensor, items: Tensor, item_group: Tensor,
                    num_groups: int, chunk: int = 1 << 20) -> tuple[Tensor, Tensor]:
    r"""Per-group sums and counts of :math:`\operatorname{softplus}(-\hat y_{u,i})
    = -\log\sigma(\hat y_{u,i})` over positive pairs (numerator and denominator of G-BCE, §3.2).

    Args:
        user_vecs: [m, d] user embeddings (final ones for LightGCN).
        item_vecs: [n, d] item embeddings.
        users: [P] int64 users of the pairs.
        items: [P] int64 items of the pairs.
        item_group: [n] int64.
        num_groups: A.
        chunk: pairs scored at once (bounds the [chunk, d] gathers).

    Returns:
        (sums [A] float64, counts [A] float64), ready to be summed across ranks.
    """
    sums = torch.zeros(num_groups, dtype=torch.float64, device=item_vecs.device)
    for s in range(0, len(users), chunk):
        u, i = users[s:s + chunk], items[s:s + chunk]
        loss = F.softplus(-(user_vecs[u] * item_vecs[i]).sum(-1)).double()
        sums += ops.group_sum(loss, item_group[i], num_groups, validate=False)
    counts = torch.bincount(item_group[items], minlength=num_groups).double()
    return sums, counts


def momentum_step(p: Tensor, v: Tensor, loss: Tensor, gamma: float, alpha: float,
                  p_min: float = 0.0) -> tuple[Tensor, Tensor, bool]:
    r"""Adaptive momentum update of the group distribution (Eqs. 4-5) with the spec's projection.

    .. math::
        \nabla_a = \mathcal L_a - \tfrac1A \textstyle\sum_z \mathcal L_z, \quad
        v \leftarrow \gamma v + \alpha\nabla, \quad p \leftarrow \Pi(p - v), \quad
        \Pi(x) = \max(x, p_{min}) / \textstyle\sum \max(x, p_{min})

    Σ∇ = 0 and v starts at 0, so Σp stays 1 and Π only acts when an entry would fall below ``p_min``.

    Args:
        p: [A] current distribution.
        v: [A] momentum (zeros before the first update).
        loss: [A] G-BCE per group.
        gamma: momentum γ.
        alpha: outer learning rate α.
        p_min: lower bound of every entry.

    Returns:
        (new p [A], new v [A], whether the projection clamped an entry).
    """
    v = gamma * v + alpha * (loss - loss.mean())
    raw = p - v
    clamped = bool((raw < p_min).any())
    p = raw.clamp_min(p_min)
    return p / p.sum(), v, clamped


def code_momentum_step(p: Tensor, prev_grad: Tensor, loss: Tensor, alpha: float,
                       first: bool) -> tuple[Tensor, Tensor, bool]:
    r"""The official code's outer step (spec §8 item 3), kept for parity runs.

    :math:`p \leftarrow p - \alpha (0.9\, g_{t-1} + 0.1\, g_t)` (first step :math:`p - \alpha g_0`), each
    entry clipped to [0, 1], then the residual :math:`1 - \sum p` added to the last group.

    Args:
        p: [A] current distribution.
        prev_grad: [A] previous raw gradient g_{t-1}.
        loss: [A] G-BCE per group.
        alpha: step size (0.2 in the code).
        first: no previous gradient yet.

    Returns:
        (new p [A], this step's raw gradient [A] (the next ``prev_grad``), whether clipping acted).
    """
    grad = loss - loss.mean()
    step = grad if first else 0.9 * prev_grad + 0.1 * grad
    raw = p - alpha * step
    p = raw.clamp(0.0, 1.0)
    clamped = bool((p != raw).any())
    p = torch.cat([p[:-1], p[-1:] + (1.0 - p.sum())])
    return p, grad, clamped
