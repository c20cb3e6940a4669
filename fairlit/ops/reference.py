"""Pure-PyTorch twin of every `fairlit.ops` op, with the same signature.

These are the test oracles and the fallback when the compiled library is unavailable. They favour
clarity over speed (e.g. `score_candidates` materialises [B, C, d]); they never import `fairlit._C`.
Half-precision inputs accumulate in float32, like the kernels.
"""
import torch
import torch.nn.functional as F


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def group_sum(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """out[g] = sum_{n: groups[n] = g} values[n]; values [N] or [N, D] -> [G] or [G, D]."""
    acc = values.to(_acc_dtype(values.dtype))
    out = acc.new_zeros((num_groups, *values.shape[1:])).index_add(0, groups, acc)
    return out.to(values.dtype)


def group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [G](, D), count [G] int64); an empty group has mean 0 and count 0."""
    acc = values.to(_acc_dtype(values.dtype))
    sums = acc.new_zeros((num_groups, *values.shape[1:])).index_add(0, groups, acc)
    count = torch.bincount(groups, minlength=num_groups)
    denom = count.clamp(min=1).to(acc.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return (sums / denom).to(values.dtype), count


def group_bpr_loss(pos: torch.Tensor, neg: torch.Tensor, groups: torch.Tensor, num_groups: int,
                   weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_sum [G], count [G]) of per-sample BPR losses weight_n * mean_m softplus(neg[n, m] - pos[n]).

    loss_sum is float32 for half inputs, else the input dtype.
    """
    acc = _acc_dtype(pos.dtype)
    neg2 = (neg.unsqueeze(1) if neg.dim() == 1 else neg).to(acc)
    per = F.softplus(neg2 - pos.to(acc).unsqueeze(1)).mean(1)
    if weight is not None:
        per = per * weight.to(acc)
    loss = per.new_zeros(num_groups).index_add(0, groups, per)
    return loss, torch.bincount(groups, minlength=num_groups)


