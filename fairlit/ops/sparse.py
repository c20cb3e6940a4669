"""Sparse x dense products: `csr_matmul` (graph propagation, e.g. LightGCN's Â E) and `csr_transpose`.

Kernels: csrc/cpu/sparse.cpp, csrc/cuda/sparse.cu. Each output row sums its entries in CSR order, so
results are deterministic (no atomics). The backward, grad_x = Aᵀ grad, is the same kernel run on the
transpose's CSR, which the caller builds once (`csr_transpose`) or, for a symmetric A, is A itself.
"""
import torch

from . import _validate as check
from . import reference
from ._library import has_op

CSR = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _num_rows(indptr: torch.Tensor) -> int:
    """M of the row pointers `indptr` [M + 1]."""
    if not isinstance(indptr, torch.Tensor) or indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError("`indptr` must be a 1-D tensor [M + 1] with at least one entry")
    return indptr.numel() - 1


def csr_transpose(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, num_cols: int, *,
                  validate: bool = True) -> CSR:
    """The CSR of Aᵀ [N, M] from the CSR of A [M, N].

    Args:
        indptr: [M + 1] int64 row pointers of A, non-decreasing from 0 to nnz.
        indices: [nnz] int64 column ids in [0, num_cols).
        values: [nnz] entries.
        num_cols: N >= 0.
        validate: check pointers and ids (a host sync on CUDA, as the transpose itself has).

    Returns:
        (t_indptr [N + 1], t_indices [nnz] row ids of A, t_values [nnz]); within a row of Aᵀ entries keep
        A's row order (a stable sort by column).
    """
    check.numbers(("num_cols", num_cols, isinstance(num_cols, int) and num_cols >= 0, "an int >= 0"))
    num_rows = _num_rows(indptr)
    check.csr("indptr", indptr, "indices", indices, num_rows, "M + 1", num_cols, "column id", validate)
    if values.shape != indices.shape:
        raise ValueError(f"`values` has {values.numel()} entries but `indices` has {indices.numel()}")
    rows = torch.repeat_interleave(torch.arange(num_rows, device=indptr.device), indptr.diff())
    order = torch.sort(indices, stable=True).indices
    counts = torch.bincount(indices, minlength=num_cols)
    t_indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return t_indptr, rows[order], values[order]


def csr_matmul(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
               transpose: CSR | None = None, *, validate: bool = True) -> torch.Tensor:
    r"""Sparse x dense product :math:`\mathrm{out} = A x` with A [M, N] given in CSR.

    .. math:: \mathrm{out}_{r} = \sum_{e = \mathrm{indptr}_r}^{\mathrm{indptr}_{r+1} - 1}
              \mathrm{values}_e \, x_{\mathrm{indices}_e}

    Args:
        indptr: [M + 1] int64, non-decreasing from 0 to nnz.
        indices: [nnz] int64 column ids in [0, N) (repeats are summed).
        values: [nnz] float, the dtype of `x`; a constant: gradients flow to `x` only.
        x: [N, D] float.
        transpose: the CSR (indptr [N + 1], indices [nnz], values [nnz]) of Aᵀ, used by the backward. Pass
            ``(indptr, indices, values)`` itself for a symmetric A; None builds it with `csr_transpose` on
            every call (a sort of nnz ids), so cache it when A is reused.
        validate: check pointers and ids (a host sync on CUDA). The reference fallback always validates.

    Returns:
        [M, D] in the dtype of `x` (float32 accumulation for half). Differentiable in `x`.
    """
    check.floating("x", x)
    check.ndim("x", x, (2,), "[N, D]")
    check.floating("values", values)
    check.same_dtype(("x", x), ("values", values))
    check.ndim("values", values, (1,), "[nnz]")
    if values.requires_grad:
        raise ValueError("csr_matmul does not differentiate w.r.t. the matrix: pass `values.detach()`")
    rows, cols = _num_rows(indptr), x.shape[0]
    validate = validate or not has_op("csr_matmul", x.device)
    check.csr("indptr", indptr, "indices", indices, rows, "M + 1", cols, "column id", validate)
    if values.shape != indices.shape:
        raise ValueError(f"`values` has {values.numel()} entries but `indices` has {indices.numel()}")
    check.same_device(("x", x), ("indptr", indptr), ("indices", indices), ("values", values))
    if transpose is None:
        transpose = csr_transpose(indptr, indices, values, cols, validate=False)  # A was checked above
    elif not (isinstance(transpose, (tuple, list)) and len(transpose) == 3):
        raise ValueError("`transpose` must be a tuple (indptr, indices, values) of Aᵀ, or None")
    t_indptr, t_indices, t_values = transpose
    check.csr("transpose[0] (indptr of Aᵀ)", t_indptr, "transpose[1] (indices of Aᵀ)", t_indices, cols, "N + 1",
              rows, "row id", validate)
    check.floating("transpose[2] (values of Aᵀ)", t_values)
    check.same_dtype(("x", x), ("transpose[2] (values of Aᵀ)", t_values))
    if t_indices.shape != indices.shape or t_values.shape != indices.shape:
        raise ValueError(f"the transpose has {t_indices.numel()} entries but A has {indices.numel()}")
    if t_values.requires_grad:
        raise ValueError("csr_matmul does not differentiate w.r.t. the matrix: pass detached transpose values")
    check.same_device(("x", x), ("transpose[0]", t_indptr), ("transpose[1]", t_indices), ("transpose[2]", t_values))
    if has_op("csr_matmul", x.device):
        return torch.ops.fairlit.csr_matmul(indptr, indices, values, x, t_indptr, t_indices, t_values)
    return reference.csr_matmul(indptr, indices, values, x, transpose)


def _register() -> None:
    @torch.library.register_fake("fairlit::csr_matmul")
    def _(indptr, indices, values, x, t_indptr, t_indices, t_values):
        return x.new_empty((indptr.shape[0] - 1, x.shape[1]))

    def setup(ctx, inputs, output):
        indptr, indices, values, _, t_indptr, t_indices, t_values = inputs
        ctx.save_for_backward(indptr, indices, values, t_indptr, t_indices, t_values)

    def backward(ctx, grad):
        indptr, indices, values, t_indptr, t_indices, t_values = ctx.saved_tensors
        grad_x = torch.ops.fairlit.csr_matmul(t_indptr, t_indices, t_values, grad, indptr, indices, values)
        return None, None, None, grad_x, None, None, None

    torch.library.register_autograd("fairlit::csr_matmul", backward, setup_context=setup)


if has_op("csr_matmul"):
    _register()
