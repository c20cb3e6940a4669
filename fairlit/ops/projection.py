"""FairDual's projection onto its dual feasible set, `dual_projection` (spec fairdual §2.5 / §7 K3), and its
whole dual update around it, `dual_mirror_step` (§2.3).

Kernels: csrc/cpu/projection.cpp, csrc/cuda/projection.cu. One fused pass per row (sort the negative
entries, prefix sums, active count, shift θ) replaces the ~15 small torch ops of the reference. Rows are
independent: a row's result does not depend on the batch, the thread count or the run.
"""
import torch

from . import _validate as check
from . import reference
from ._library import has_op

METRICS = ("weighted", "euclid")
TARGETS = ("remaining", "constant")


def _check_values(mu: torch.Tensor, mhat: torch.Tensor, lam: torch.Tensor | None) -> None:
    # Reads the data: a host sync on CUDA (skipped with validate=False and while torch.compile traces).
    if torch.compiler.is_compiling():
        return
    check.finite("mu", mu)
    if not bool((mhat > 0).all()):
        raise ValueError(f"`mhat` must be > 0 (and not NaN), got min {mhat.min().item()!r}")
    if lam is not None and lam.numel() and not bool((lam >= 0).all()):
        raise ValueError("`lam` must be >= 0 and not NaN, got " + ("NaN" if bool(torch.isnan(lam).any())
                                                                   else f"min {lam.min().item()!r}"))


def _lam_rows(lam: float | torch.Tensor, mu: torch.Tensor, rows: int) -> torch.Tensor:
    """λ as an [R] tensor in the dtype and on the device of `mu`."""
    batch = tuple(mu.shape[:-1])
    if isinstance(lam, torch.Tensor):
        check.floating("lam", lam)
        check.same_dtype(("mu", mu), ("lam", lam))
        check.same_device(("mu", mu), ("lam", lam))
        try:
            return lam.expand(batch).reshape(rows)
        except RuntimeError:
            raise ValueError(f"`lam` must be a float or a tensor broadcastable to mu.shape[:-1] = {batch}, "
                             f"got shape {tuple(lam.shape)}") from None
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"`lam` must be a float or a tensor, got {type(lam).__name__}")
    if not lam >= 0:  # also rejects NaN; a Python number costs no sync, so this check always runs
        raise ValueError(f"`lam` must be >= 0 and not NaN, got {lam!r}")
    return torch.full((rows,), float(lam), dtype=mu.dtype, device=mu.device)


