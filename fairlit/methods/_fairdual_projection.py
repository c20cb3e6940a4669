"""Exact projection onto FairDual's dual feasible set M (spec §2.5), sync-free and batched.

``M = {μ : Σ_{g∈S} m̂_g μ_g ≥ −λ  ∀ S ⊆ G} = {μ : Σ_g m̂_g min(μ_g, 0) ≥ −λ}``: the smallest subset sum is
taken by S = {g : μ_g < 0}, so M caps the weighted negative part of μ by λ and never touches entries ≥ 0.
Projecting onto it is a (weighted) ℓ1-ball projection of that negative part, O(G log G) by one sort and
one cumsum (Duchi et al., ICML 2008). This replaces the per-step cvxpy solve of the FairDiverse code.
"""
import torch
from torch import Tensor

METRICS = ("weighted", "euclid")


def _last_true(cond: Tensor) -> Tensor:
    """Largest 1-based position r with ``cond[..., r-1]`` true, 0 if none; [..., G] bool -> [..., 1] long."""
    k = torch.arange(1, cond.shape[-1] + 1, device=cond.device)
    return (cond * k).amax(-1, keepdim=True)


def _theta(sorted_key: Tensor, num: Tensor, den: Tensor, lam: Tensor) -> Tensor:
    """Shift θ ≥ 0 of the ℓ1-ball projection from sorted keys and prefix sums (all [..., G]).

    θ_r = (num_r − λ) / den_r is the shift that makes the top-r entries meet the budget with equality; the
    active set is the largest r whose θ_r stays below the r-th key. r = 0 only when λ = 0; then θ = the
    largest key zeroes everything. θ < 0 means the input is already feasible: clamp to 0 (identity).
    """
    thetas = (num - lam) / den
    r = _last_true(thetas < sorted_key)
    theta = torch.where(r > 0, thetas.gather(-1, (r - 1).clamp(min=0)), sorted_key[..., :1])
    return theta.clamp(min=0)


def project_dual(mu: Tensor, mhat: Tensor, lam: float | Tensor, metric: str = "weighted") -> Tensor:
    r"""Project dual variables onto ``M = {μ : Σ_g m̂_g min(μ_g, 0) ≥ −λ}`` (spec §2.5, paper Eq. 8).

    * ``"weighted"`` (the FairDiverse / P-MMF metric, spec §2.5a): :math:`\min_{x∈M} \|\hat m ⊙ (x − μ)\|^2`.
      With v = m̂⊙μ and b = relu(−v): :math:`v' = -\mathrm{relu}(b − θ)` where v < 0, v elsewhere, and θ ≥ 0
      solves :math:`Σ_g \mathrm{relu}(b_g − θ) = λ` (or θ = 0 if feasible); x = v'/m̂.
    * ``"euclid"`` (Alg. 1 line 14 as written, spec §2.5b): :math:`\min_{x∈M} \|x − μ\|^2`. With
      b = relu(−μ): :math:`x_g = −\mathrm{relu}(b_g − θ \hat m_g)` where μ < 0, and θ ≥ 0 solves
      :math:`Σ_g \hat m_g \mathrm{relu}(b_g − θ\hat m_g) = λ`.

    No data-dependent Python branch: the result is computed with ``torch.where`` on device (no host sync).

    Args:
        mu: [..., G] dual point μ̃ (float).
        mhat: [G] positive group weights m̂ (broadcast against ``mu``).
        lam: λ ≥ 0, a float or a tensor broadcastable to [..., 1] (one radius per row).
        metric: ``"weighted"`` or ``"euclid"``; they coincide when m̂ ≡ 1.

    Returns:
        [..., G] projection, same dtype as ``mu``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    lam = torch.as_tensor(lam, dtype=mu.dtype, device=mu.device)
    lam = lam.unsqueeze(-1) if lam.dim() > 0 else lam
    mhat = mhat.to(mu.dtype).expand_as(mu)
    if metric == "weighted":
        v = mhat * mu
        b = torch.relu(-v)
        sorted_b = b.sort(dim=-1, descending=True).values
        k = torch.arange(1, mu.shape[-1] + 1, device=mu.device, dtype=mu.dtype)
        theta = _theta(sorted_b, sorted_b.cumsum(-1), k, lam)
        return torch.where(v < 0, -torch.relu(b - theta) / mhat, mu)  # mu, not v/m̂: exact on entries >= 0
    b = torch.relu(-mu)
    ratio = b / mhat
    order = ratio.argsort(dim=-1, descending=True)
    theta = _theta(ratio.gather(-1, order), (mhat * b).gather(-1, order).cumsum(-1),
                   (mhat * mhat).gather(-1, order).cumsum(-1), lam)
    return torch.where(mu < 0, -torch.relu(b - theta * mhat), mu)
