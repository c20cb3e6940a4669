// Device helpers shared by the CUDA kernels: launch sizes, fixed-order (deterministic) reductions,
// bounded binary searches and the int64 sort key used by topk_scores.
#pragma once
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace fairlit {
namespace cuda {

constexpr int kThreads = 256;         // threads per block of every kernel
constexpr int64_t kMaxBlocks = 1 << 16;  // grid cap of the grid-stride kernels

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `work` items at `per_block` items per block, capped (kernels loop with a grid stride).
// Callers never launch with work == 0.
inline unsigned int blocks_for(int64_t work, int64_t per_block, int64_t cap = kMaxBlocks) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(cap, ceil_div(work, per_block))));
}

// Threads cooperating on one dot product / row: the smallest power of two >= n, capped at a warp.
inline int lanes_for(int64_t n) {
  int p = 1;
  while (p < 32 && p < n) p <<= 1;
  return p;
}

// Sum over aligned groups of `width` lanes (a power of two <= 32) with a fixed shuffle tree; lane 0 of
// each group gets the total. Every lane of the warp must call it (full mask).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset, width);
  return v;
}

// Column sums of a [TY, TX] block (threadIdx = (tx, ty), TY a power of two) with a fixed shared-memory
// tree over ty; every thread gets its column's total. `smem` holds blockDim.x * blockDim.y values.
template <typename T>
__device__ __forceinline__ T column_tree_sum(T* smem, T v) {
  const int tx = threadIdx.x, ty = threadIdx.y, nx = blockDim.x;
  smem[ty * nx + tx] = v;
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (ty < s) smem[ty * nx + tx] += smem[(ty + s) * nx + tx];
    __syncthreads();
  }
  const T total = smem[tx];
  __syncthreads();  // smem is reused by the next call
  return total;
}

// First position in the non-decreasing a[0, n) with a[pos] >= v (lower) or a[pos] > v (upper). Reads
// stay in [0, n) even when `a` is not sorted (malformed input only gives a meaningless position).
__device__ __forceinline__ int64_t lower_bound(const int64_t* a, int64_t n, int64_t v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ int64_t upper_bound(const int64_t* a, int64_t n, int64_t v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] <= v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ bool sorted_contains(const int64_t* a, int64_t n, int64_t v) {
  const int64_t pos = lower_bound(a, n, v);
  return pos < n && a[pos] == v;
}

// Row of CSR entry e given indptr[0, rows + 1); -1 or `rows` when e lies outside every row.
__device__ __forceinline__ int64_t csr_row_of(const int64_t* indptr, int64_t rows, int64_t e) {
  return upper_bound(indptr, rows + 1, e) - 1;
}

// ---- topk sort key ------------------------------------------------------------------------------
// key(score, id) is an int64 whose ascending order is (score descending, id ascending), exactly, for
// float32 scores (half/bfloat16 scores convert to float32 exactly) and ids in [0, 2^32):
//   ordered = float bits mapped to an unsigned value with the same order as the float (negative: all
//             bits flipped; non-negative: sign bit set); -0 is mapped like +0 so that they tie;
//   key     = ((~ordered) << 32 | id) with the sign bit flipped, so that signed order = unsigned order.
// kExcludedKey (INT64_MAX) is larger than every real key: excluded items sort last.
constexpr int64_t kExcludedKey = INT64_MAX;
constexpr uint64_t kSignBit64 = 0x8000000000000000ull;

__device__ __forceinline__ uint32_t float_to_ordered(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) == 0u) u = 0u;  // -0 -> +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float ordered_to_float(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ int64_t encode_key(float score, int64_t id) {
  const uint64_t inv = static_cast<uint64_t>(~float_to_ordered(score));
  const uint64_t key = (inv << 32) | static_cast<uint64_t>(static_cast<uint32_t>(id));
  return static_cast<int64_t>(key ^ kSignBit64);
}

__device__ __forceinline__ void decode_key(int64_t key, float* score, int64_t* id) {
  const uint64_t u = static_cast<uint64_t>(key) ^ kSignBit64;
  *id = static_cast<int64_t>(u & 0xffffffffull);
  *score = ordered_to_float(~static_cast<uint32_t>(u >> 32));
}

__device__ __forceinline__ float neg_inf_f() { return __uint_as_float(0xff800000u); }
__device__ __forceinline__ double nan_d() { return __longlong_as_double(0x7ff8000000000000ll); }

}  // namespace cuda
}  // namespace fairlit