def dual_projection(mu: torch.Tensor, mhat: torch.Tensor, lam: float | torch.Tensor, metric: str = "weighted", *,
                    validate: bool = True) -> torch.Tensor:
    r"""Project dual points onto FairDual's set :math:`M = \{x : \sum_g \hat m_g \min(x_g, 0) \ge -λ\}`.

    M is the paper's :math:`\{x : \sum_{g∈S} \hat m_g x_g \ge -λ\ \forall S\}` (Eq. 8; the smallest subset
    sum takes the negative entries), so entries ≥ 0 are never changed and the projection is a (weighted)
    ℓ1-ball projection of the negative part, O(G log G) per row (spec fairdual §2.5):

    * ``"weighted"`` (FairDiverse / P-MMF metric): :math:`\min_{x∈M} \|\hat m ⊙ (x − μ)\|^2`. With v = m̂⊙μ and
      b = relu(−v): :math:`x_g = -\mathrm{relu}(b_g − θ)/\hat m_g` where v_g < 0, μ_g elsewhere, and θ ≥ 0
      solves :math:`\sum_g \mathrm{relu}(b_g − θ) = λ` (θ = 0 when μ ∈ M).
    * ``"euclid"`` (Alg. 1 line 14 as written): :math:`\min_{x∈M} \|x − μ\|^2`. With b = relu(−μ):
      :math:`x_g = -\mathrm{relu}(b_g − θ\hat m_g)` where μ_g < 0, and θ ≥ 0 solves
      :math:`\sum_g \hat m_g\, \mathrm{relu}(b_g − θ \hat m_g) = λ`.

    The metrics coincide when m̂ ≡ 1. No data-dependent branch runs on the host (no sync unless `validate`).

    Args:
        mu: [..., G] dual points μ̃ (float; float16/bfloat16 are computed in float32 and rounded back).
        mhat: [G] group weights m̂ > 0, the dtype of `mu`. A constant: no gradient flows to it.
        lam: radius λ ≥ 0, a float or a tensor (dtype of `mu`) broadcastable to ``mu.shape[:-1]``.
        metric: ``"weighted"`` or ``"euclid"``.
        validate: check values (NaN in `mu`, m̂ > 0, λ ≥ 0; a host sync on CUDA). Shapes, dtypes, devices
            and a float `lam` are always checked.

    Returns:
        [..., G] projection, dtype of `mu`. Differentiable in `mu` and a tensor `lam` (piecewise linear: the
        gradient is exact away from the kinks where an entry enters or leaves the active set).
    """
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
    check.floating("mu", mu)
    if mu.dim() < 1 or mu.shape[-1] == 0:
        raise ValueError(f"`mu` must be [..., G] with G >= 1, got shape {tuple(mu.shape)}")
    check.floating("mhat", mhat)
    check.same_dtype(("mu", mu), ("mhat", mhat))
    check.same_device(("mu", mu), ("mhat", mhat))
    groups = mu.shape[-1]
    if mhat.shape != (groups,):
        raise ValueError(f"`mhat` must be [G] with G = {groups} (mu.shape[-1]), got shape {tuple(mhat.shape)}")
    if mhat.requires_grad:
        raise ValueError("dual_projection does not differentiate w.r.t. `mhat`: pass `mhat.detach()`")
    mu_rows = mu if mu.dim() == 2 else mu.reshape(-1, groups)  # views cost ~1 µs each on CPU: skip for [R, G]
    lam_rows = _lam_rows(lam, mu, mu_rows.shape[0])
    if validate:  # a float `lam` was checked by _lam_rows
        _check_values(mu, mhat, lam_rows if isinstance(lam, torch.Tensor) else None)
    if has_op("dual_projection", mu.device):
        out = torch.ops.fairlit.dual_projection(mu_rows, mhat, lam_rows, metric == "weighted")
    else:
        out = reference.dual_projection(mu_rows, mhat, lam_rows, metric == "weighted")
    return out if mu.dim() == 2 else out.reshape(mu.shape)


def check_dual_state(mu: torch.Tensor, named: tuple[tuple[str, torch.Tensor], ...], lam: float, eta: float,
                     alpha: float, metric: str, target: str, validate: bool) -> None:
    """Arguments of FairDual's dual update: `metric`/`target` names, λ ≥ 0, η > 0, α ∈ (0, 1], μ a [G] float32/64
    tensor and every ``(name, tensor)`` of `named` (which holds ``mhat`` and ``rho``) [G] like it, one dtype and
    device; with `validate` finite μ, m̂ > 0, finite ρ, d >= 0 and finite others (a host sync on CUDA)."""
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}")
    check.numbers(("lam", lam, lam >= 0, ">= 0"), ("eta", eta, eta > 0, "> 0"),
                  ("alpha", alpha, 0 < alpha <= 1, "in (0, 1]"))
    check.floating("mu", mu)
    if mu.dtype not in (torch.float32, torch.float64) or mu.dim() != 1:
        raise ValueError(f"`mu` must be a [G] float32 or float64 tensor, got {mu.dtype} {tuple(mu.shape)}")
    for name, t in named:
        check.floating(name, t)
        if t.shape != mu.shape:
            raise ValueError(f"`{name}` must be [G] like `mu` {tuple(mu.shape)}, got {tuple(t.shape)}")
    check.same_dtype(("mu", mu), *named)
    check.same_device(("mu", mu), *named)
    if validate:
        _check_values(mu, dict(named)["mhat"], None)  # finite μ, m̂ > 0
        for name, t in named:
            if name in ("rho", "share"):
                check.non_negative(name, t)
            elif name != "mhat":
                check.finite(name, t)