def score_candidates(user_emb: torch.Tensor, item_emb: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """scores[b, c] = user_emb[b] . item_emb[candidates[b, c]] (candidates [C] is shared by all rows)."""
    acc = _acc_dtype(user_emb.dtype)
    items = item_emb.to(acc)[candidates]                       # [B, C, d] or [C, d]
    if candidates.dim() == 1:
        items = items.unsqueeze(0)
    return (user_emb.to(acc).unsqueeze(1) * items).sum(-1).to(user_emb.dtype)


def topk_scores(user_emb: torch.Tensor, item_emb: torch.Tensor, k: int, candidates: torch.Tensor | None = None,
                exclude_indptr: torch.Tensor | None = None,
                exclude_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B, k], item ids [B, k]): best k eligible items per row, by score descending, ties to the
    lower item id; excluded items never appear; missing slots are (-inf, -1)."""
    batch, num_items = user_emb.shape[0], item_emb.shape[0]
    acc = _acc_dtype(user_emb.dtype)
    if candidates is None:
        ids = torch.arange(num_items, device=user_emb.device).expand(batch, num_items)
    else:
        ids = candidates.expand(batch, -1) if candidates.dim() == 1 else candidates
    if candidates is None:
        # Scores rounded to the embedding dtype: the ranking is over what a GEMM in that dtype returns.
        scores = (user_emb.to(acc) @ item_emb.to(acc).T).to(user_emb.dtype)
    else:
        scores = score_candidates(user_emb, item_emb, ids)
    valid = torch.ones_like(ids, dtype=torch.bool)
    if exclude_indptr is not None:
        rows = torch.repeat_interleave(torch.arange(batch, device=ids.device), exclude_indptr.diff())
        excluded = torch.zeros(batch, num_items, dtype=torch.bool, device=ids.device)
        excluded[rows, exclude_indices] = True
        valid = ~excluded.gather(1, ids)
    # Lexicographic order (valid first, score descending, id ascending) by stable sorts, last key first.
    order = torch.sort(ids, dim=1, stable=True).indices
    for key, desc in ((scores, True), (valid, True)):
        k_sorted = key.gather(1, order)
        order = order.gather(1, torch.sort(k_sorted.to(torch.float64) if key.dtype == torch.bool else k_sorted,
                                           dim=1, stable=True, descending=desc).indices)
    top = order[:, :k]
    values = scores.gather(1, top)
    indices = ids.gather(1, top)
    keep = valid.gather(1, top)
    values = values.masked_fill(~keep, float("-inf"))
    indices = indices.masked_fill(~keep, -1)
    if top.shape[1] < k:
        pad = k - top.shape[1]
        values = torch.cat([values, values.new_full((batch, pad), float("-inf"))], 1)
        indices = torch.cat([indices, indices.new_full((batch, pad), -1)], 1)
    return values, indices


def sampled_topk_group_stats(user_emb: torch.Tensor, item_emb: torch.Tensor, sampled: torch.Tensor, k: int,
                             group_ids: torch.Tensor, group_weights: torch.Tensor, num_groups: int,
                             sigmoid_utility: bool = False, per_row: bool = False
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """FairDual's dual signal: each row's top-k of the shared ``sampled`` items and the group share of the slots.

    (values [B, k], items [B, k], consumed [G] float64, row_consumed [B, G] float64 or [0, G]). Order: score
    descending (NaN first, as `torch.sort`), ties to the earlier position in ``sampled``. A slot's utility is 0
    for a non-finite score, else 1 (exposure) or sigmoid(score); it is spread over the item's groups by the
    padded Â rows ``group_ids``/``group_weights`` [I, P].
    """
    scores = score_candidates(user_emb, item_emb, sampled)                          # [B, Q]
    order = torch.sort(scores, dim=1, stable=True, descending=True).indices[:, :k]
    values, items = scores.gather(1, order), sampled[order]
    finite = torch.isfinite(values)
    util = torch.sigmoid(values.double()) if sigmoid_utility else torch.ones_like(values, dtype=torch.float64)
    util = util.masked_fill(~finite, 0.0)
    contrib = group_weights.double()[items] * util.unsqueeze(-1)                   # [B, k, P]
    rows = contrib.new_zeros(len(items), num_groups).scatter_add_(1, group_ids[items].flatten(1), contrib.flatten(1))
    return values, items, rows.sum(0), rows if per_row else rows.new_zeros(0, num_groups)


def abs_rowsum(s: torch.Tensor) -> torch.Tensor:
    """a_j = sum_i |s_j - s_i| over the last dim in O(N log N) (one sort plus prefix sums), tie-safe."""
    n = s.shape[-1]
    v, _ = s.sort(-1)
    c = torch.cat([torch.zeros_like(v[..., :1]), v.cumsum(-1)], -1)
    lo = torch.searchsorted(v, s, right=False)
    hi = torch.searchsorted(v, s, right=True)
    return s * lo - c.gather(-1, lo) + (c[..., -1:] - c.gather(-1, hi)) - (n - hi) * s


def abs_rowsum_vjp(s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_j g_j d a_j / d s_m with sign(0) = 0 (what autograd through `torch.abs` gives), O(N log N)."""
    n = s.shape[-1]
    v, idx = s.sort(-1)
    gs = g.gather(-1, idx)
    big_g = torch.cat([torch.zeros_like(gs[..., :1]), gs.cumsum(-1)], -1)
    lo = torch.searchsorted(v, s, right=False)
    hi = torch.searchsorted(v, s, right=True)
    return g * (lo - (n - hi)) - ((big_g[..., -1:] - big_g.gather(-1, hi)) - big_g.gather(-1, lo))


def _neuralsort_logits(scores: torch.Tensor, tau: float, k: int) -> torch.Tensor:
    """[B, k, N] logits (alpha_r s - A 1) / tau of rows 1..k, in the accumulation dtype."""
    s = scores.to(_acc_dtype(scores.dtype))
    n = s.shape[-1]
    alpha = (n - 1 - 2 * torch.arange(k, device=s.device)).to(s.dtype)
    return (alpha[:, None] * s.unsqueeze(-2) - abs_rowsum(s).unsqueeze(-2)) / tau


def _dcg_discounts(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, dtype=dtype, device=device))


