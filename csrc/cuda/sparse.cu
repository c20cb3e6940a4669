// CUDA kernel of the sparse family: csr_matmul (out = A @ x, A [M, N] in CSR, x [N, D]).
//
// Parallel plan: one warp per output row (grid stride over rows); lane l owns columns l, l + 32, ...
// in passes of kColsPerLane * 32 columns, and adds the row's entries in CSR order into registers (opmath
// accumulation). Each output element is written by exactly one thread after a fixed-order sum, so the
// result is deterministic, with no atomics and no host sync. Row spans are clamped to [0, nnz] and column
// ids outside [0, N) are skipped, so malformed input (validate=False) cannot read out of bounds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../checks.h"
#include "utils.cuh"

namespace fairlit {
namespace {

using cuda::kThreads;

constexpr int kWarp = 32;
constexpr int kColsPerLane = 4;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) csr_matmul_kernel(const int64_t* __restrict__ indptr,
                                                              const int64_t* __restrict__ indices,
                                                              const scalar_t* __restrict__ values,
                                                              const scalar_t* __restrict__ x, int64_t rows,
                                                              int64_t cols, int64_t dim, int64_t nnz,
                                                              scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t stride = int64_t(gridDim.x) * warps_per_block;
  for (int64_t r = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / kWarp; r < rows; r += stride) {
    const int64_t begin = min(max(indptr[r], int64_t(0)), nnz);
    const int64_t end = min(max(indptr[r + 1], begin), nnz);
    for (int64_t c0 = 0; c0 < dim; c0 += kWarp * kColsPerLane) {
      acc_t acc[kColsPerLane];
#pragma unroll
      for (int j = 0; j < kColsPerLane; ++j) acc[j] = acc_t(0);
      for (int64_t e = begin; e < end; ++e) {
        const int64_t c = indices[e];
        if (c < 0 || c >= cols) continue;  // out of range: never dereferenced
        const acc_t v = static_cast<acc_t>(values[e]);
        const scalar_t* xr = x + c * dim;
#pragma unroll
        for (int j = 0; j < kColsPerLane; ++j) {
          const int64_t d = c0 + lane + j * kWarp;
          if (d < dim) acc[j] += v * static_cast<acc_t>(xr[d]);
        }
      }
#pragma unroll
      for (int j = 0; j < kColsPerLane; ++j) {
        const int64_t d = c0 + lane + j * kWarp;
        if (d < dim) out[r * dim + d] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

at::Tensor csr_matmul_cuda(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                           const at::Tensor& x, const at::Tensor& t_indptr, const at::Tensor& t_indices,
                           const at::Tensor& t_values) {
  check_csr_matmul_inputs(indptr, indices, values, x, t_indptr, t_indices, t_values);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor ip = indptr.contiguous(), ix = indices.contiguous(), v = values.contiguous(), xs = x.contiguous();
  const int64_t rows = ip.size(0) - 1, cols = xs.size(0), dim = xs.size(1), nnz = ix.size(0);
  at::Tensor out = at::empty({rows, dim}, xs.options());
  if (rows == 0 || dim == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs.scalar_type(), "fairlit_csr_matmul_cuda", [&] {
    csr_matmul_kernel<scalar_t><<<cuda::blocks_for(rows, kThreads / kWarp), kThreads, 0,
                                  c10::cuda::getCurrentCUDAStream()>>>(
        ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(), v.data_ptr<scalar_t>(), xs.data_ptr<scalar_t>(), rows, cols,
        dim, nnz, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CUDA, m) {
  m.impl("csr_matmul", &csr_matmul_cuda);
}

}  // namespace fairlit