def dual_mirror_step(mu: torch.Tensor, gmom: torch.Tensor, gamma: torch.Tensor, share: torch.Tensor,
                     batch_fraction: float | torch.Tensor, rho: torch.Tensor, mhat: torch.Tensor, lam: float,
                     eta: float, alpha: float, metric: str = "weighted", target: str = "remaining", *,
                     validate: bool = True) -> torch.Tensor:
    r"""FairDual's dual update after a batch, in place on its state (spec fairdual §2.3, Alg. 1 lines 12–14,
    Eq. 8–9; the budget is charged before the gradient, as in the code, spec §9 #4):

    .. math::
        γ ← γ − f\,d, \quad \tilde g = −d + γ, \quad g ← α\tilde g + (1−α) g, \quad
        μ ← \mathrm{Proj}_M\big(μ − η\, g / \hat m^2\big)

    with ``target="constant"`` :math:`\tilde g = −d + ρ` (γ untouched) and ``metric="euclid"`` the step
    :math:`−η g` and the Euclidean projection (`dual_projection`). One call replaces the ~10 small torch ops of
    this update and the projection call: two kernels, no host sync.

    Args:
        mu: [G] duals μ (float32 or float64, contiguous), updated in place.
        gmom: [G] momentum g, updated in place.
        gamma: [G] remaining budget γ, updated in place (only read with ``target="remaining"``).
        share: [G] d >= 0, the batch's per-slot group share D / (B·K).
        batch_fraction: f = B / N in [0, 1], the batch's share of an epoch: a float or a one-element tensor (no
            sync).
        rho: [G] budget shares ρ >= 0 (the constant target).
        mhat: [G] weights m̂ > 0 of M and of the mirror metric.
        lam: λ ≥ 0, radius of M.
        eta: η > 0, dual step size.
        alpha: α ∈ (0, 1], weight of the new gradient in the momentum.
        metric: ``"weighted"`` or ``"euclid"``.
        target: ``"remaining"`` or ``"constant"``.
        validate: check values (m̂ > 0, finite ρ, d >= 0, f in [0, 1], finite μ, g, γ; a host sync on CUDA). Shapes,
            dtypes, devices and the Python numbers are always checked.

    Returns:
        `mu` (updated). No derivative: under grad mode with state that requires grad it raises.
    """
    check_dual_state(mu, (("gmom", gmom), ("gamma", gamma), ("share", share), ("rho", rho), ("mhat", mhat)), lam,
                     eta, alpha, metric, target, validate)
    if not isinstance(batch_fraction, torch.Tensor):
        check.numbers(("batch_fraction", batch_fraction, 0 <= batch_fraction <= 1, "in [0, 1]"))
        batch_fraction = torch.full((), float(batch_fraction), dtype=mu.dtype, device=mu.device)  # no H2D copy
    check.floating("batch_fraction", batch_fraction)
    if batch_fraction.numel() != 1:
        raise ValueError(f"`batch_fraction` must be a float or one element, got shape {tuple(batch_fraction.shape)}")
    check.same_dtype(("mu", mu), ("batch_fraction", batch_fraction))
    check.same_device(("mu", mu), ("batch_fraction", batch_fraction))
    if validate:
        check.unit_interval("batch_fraction", batch_fraction)
    args = (mu, gmom, gamma, share, batch_fraction, rho, mhat, float(lam), float(eta), float(alpha),
            metric == "weighted", target == "remaining")
    with torch.no_grad():
        if has_op("dual_mirror_step", mu.device):
            torch.ops.fairlit.dual_mirror_step(*args)
        else:
            reference.dual_mirror_step(*args)
    return mu


def _register() -> None:
    # Fake (meta) kernels let torch.compile trace the ops without running them.
    @torch.library.register_fake("fairlit::dual_projection")
    def _(mu, mhat, lam, weighted):
        return mu.new_empty(mu.shape)

    @torch.library.register_fake("fairlit::dual_projection_backward")
    def _(grad, mu, mhat, lam, weighted):
        return mu.new_empty(mu.shape), lam.new_empty(lam.shape)

    @torch.library.register_fake("fairlit::dual_mirror_step")  # updates its state in place (schema), returns ()
    def _(mu, gmom, gamma, share, batch_fraction, rho, mhat, lam, eta, alpha, weighted, remaining):
        return None

    # The autograd formula is registered in C++ (csrc/autograd.cpp: FairDual projects every step, and a Python
    # formula costs more than the kernel). The projection is piecewise linear. Holding the active set fixed,
    # kept entries (μ_g ≥ 0 or θ = 0) pass the gradient through, clipped entries get 0, and active ones
    # x_g = μ_g + θ/m̂_g (weighted) resp. μ_g + θ m̂_g (euclid) with θ = (Σ_active b − λ) / den; hence
    # dθ/dμ_j = −m̂_j / den, dθ/dλ = −1 / den (dual_projection_backward).


if has_op("dual_projection"):
    _register()
