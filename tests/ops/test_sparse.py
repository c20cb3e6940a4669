"""csr_matmul / csr_transpose vs a dense oracle and fairlit.ops.reference (torch's sparse CSR)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairlit import ops
from fairlit.ops import reference
from tests.conftest import devices
from tests.ops.helpers import HAS_OP, dtypes, make_values, tol


def random_csr(rows, cols, max_per_row, seed, dtype=torch.float64, device="cpu"):
    """CSR with empty rows, repeated column ids and unsorted columns within a row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_per_row + 1, (rows,), generator=g) if cols else torch.zeros(rows, dtype=torch.long)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    indices = torch.randint(0, max(cols, 1), (int(indptr[-1]),), generator=g)
    values = torch.randn(indices.numel(), generator=g, dtype=torch.float64).to(dtype)
    return indptr.to(device), indices.to(device), values.to(device)


def dense_of(indptr, indices, values, cols):
    """The dense [M, N] matrix, repeated entries summed (float64)."""
    rows = torch.repeat_interleave(torch.arange(indptr.numel() - 1), indptr.diff().cpu())
    out = torch.zeros(indptr.numel() - 1, cols, dtype=torch.float64)
    return out.index_put_((rows, indices.cpu()), values.cpu().double(), accumulate=True)


@pytest.mark.parametrize("device", devices())
@given(m=st.integers(0, 30), n=st.integers(0, 25), d=st.sampled_from([0, 1, 3, 8, 16, 33, 64, 77, 130]),
       per_row=st.integers(0, 12), dtype=dtypes, noncontig=st.booleans(), seed=st.integers(0, 2**16))
def test_csr_matmul_matches_dense_and_reference(device, m, n, d, per_row, dtype, noncontig, seed):
    # d covers the 64/32/16/8-column register blocks of the AVX2 path and their remainders.
    indptr, indices, values = random_csr(m, n, per_row, seed, dtype, device)
    x = make_values((n, d), dtype, noncontig=noncontig, magnitude=1.0, seed=seed + 1, device=device)
    x.requires_grad_()
    out = ops.csr_matmul(indptr, indices, values, x)
    assert out.shape == (m, d) and out.dtype == dtype and out.device == x.device
    dense = dense_of(indptr, indices, values, n)
    want = dense @ x.detach().cpu().double()
    scale = (per_row + 1) ** 0.5
    torch.testing.assert_close(out.cpu().double(), want, **tol(dtype, 4 * scale))
    torch.testing.assert_close(out, reference.csr_matmul(indptr, indices, values, x.detach()), **tol(dtype, 4 * scale))
    if out.numel():
        upstream = torch.randn(m, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        (grad,) = torch.autograd.grad(out, x, upstream.to(dtype).to(device))
        torch.testing.assert_close(grad.cpu().double(), dense.T @ upstream.to(dtype).double(),
                                   **tol(dtype, 4 * (m * per_row + 1) ** 0.5))


@given(m=st.integers(0, 20), n=st.integers(1, 20), per_row=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_csr_transpose_is_the_transpose(m, n, per_row, seed):
    indptr, indices, values = random_csr(m, n, per_row, seed)
    t_indptr, t_indices, t_values = ops.csr_transpose(indptr, indices, values, n)
    assert t_indptr.shape == (n + 1,) and t_indices.numel() == indices.numel()
    torch.testing.assert_close(dense_of(t_indptr, t_indices, t_values, m), dense_of(indptr, indices, values, n).T)


def test_hand_computed_product():
    # A = [[2, 0, 1], [0, 0, 0], [0, 3, 3]] with the (0, 0) entry split in two repeats.
    indptr = torch.tensor([0, 3, 3, 5])
    indices = torch.tensor([0, 2, 0, 1, 2])
    values = torch.tensor([1.5, 1.0, 0.5, 3.0, 3.0])
    x = torch.tensor([[1.0, -1.0], [2.0, 0.0], [4.0, 1.0]])
    assert ops.csr_matmul(indptr, indices, values, x).tolist() == [[6.0, -1.0], [0.0, 0.0], [18.0, 3.0]]


def test_symmetric_matrix_is_its_own_transpose():
    # LightGCN passes Â as its own transpose; the gradient must equal the one from an explicit transpose.
    dense = torch.rand(7, 7, dtype=torch.float64)
    dense = (dense + dense.T) * (torch.rand(7, 7, dtype=torch.float64) > 0.5)
    dense = torch.triu(dense) + torch.triu(dense, 1).T
    rows, cols = dense.nonzero(as_tuple=True)  # row-major order = CSR order
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(rows, minlength=7).cumsum(0)])
    adj = (indptr, cols, dense[rows, cols])
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    (grad_self,) = torch.autograd.grad(ops.csr_matmul(*adj, x, transpose=adj).sum(), x)
    (grad_built,) = torch.autograd.grad(ops.csr_matmul(*adj, x).sum(), x)
    torch.testing.assert_close(grad_self, grad_built)
    torch.testing.assert_close(grad_self, dense.T @ torch.ones(7, 5, dtype=torch.float64))