def neuralsort(scores: torch.Tensor, tau: float, k: int | None = None) -> torch.Tensor:
    """Rows 1..k of the NeuralSort relaxed permutation matrix, [B, N] -> [B, k, N], without [B, N, N]."""
    k = scores.shape[-1] if k is None else k
    return torch.softmax(_neuralsort_logits(scores, tau, k), -1).to(scores.dtype)


def soft_rank_gain(scores: torch.Tensor, gains: torch.Tensor, tau: float, k: int,
                   discounts: torch.Tensor | None = None) -> torch.Tensor:
    """[B]: sum_{r <= k} discounts[r - 1] * (P[:, r - 1, :] . gains); default discounts 1 / log2(r + 1)."""
    acc = _acc_dtype(scores.dtype)
    p = torch.softmax(_neuralsort_logits(scores, tau, k), -1)
    disc = _dcg_discounts(k, acc, scores.device) if discounts is None else discounts.to(acc)
    return ((p * gains.to(acc).unsqueeze(-2)).sum(-1) * disc).sum(-1).to(scores.dtype)


def neuralsort_dense(scores: torch.Tensor, tau: float, k: int | None = None) -> torch.Tensor:
    """Test oracle: the official dense detNeuralSort (builds |s_i - s_j| as [B, N, N]), rows 1..k."""
    s = scores.to(_acc_dtype(scores.dtype))
    n = s.shape[-1]
    k = n if k is None else k
    a = (s.unsqueeze(-1) - s.unsqueeze(-2)).abs().sum(-1)
    alpha = n + 1 - 2 * torch.arange(1, k + 1, dtype=s.dtype, device=s.device)
    return torch.softmax((alpha[:, None] * s.unsqueeze(-2) - a.unsqueeze(-2)) / tau, -1).to(scores.dtype)


def soft_rank_gain_dense(scores: torch.Tensor, gains: torch.Tensor, tau: float, k: int,
                         discounts: torch.Tensor | None = None) -> torch.Tensor:
    """Test oracle for `soft_rank_gain` built on `neuralsort_dense`."""
    acc = _acc_dtype(scores.dtype)
    p = neuralsort_dense(scores.to(acc), tau, k)
    disc = _dcg_discounts(k, acc, scores.device) if discounts is None else discounts.to(acc)
    return ((p * gains.to(acc).unsqueeze(-2)).sum(-1) * disc).sum(-1).to(scores.dtype)


