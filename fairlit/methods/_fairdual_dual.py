"""FairDual's dual-step constants and its momentum mirror-descent step (spec §2.3 lines 11–14), as a function.

Kept apart from the LightningModule so that tests and the Jensen-gap simulation (spec §8) run the exact
update the training loop runs.
"""
from dataclasses import dataclass

from torch import Tensor

from fairlit.ops import dual_mirror_step


@dataclass(frozen=True)
class DualConfig:
    """Constants of the dual step.

    Attributes:
        lam: λ ≥ 0, radius of M (accuracy-fairness trade-off).
        eta: η > 0, dual step size.
        alpha: α ∈ (0, 1], weight of the new gradient in the momentum.
        metric: ``"weighted"`` (mirror metric ½‖m̂⊙μ‖², step −η g/m̂²) or ``"euclid"`` (step −η g).
        target: ``"remaining"`` (Alg. 1: g̃ = −d + γ, γ the remaining budget) or ``"constant"`` (g̃ = −d + ρ).
    """

    lam: float
    eta: float
    alpha: float
    metric: str = "weighted"
    target: str = "remaining"


def dual_step(mu: Tensor, gmom: Tensor, gamma: Tensor, consumed: Tensor, batch_fraction: Tensor | float,
              rho: Tensor, mhat: Tensor, cfg: DualConfig) -> Tensor:
    r"""One dual update, in place on ``mu``, ``gmom`` and ``gamma``; returns ``mu``.

    .. math::
        γ ← γ − \tfrac{B}{N} d, \quad \tilde g = −d + γ, \quad g ← α\tilde g + (1−α) g, \quad
        μ ← \mathrm{Proj}_M\big(μ − η\, g / \hat m^2\big)

    (Alg. 1 lines 12–14 / Eq. 8–9, budget subtracted before the gradient as in the code, spec §9 #4), computed
    by `fairlit.ops.dual_mirror_step` (one call; no value checks, no host sync).

    Args:
        mu: [G] current duals (updated).
        gmom: [G] momentum buffer (in place).
        gamma: [G] remaining budget (in place; untouched for ``target="constant"``).
        consumed: [G] d, this batch's per-slot group share D / (B·K).
        batch_fraction: B / N, the batch's share of the epoch (global counts).
        rho: [G] budget shares ρ (the constant target).
        mhat: [G] weights m̂ of M and of the mirror metric.
        cfg: step constants.

    Returns:
        ``mu``, projected.
    """
    return dual_mirror_step(mu, gmom, gamma, consumed, batch_fraction, rho, mhat, cfg.lam, cfg.eta, cfg.alpha,
                            cfg.metric, cfg.target, validate=False)
