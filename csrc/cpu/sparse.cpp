// CPU kernel of the sparse family: csr_matmul (out = A @ x, A [M, N] in CSR, x [N, D]).
//
// Parallel over output rows; each row sums its entries in CSR order into an opmath accumulator row, so
// the result is deterministic and independent of the thread count, with no atomics. Row spans and column
// ids are checked as they are read (a clear error instead of an out-of-bounds read).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "../checks.h"

namespace fairlit {
namespace {

// Checks row r's span and column ids; returns the span.
inline std::pair<int64_t, int64_t> checked_row(const int64_t* indptr, const int64_t* indices, int64_t r, int64_t cols,
                                               int64_t nnz) {
  const int64_t begin = indptr[r], end = indptr[r + 1];
  TORCH_CHECK(0 <= begin && begin <= end && end <= nnz, "fairlit: `indptr` must be non-decreasing within [0, nnz = ",
              nnz, "]; row ", r, " spans [", begin, ", ", end, ")");
  for (int64_t e = begin; e < end; ++e) {
    TORCH_CHECK(indices[e] >= 0 && indices[e] < cols, "fairlit: `indices` contains column ", indices[e],
                "; expected ids in [0, ", cols, ") (the rows of x)");
  }
  return {begin, end};
}

// Rows [r0, r1) of out = A @ x, each summed in CSR order into an opmath accumulator row `acc` [dim].
template <typename scalar_t>
void csr_rows(const int64_t* indptr, const int64_t* indices, const scalar_t* values, const scalar_t* x, int64_t r0,
              int64_t r1, int64_t cols, int64_t dim, int64_t nnz, at::opmath_type<scalar_t>* acc, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = r0; r < r1; ++r) {
    const auto [begin, end] = checked_row(indptr, indices, r, cols, nnz);
    std::fill(acc, acc + dim, acc_t(0));
    for (int64_t e = begin; e < end; ++e) {
      const acc_t v = static_cast<acc_t>(values[e]);
      const scalar_t* xr = x + indices[e] * dim;
      for (int64_t d = 0; d < dim; ++d) acc[d] += v * static_cast<acc_t>(xr[d]);
    }
    for (int64_t d = 0; d < dim; ++d) out[r * dim + d] = static_cast<scalar_t>(acc[d]);
  }
}

// float32 on x86-64 with AVX2 + FMA (checked at run time; the extension is otherwise built for baseline
// SSE2), the hot case of LightGCN propagation: each block of 64, 32, 16 or 8 columns keeps its 8, 4, 2 or 1
// accumulators in ymm registers for the whole row, so a row's sum never round-trips through memory; the
// last dim % 8 columns use the scalar loop. Per column the summation order is CSR order, as in csr_rows.
#if defined(__x86_64__) && defined(__GNUC__)
#define FAIRLIT_AVX2 1

bool cpu_has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

template <int kRegs>
__attribute__((target("avx2,fma"), always_inline)) inline void avx2_columns(int64_t begin, int64_t end,
                                                                           const int64_t* indices, const float* values,
                                                                           const float* x, int64_t dim, int64_t c0,
                                                                           float* o) {
  __m256 acc[kRegs];
#pragma GCC unroll 8
  for (int j = 0; j < kRegs; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t e = begin; e < end; ++e) {
    const __m256 v = _mm256_set1_ps(values[e]);
    const float* xr = x + indices[e] * dim + c0;
#pragma GCC unroll 8
    for (int j = 0; j < kRegs; ++j) acc[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xr + 8 * j), acc[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < kRegs; ++j) _mm256_storeu_ps(o + c0 + 8 * j, acc[j]);
}

__attribute__((target("avx2,fma"))) void csr_rows_float_avx2(const int64_t* indptr, const int64_t* indices,
                                                             const float* values, const float* x, int64_t r0,
                                                             int64_t r1, int64_t cols, int64_t dim, int64_t nnz,
                                                             float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const auto [begin, end] = checked_row(indptr, indices, r, cols, nnz);
    float* o = out + r * dim;
    int64_t c0 = 0;
    for (; c0 + 64 <= dim; c0 += 64) avx2_columns<8>(begin, end, indices, values, x, dim, c0, o);
    for (; c0 + 32 <= dim; c0 += 32) avx2_columns<4>(begin, end, indices, values, x, dim, c0, o);
    for (; c0 + 16 <= dim; c0 += 16) avx2_columns<2>(begin, end, indices, values, x, dim, c0, o);
    for (; c0 + 8 <= dim; c0 += 8) avx2_columns<1>(begin, end, indices, values, x, dim, c0, o);
    for (; c0 < dim; ++c0) {
      float acc = 0;
      for (int64_t e = begin; e < end; ++e) acc += values[e] * x[indices[e] * dim + c0];
      o[c0] = acc;
    }
  }
}
#endif

template <typename scalar_t>
void csr_matmul_rows(const int64_t* indptr, const int64_t* indices, const scalar_t* values, const scalar_t* x,
                     int64_t rows, int64_t cols, int64_t dim, int64_t nnz, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  // ~64k multiply-adds per task on average, at least one row.
  const int64_t per_row = std::max<int64_t>(1, nnz / std::max<int64_t>(rows, 1) * dim);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / per_row);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
#ifdef FAIRLIT_AVX2
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (cpu_has_avx2_fma()) {
        csr_rows_float_avx2(indptr, indices, values, x, r0, r1, cols, dim, nnz, out);
        return;
      }
    }
#endif
    std::vector<acc_t> acc(static_cast<size_t>(dim));
    csr_rows<scalar_t>(indptr, indices, values, x, r0, r1, cols, dim, nnz, acc.data(), out);
  });
}

at::Tensor csr_matmul_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                          const at::Tensor& x, const at::Tensor& t_indptr, const at::Tensor& t_indices,
                          const at::Tensor& t_values) {
  check_csr_matmul_inputs(indptr, indices, values, x, t_indptr, t_indices, t_values);
  const at::Tensor ip = indptr.contiguous(), ix = indices.contiguous(), v = values.contiguous(), xs = x.contiguous();
  const int64_t rows = ip.size(0) - 1, cols = xs.size(0), dim = xs.size(1), nnz = ix.size(0);
  at::Tensor out = at::empty({rows, dim}, xs.options());
  if (rows == 0 || dim == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs.scalar_type(), "fairlit_csr_matmul_cpu", [&] {
    csr_matmul_rows<scalar_t>(ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(), v.data_ptr<scalar_t>(),
                              xs.data_ptr<scalar_t>(), rows, cols, dim, nnz, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CPU, m) {
  m.impl("csr_matmul", &csr_matmul_cpu);
}

}  // namespace fairlit