def test_gradcheck_float64():
    indptr, indices, values = random_csr(6, 5, 4, 3)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.csr_matmul(indptr, indices, values, x), (x,))
    assert torch.autograd.gradgradcheck(lambda x: ops.csr_matmul(indptr, indices, values, x), (x,))


@pytest.mark.skipif(not HAS_OP, reason="opcheck needs the compiled library")
def test_opcheck():
    indptr, indices, values = random_csr(6, 5, 4, 4)
    t = ops.csr_transpose(indptr, indices, values, 5)
    for x in (torch.randn(5, 3, dtype=torch.float64, requires_grad=True), torch.randn(5, 40, requires_grad=True)):
        torch.library.opcheck(torch.ops.fairlit.csr_matmul, (indptr, indices, values.to(x.dtype), x, t[0], t[1],
                                                             t[2].to(x.dtype)))


def test_torch_compile_fullgraph_matches_eager():
    indptr, indices, values = random_csr(8, 6, 5, 5, torch.float32)
    t = ops.csr_transpose(indptr, indices, values, 6)
    x = torch.randn(6, 4, requires_grad=True)

    def fn(x):
        layer = ops.csr_matmul(indptr, indices, values, x, t, validate=False)
        return (layer * layer).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, fn(x))
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(fn(x), x)[0])


IP, IX, V, X = torch.tensor([0, 2, 3]), torch.tensor([0, 2, 1]), torch.ones(3), torch.randn(3, 4)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.csr_matmul(IP, torch.tensor([0, 3, 1]), V, X), ValueError, "`indices` contains column id 3"),
    (lambda: ops.csr_matmul(IP, torch.tensor([0, -1, 1]), V, X), ValueError, "expected ids in \\[0, 3\\)"),
    (lambda: ops.csr_matmul(torch.tensor([0, 3, 2]), IX, V, X), ValueError, "`indptr` must be non-decreasing"),
    (lambda: ops.csr_matmul(torch.tensor([0, 1, 2]), IX, V, X), ValueError, "end at len\\(indices\\) = 3"),
    (lambda: ops.csr_matmul(IP.int(), IX, V, X), TypeError, "`indptr` must be an int64 tensor"),
    (lambda: ops.csr_matmul(IP, IX, V.double(), X), TypeError, "`values` has dtype"),
    (lambda: ops.csr_matmul(IP, IX, V[:2], X), ValueError, "`values` has 2 entries but `indices` has 3"),
    (lambda: ops.csr_matmul(IP, IX, V, X[0]), ValueError, "`x` must be \\[N, D\\]"),
    (lambda: ops.csr_matmul(IP, IX, torch.ones(3, requires_grad=True), X), ValueError, "does not differentiate w.r.t. the matrix"),
    (lambda: ops.csr_matmul(IP, IX, V, X, transpose=(IP, IX, V)), ValueError,
     "`transpose\\[0\\] \\(indptr of Aᵀ\\)` must be \\[N \\+ 1\\] = \\[4\\]"),
    (lambda: ops.csr_matmul(IP, IX, V, X, transpose=IP), ValueError, "`transpose` must be a tuple"),
    (lambda: ops.csr_transpose(torch.tensor([0, 1, 2]), torch.tensor([0, 5]), V[:2], 3), ValueError,
     "`indices` contains column id 5; expected ids in \\[0, 3\\)"),
    (lambda: ops.csr_transpose(torch.tensor([0, 1, 2]), torch.tensor([0, -1]), V[:2], 3), ValueError,
     "`indices` contains column id -1"),
    (lambda: ops.csr_transpose(torch.tensor([0, 1, 1]), IX, V, 3), ValueError, "end at len\\(indices\\) = 3"),
    (lambda: ops.csr_transpose(IP, IX, V[:2], 3), ValueError, "`values` has 2 entries but `indices` has 3"),
    (lambda: ops.csr_transpose(IP, IX, V, -1), ValueError, "`num_cols` must be an int >= 0"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_ids_even_without_validation():
    t = ops.csr_transpose(IP, IX, V, 3)
    with pytest.raises(RuntimeError, match="`indices` contains column 7"):
        ops.csr_matmul(IP, torch.tensor([0, 7, 1]), V, X, t, validate=False)
    with pytest.raises(RuntimeError, match="`indptr` must be non-decreasing"):
        ops.csr_matmul(torch.tensor([0, 3, 2]), IX, V, X, t, validate=False)
