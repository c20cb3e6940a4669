"""Exact projection onto FairDual's dual feasible set M (spec §2.5): the training loop's entry point to the
fused op `fairlit.ops.dual_projection`.

``M = {μ : Σ_{g∈S} m̂_g μ_g ≥ −λ  ∀ S ⊆ G} = {μ : Σ_g m̂_g min(μ_g, 0) ≥ −λ}``: the smallest subset sum is
taken by S = {g : μ_g < 0}, so M caps the weighted negative part of μ by λ and never touches entries ≥ 0.
Projecting onto it is a (weighted) ℓ1-ball projection of that negative part, O(G log G) by one sort and
one cumsum (Duchi et al., ICML 2008). This replaces the per-step cvxpy solve of the FairDiverse code.
"""
from torch import Tensor

from fairlit.ops.projection import METRICS, dual_projection

__all__ = ["METRICS", "project_dual"]


def project_dual(mu: Tensor, mhat: Tensor, lam: float | Tensor, metric: str = "weighted") -> Tensor:
    r"""Project dual variables onto ``M = {μ : Σ_g m̂_g min(μ_g, 0) ≥ −λ}`` (spec §2.5, paper Eq. 8).

    * ``"weighted"`` (the FairDiverse / P-MMF metric, spec §2.5a): :math:`\min_{x∈M} \|\hat m ⊙ (x − μ)\|^2`.
      With v = m̂⊙μ and b = relu(−v): :math:`v' = -\mathrm{relu}(b − θ)` where v < 0, v elsewhere, and θ ≥ 0
      solves :math:`Σ_g \mathrm{relu}(b_g − θ) = λ` (or θ = 0 if feasible); x = v'/m̂.
    * ``"euclid"`` (Alg. 1 line 14 as written, spec §2.5b): :math:`\min_{x∈M} \|x − μ\|^2`. With
      b = relu(−μ): :math:`x_g = −\mathrm{relu}(b_g − θ \hat m_g)` where μ < 0, and θ ≥ 0 solves
      :math:`Σ_g \hat m_g \mathrm{relu}(b_g − θ\hat m_g) = λ`.

    Runs `fairlit.ops.dual_projection` with ``validate=False``: no host sync (values are not checked).

    Args:
        mu: [..., G] dual point μ̃ (float).
        mhat: [G] positive group weights m̂ (cast to the dtype and device of ``mu``).
        lam: λ ≥ 0, a float or a tensor broadcastable to ``mu.shape[:-1]`` (one radius per row; cast like mhat).
        metric: ``"weighted"`` or ``"euclid"``; they coincide when m̂ ≡ 1.

    Returns:
        [..., G] projection, same dtype as ``mu``.
    """
    if isinstance(lam, Tensor):
        lam = lam.to(device=mu.device, dtype=mu.dtype)
    return dual_projection(mu, mhat.to(device=mu.device, dtype=mu.dtype), lam, metric, validate=False)