def csr_matmul(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
               transpose: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A @ x with A [M, N] in CSR (indptr [M + 1], indices [nnz], values [nnz]) and x [N, D] -> [M, D].

    out[r] = sum of values[e] * x[indices[e]] over row r's entries, via an [nnz, D] gather (autograd supplies
    the backward, so `transpose` is not needed).
    """
    acc = _acc_dtype(x.dtype)
    rows = torch.repeat_interleave(torch.arange(indptr.numel() - 1, device=indptr.device), indptr.diff())
    terms = values.to(acc).unsqueeze(1) * x.to(acc).index_select(0, indices)
    return x.new_zeros((indptr.numel() - 1, x.shape[1]), dtype=acc).index_add(0, rows, terms).to(x.dtype)


def _last_true(cond: torch.Tensor) -> torch.Tensor:
    """Largest 1-based position r with ``cond[..., r-1]`` true, 0 if none; [..., G] bool -> [..., 1] long."""
    k = torch.arange(1, cond.shape[-1] + 1, device=cond.device)
    return (cond * k).amax(-1, keepdim=True)


def _projection_theta(sorted_key: torch.Tensor, num: torch.Tensor, den: torch.Tensor,
                      lam: torch.Tensor) -> torch.Tensor:
    """Shift θ ≥ 0 of the ℓ1-ball projection from sorted keys and prefix sums (all [..., G]).

    θ_r = (num_r − λ) / den_r is the shift that makes the top-r entries meet the budget with equality; the
    active set is the largest r whose θ_r stays below the r-th key. r = 0 only when λ = 0; then θ = the
    largest key zeroes everything. θ < 0 means the input is already feasible: clamp to 0 (identity).
    """
    thetas = (num - lam) / den
    r = _last_true(thetas < sorted_key)
    theta = torch.where(r > 0, thetas.gather(-1, (r - 1).clamp(min=0)), sorted_key[..., :1])
    return theta.clamp(min=0)


def dual_projection(mu: torch.Tensor, mhat: torch.Tensor, lam: torch.Tensor, weighted: bool) -> torch.Tensor:
    """Rows of mu [R, G] projected onto M_r = {x : Σ_g mhat_g min(x_g, 0) ≥ −lam_r}, lam [R], mhat [G] > 0.

    Sort + cumsum + a search for the active count (spec fairdual §2.5), no host sync; `weighted` picks the
    metric ‖mhat⊙(x − mu)‖ (else ‖x − mu‖). Autograd differentiates it in mu, lam and mhat.
    """
    acc = _acc_dtype(mu.dtype)
    x, lam = mu.to(acc), lam.to(acc).unsqueeze(-1)
    m = mhat.to(acc).expand_as(x)
    if weighted:
        v = m * x
        b = torch.relu(-v)
        sorted_b = b.sort(dim=-1, descending=True).values
        k = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=acc)
        theta = _projection_theta(sorted_b, sorted_b.cumsum(-1), k, lam)
        out = torch.where(v < 0, -torch.relu(b - theta) / m, x)  # x, not v/m̂: exact on entries >= 0
    else:
        b = torch.relu(-x)
        ratio = b / m
        order = ratio.argsort(dim=-1, descending=True)
        theta = _projection_theta(ratio.gather(-1, order), (m * b).gather(-1, order).cumsum(-1),
                                  (m * m).gather(-1, order).cumsum(-1), lam)
        out = torch.where(x < 0, -torch.relu(b - theta * m), x)
    return out.to(mu.dtype)


def dual_mirror_step(mu: torch.Tensor, gmom: torch.Tensor, gamma: torch.Tensor, share: torch.Tensor,
                     batch_fraction: torch.Tensor, rho: torch.Tensor, mhat: torch.Tensor, lam: float, eta: float,
                     alpha: float, weighted: bool, remaining: bool) -> None:
    """FairDual's dual update on [G] state, in place (spec fairdual §2.3, Alg. 1 lines 12-14, Eq. 8-9):
    γ ← γ − f·d, g̃ = γ − d (``remaining``; else ρ − d), g ← α g̃ + (1 − α) g, μ ← Proj_M(μ − η g / m̂²) (``weighted``;
    else μ − η g), with d = `share`, f = `batch_fraction` (one element)."""
    if remaining:
        gamma.sub_(batch_fraction.reshape(()) * share)
        grad = gamma - share
    else:
        grad = rho - share
    gmom.mul_(1 - alpha).add_(alpha * grad)
    step = gmom / mhat.pow(2) if weighted else gmom
    lam_row = torch.full((1,), lam, dtype=mu.dtype, device=mu.device)
    mu.copy_(dual_projection((mu - eta * step).unsqueeze(0), mhat, lam_row, weighted).squeeze(0))


def bpr_adam_step(user_emb: torch.Tensor, item_emb: torch.Tensor, user_exp_avg: torch.Tensor,
                  user_exp_avg_sq: torch.Tensor, item_exp_avg: torch.Tensor, item_exp_avg_sq: torch.Tensor,
                  user_step: torch.Tensor, item_step: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                  neg: torch.Tensor, weight: torch.Tensor | None, reg_weight: float, sigmoid_scores: bool, lr: float,
                  beta1: float, beta2: float, eps: float, weight_decay: float) -> torch.Tensor:
    """S BPR steps (users/pos [S, B], neg [S, B, M], weight [S, B] or None), each: the batch loss and its
    gradient by autograd at the current tables, then Adam as ``torch.optim.Adam`` documents it (L2 weight
    decay, bias-corrected moments), in place. Returns the losses [S] float64."""
    losses = []
    tables = (user_emb, item_emb)
    states = ((user_exp_avg, user_exp_avg_sq, user_step), (item_exp_avg, item_exp_avg_sq, item_step))
    for s in range(users.shape[0]):
        with torch.enable_grad():
            P, Q = user_emb.detach().requires_grad_(), item_emb.detach().requires_grad_()
            pu, qp, qn = P[users[s]], Q[pos[s]], Q[neg[s]]                       # [B, d], [B, d], [B, M, d]
            s_pos, s_neg = (pu * qp).sum(-1), (pu.unsqueeze(1) * qn).sum(-1)     # [B], [B, M]
            if sigmoid_scores:
                s_pos, s_neg = torch.sigmoid(s_pos), torch.sigmoid(s_neg)
            per_row = F.softplus(s_neg - s_pos.unsqueeze(1)).mean(1)
            if weight is not None:
                per_row = per_row * weight[s]
            batch = users.shape[1]
            reg = (pu.pow(2).sum() + qp.pow(2).sum() + qn.pow(2).sum()) / (2 * batch)
            loss = per_row.mean() + reg_weight * reg
            grads = torch.autograd.grad(loss, (P, Q))
        losses.append(loss.detach().double())
        for table, grad, (exp_avg, exp_avg_sq, step) in zip(tables, grads, states):
            step += 1
            t = float(step)
            grad = grad + weight_decay * table
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq / (1 - beta2 ** t)).sqrt() + eps
            table.sub_(lr * (exp_avg / (1 - beta1 ** t)) / denom)
    return torch.stack(losses) if losses else user_emb.new_zeros(0, dtype=torch.float64)


def fairdual_bpr_adam_step(user_emb: torch.Tensor, item_emb: torch.Tensor, user_exp_avg: torch.Tensor,
                           user_exp_avg_sq: torch.Tensor, item_exp_avg: torch.Tensor, item_exp_avg_sq: torch.Tensor,
                           user_step: torch.Tensor, item_step: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                           neg: torch.Tensor, mu: torch.Tensor, gmom: torch.Tensor, gamma: torch.Tensor,
                           sampled: torch.Tensor, signal_items: torch.Tensor | None, group_ids: torch.Tensor,
                           group_weights: torch.Tensor, rho: torch.Tensor, mhat: torch.Tensor, topk: int,
                           sigmoid_utility: bool, topk_exposure_weights: bool, s_min: float, batch_fraction: float,
                           lam: float, eta: float, alpha: float, weighted: bool, remaining: bool, reg_weight: float,
                           sigmoid_scores: bool, lr: float, beta1: float, beta2: float, eps: float,
                           weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """S FairDual steps of BPR-MF (users/pos [S, B], neg [S, B, M], sampled [S, Q]), each: the dual signal of the
    batch's users against ``signal_items`` (or the current item table), the weights w = max(1 − Â[pos]·μ, s_min)
    (Eq. 7) or 1 − bw/Σbw with bw_b = mean_g(row share_bg μ_g) (``topk_exposure_weights``; 1 where Σbw = 0), the
    dual update with d = D / (B·topk) and f = ``batch_fraction``, then the weighted BPR + Adam step. In place;
    returns (losses [S] float64, weights [S, B] in the tables' dtype)."""
    losses, weights = [], []
    for s in range(users.shape[0]):
        user = user_emb[users[s]]
        items = item_emb if signal_items is None else signal_items
        _, _, consumed, per_row = sampled_topk_group_stats(user, items, sampled[s], topk, group_ids, group_weights,
                                                           mu.numel(), sigmoid_utility, topk_exposure_weights)
        if topk_exposure_weights:
            bw = (per_row * mu).mean(1)
            total = bw.sum()
            weight = 1 - bw / total if total != 0 else torch.ones_like(bw)
        else:
            mixed = (group_weights[pos[s]].to(mu.dtype) * mu[group_ids[pos[s]]]).sum(1)
            weight = (1 - mixed).clamp(min=s_min)
        weights.append(weight.to(user_emb.dtype))
        share = (consumed / (users.shape[1] * topk)).to(mu.dtype)
        fraction = torch.full((), float(batch_fraction), dtype=mu.dtype, device=mu.device)
        dual_mirror_step(mu, gmom, gamma, share, fraction, rho, mhat, lam, eta, alpha, weighted, remaining)
        losses.append(bpr_adam_step(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg,
                                    item_exp_avg_sq, user_step, item_step, users[s:s + 1], pos[s:s + 1],
                                    neg[s:s + 1], weights[-1].unsqueeze(0), reg_weight, sigmoid_scores, lr, beta1,
                                    beta2, eps, weight_decay))
    return torch.cat(losses), torch.stack(weights)
