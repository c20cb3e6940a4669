// CUDA kernels of the soft_sort family: neuralsort and soft_rank_gain (+ their backward ops).
//
// Math as in csrc/cpu/soft_sort.cpp: P[r] = softmax((alpha_r x - a) / tau), x = s - midrange(s),
// a_j = sum_i |s_j - s_i| from one sort plus prefix sums (fade.md §2.5, §2.7, §7 K1).
//
// Parallel plan: one row per thread group. A group is a warp (N <= kWarpMaxN; kWarpRows rows per block,
// synchronised with __syncwarp) or the whole block (up to 1024 threads). Per row the group
//   1. sorts (value, index) pairs with a bitonic sort in shared memory,
//   2. scans the sorted values (chunked block scan) and gets a_j by binary search of s_j's tie run [lo, hi),
//   3. per requested row r: max and sum-exp reductions (plus P.gains for soft_rank_gain), then P or
//      (lse_r, dots_r). The backward recomputes P[r] from (x, a, lse) and scans the sorted gradient once.
// Tiled path: when the row's buffers exceed shared memory (N of roughly 8k+ in fp32), the same kernels run
// on a global-memory workspace, with the sort done beforehand by a segmented at::sort.
// Kernel choice (group size, fused or tiled) depends only on (N, dtype, device), so the forward and the
// backward recompute bitwise identical `a` and the saved lse stays consistent.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../checks.h"

namespace fairlit {
namespace {

constexpr int kWarpMaxN = 64;
constexpr int kWarpRows = 8;
constexpr int kMaxThreads = 1024;  // also the kernels' __launch_bounds__: caps registers at 64 per thread
constexpr unsigned kFullMask = 0xffffffffu;

// ---- group primitives --------------------------------------------------------------------------------

template <typename T>
struct MaxOp {
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
template <typename T>
struct SumOp {
  __device__ T operator()(T a, T b) const { return a + b; }
};

template <typename T, typename Op>
__device__ T warp_reduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

template <typename T>
__device__ T warp_exclusive_scan(T v) {
  const int lane = threadIdx.x & 31;
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += y;
  }
  const T excl = __shfl_up_sync(kFullMask, v, 1);
  return lane == 0 ? T(0) : excl;
}

// The threads that own one row: a warp (kWarp) or the whole block. `red` is 32 elements of block scratch.
template <bool kWarp>
struct Group {
  __device__ static int rank() { return kWarp ? int(threadIdx.x & 31) : int(threadIdx.x); }
  __device__ static int size() { return kWarp ? 32 : int(blockDim.x); }
  __device__ static void sync() {
    if constexpr (kWarp) {
      __syncwarp();
    } else {
      __syncthreads();
    }
  }

  // Every thread of the group gets the reduction.
  template <typename T, typename Op>
  __device__ static T reduce(T v, Op op, T identity, T* red) {
    v = warp_reduce(v, op);
    if constexpr (!kWarp) {
      const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
      __syncthreads();  // a previous reduction may still be reading `red`
      if (lane == 0) red[warp] = v;
      __syncthreads();
      v = warp_reduce(lane < int(blockDim.x >> 5) ? red[lane] : identity, op);
    }
    return v;
  }

  // out[i] = sum_{q < i} f(q) for i in [0, n]; each thread sums one contiguous chunk, so the order of the
  // additions is a function of (n, group size) only. The caller syncs before reading `out`.
  template <typename T, typename F>
  __device__ static void exclusive_scan(F f, int n, T* out, T* red) {
    const int chunk = (n + size() - 1) / size();
    const int begin = min(n, rank() * chunk), end = min(n, begin + chunk);
    T local = 0;
    for (int i = begin; i < end; ++i) local += f(i);
    T excl = warp_exclusive_scan(local);
    if constexpr (!kWarp) {
      const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
      __syncthreads();
      if (lane == 31) red[warp] = excl + local;
      __syncthreads();
      if (warp == 0) {
        const T total = lane < warps ? red[lane] : T(0);
        const T offset = warp_exclusive_scan(total);
        if (lane < warps) red[lane] = offset;
      }
      __syncthreads();
      excl += red[warp];
    }
    if (rank() == size() - 1) out[n] = excl + local;
    for (int i = begin; i < end; ++i) {
      out[i] = excl;
      excl += f(i);
    }
  }
};

// Ascending bitonic sort of (key, idx) pairs, p2 a power of two (padding keys are +inf).
template <bool kWarp, typename T, typename I>
__device__ void bitonic_sort(T* key, I* idx, int p2) {
  for (int width = 2; width <= p2; width <<= 1) {
    for (int stride = width >> 1; stride > 0; stride >>= 1) {
      for (int i = Group<kWarp>::rank(); i < p2; i += Group<kWarp>::size()) {
        const int j = i ^ stride;
        if (j > i) {
          const bool ascending = (i & width) == 0;
          const T ki = key[i], kj = key[j];
          if (ki != kj && (ki > kj) == ascending) {
            key[i] = kj;
            key[j] = ki;
            const I t = idx[i];
            idx[i] = idx[j];
            idx[j] = t;
          }
        }
      }
      Group<kWarp>::sync();
    }
  }
}

template <typename T>
__device__ int lower_bound(const T* v, int n, T x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (v[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

template <typename T>
__device__ int upper_bound(const T* v, int n, T x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (v[mid] <= x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// ---- per-row buffers -------------------------------------------------------------------------------

// key/idx: the sorted row; x: shifted scores; a: abs row sums; c: n + 1 prefix sums. Fused: one shared
// memory slot per row. Tiled: slices of a global workspace, key/idx already sorted by at::sort.
template <typename acc_t, typename idx_t>
struct RowBuffers {
  acc_t* key;
  idx_t* idx;
  acc_t* x;
  acc_t* a;
  acc_t* c;
};

template <typename acc_t>
struct Workspace {
  acc_t* key = nullptr;      // [B, N] sorted values (tiled only)
  int64_t* idx = nullptr;    // [B, N] their columns (tiled only)
  acc_t* scratch = nullptr;  // [B, 3N + 1] x, a, c (tiled only)
};

__host__ __device__ inline size_t round16(size_t b) { return (b + 15) / 16 * 16; }

template <typename acc_t>
__host__ __device__ inline size_t slot_bytes(int n, int p2) {
  return round16(sizeof(acc_t) * (size_t(p2) + 3 * size_t(n) + 1) + sizeof(int) * size_t(p2));
}

template <typename acc_t, bool kWarp, bool kTiled>
struct Row {
  using idx_t = std::conditional_t<kTiled, int64_t, int>;
  int64_t row;
  acc_t* red;
  RowBuffers<acc_t, idx_t> buf;

  __device__ Row(unsigned char* smem, const Workspace<acc_t>& ws, int n, int p2) {
    red = reinterpret_cast<acc_t*>(smem);
    const int slot = kWarp ? int(threadIdx.x >> 5) : 0;
    row = kWarp ? int64_t(blockIdx.x) * kWarpRows + slot : int64_t(blockIdx.x);
    if constexpr (kTiled) {
      buf.key = ws.key + row * n;
      buf.idx = ws.idx + row * n;
      buf.x = ws.scratch + row * (3 * int64_t(n) + 1);
    } else {
      unsigned char* base = smem + round16(32 * sizeof(acc_t)) + slot * slot_bytes<acc_t>(n, p2);
      buf.key = reinterpret_cast<acc_t*>(base);
      buf.x = buf.key + p2;
      buf.idx = reinterpret_cast<idx_t*>(buf.x + 3 * n + 1);
    }
    buf.a = buf.x + n;
    buf.c = buf.a + n;
  }

  // Sorts the row (fused), fills x and a, and returns the shift (midrange). Ends synchronised.
  template <typename scalar_t>
  __device__ acc_t setup(const scalar_t* s, int n, int p2) {
    using G = Group<kWarp>;
    if constexpr (!kTiled) {
      for (int i = G::rank(); i < p2; i += G::size()) {
        buf.key[i] = i < n ? static_cast<acc_t>(s[i]) : std::numeric_limits<acc_t>::infinity();
        buf.idx[i] = i;
      }
      G::sync();
      bitonic_sort<kWarp>(buf.key, buf.idx, p2);
    }
    const acc_t* key = buf.key;
    const acc_t centre = key[0] / 2 + key[n - 1] / 2;
    G::exclusive_scan([&](int q) { return key[q] - centre; }, n, buf.c, red);
    G::sync();
    const acc_t* c = buf.c;
    for (int j = G::rank(); j < n; j += G::size()) {
      const acc_t v = static_cast<acc_t>(s[j]);
      const int lo = lower_bound(key, n, v), hi = upper_bound(key, n, v);
      const acc_t xc = v - centre;
      buf.x[j] = xc;
      buf.a[j] = xc * acc_t(lo) - c[lo] + (c[n] - c[hi]) - acc_t(n - hi) * xc;
    }
    G::sync();
    return centre;
  }

  // grad_s_j = u_j - sum_i h_i d a_i / d s_j, with h in x[] and u in a[] (both in column order).
  template <typename scalar_t>
  __device__ void finish_grad_scores(const scalar_t* s, int n, scalar_t* grad_s) {
    using G = Group<kWarp>;
    const acc_t* h = buf.x;
    const idx_t* idx = buf.idx;
    G::sync();
    G::exclusive_scan([&](int q) { return h[idx[q]]; }, n, buf.c, red);
    G::sync();
    const acc_t* c = buf.c;
    for (int j = G::rank(); j < n; j += G::size()) {
      const acc_t v = static_cast<acc_t>(s[j]);
      const int lo = lower_bound(buf.key, n, v), hi = upper_bound(buf.key, n, v);
      const acc_t vjp = h[j] * acc_t(lo - (n - hi)) - ((c[n] - c[hi]) - c[lo]);
      grad_s[j] = static_cast<scalar_t>(buf.a[j] - vjp);
    }
  }
};

// ---- kernels ---------------------------------------------------------------------------------------

// kGain: out [B] = sum_r disc_r P[r].gains, saving lse/dots [B, k]; else out = P [B, k, N].
template <typename scalar_t, typename acc_t, bool kWarp, bool kTiled, bool kGain>
__global__ void __launch_bounds__(kMaxThreads)
    soft_sort_forward_kernel(const scalar_t* scores, const scalar_t* gains, const acc_t* disc, scalar_t* out,
                             acc_t* lse, acc_t* dots, Workspace<acc_t> ws, int64_t rows, int n, int k, int p2,
                             acc_t inv_tau) {
  extern __shared__ __align__(16) unsigned char smem[];
  using G = Group<kWarp>;
  Row<acc_t, kWarp, kTiled> row(smem, ws, n, p2);
  if (row.row >= rows) return;  // only a whole warp of the last block (warp groups sync per warp)
  const scalar_t* s = scores + row.row * n;
  row.setup(s, n, p2);
  const acc_t* x = row.buf.x;
  const acc_t* a = row.buf.a;
  const scalar_t* g = kGain ? gains + row.row * n : nullptr;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  acc_t total = 0;
  for (int r = 0; r < k; ++r) {
    const acc_t alpha = acc_t(n - 1 - 2 * r);
    acc_t m = -inf;
    for (int j = G::rank(); j < n; j += G::size()) m = max(m, (alpha * x[j] - a[j]) * inv_tau);
    m = G::reduce(m, MaxOp<acc_t>(), -inf, row.red);
    acc_t sum = 0, dot = 0;
    for (int j = G::rank(); j < n; j += G::size()) {
      const acc_t e = ::exp((alpha * x[j] - a[j]) * inv_tau - m);
      sum += e;
      if constexpr (kGain) dot += e * static_cast<acc_t>(g[j]);
    }
    sum = G::reduce(sum, SumOp<acc_t>(), acc_t(0), row.red);
    if constexpr (kGain) {
      dot = G::reduce(dot, SumOp<acc_t>(), acc_t(0), row.red);
      total += disc[r] * (dot / sum);
      if (G::rank() == 0) {
        lse[row.row * k + r] = m + ::log(sum);
        dots[row.row * k + r] = dot / sum;
      }
    } else {
      const acc_t inv_sum = acc_t(1) / sum;
      scalar_t* o = out + (row.row * k + r) * n;
      for (int j = G::rank(); j < n; j += G::size()) {
        o[j] = static_cast<scalar_t>(::exp((alpha * x[j] - a[j]) * inv_tau - m) * inv_sum);
      }
    }
  }
  if constexpr (kGain) {
    if (G::rank() == 0) out[row.row] = static_cast<scalar_t>(total);
  }
}

// fade.md §2.7: g_z[r] = P[r] (g_P[r] - g_P[r].P[r]) / tau; h = sum_r g_z[r] and u = sum_r alpha_r g_z[r]
// accumulate in x[] and a[] (each column stays with one thread), then grad_s = u - vjp_a(h).
template <typename scalar_t, typename acc_t, bool kWarp, bool kTiled>
__global__ void __launch_bounds__(kMaxThreads)
    neuralsort_backward_kernel(const scalar_t* grad, const scalar_t* P, const scalar_t* scores, scalar_t* grad_scores,
                               Workspace<acc_t> ws, int64_t rows, int n, int k, int p2, acc_t inv_tau) {
  extern __shared__ __align__(16) unsigned char smem[];
  using G = Group<kWarp>;
  Row<acc_t, kWarp, kTiled> row(smem, ws, n, p2);
  if (row.row >= rows) return;
  const scalar_t* s = scores + row.row * n;
  row.setup(s, n, p2);
  acc_t* h = row.buf.x;
  acc_t* u = row.buf.a;
  for (int j = G::rank(); j < n; j += G::size()) h[j] = u[j] = 0;
  for (int r = 0; r < k; ++r) {
    const scalar_t* pr = P + (row.row * k + r) * n;
    const scalar_t* gr = grad + (row.row * k + r) * n;
    acc_t d = 0;
    for (int j = G::rank(); j < n; j += G::size()) d += static_cast<acc_t>(gr[j]) * static_cast<acc_t>(pr[j]);
    d = G::reduce(d, SumOp<acc_t>(), acc_t(0), row.red);
    const acc_t alpha = acc_t(n - 1 - 2 * r);
    for (int j = G::rank(); j < n; j += G::size()) {
      const acc_t gz = static_cast<acc_t>(pr[j]) * (static_cast<acc_t>(gr[j]) - d) * inv_tau;
      h[j] += gz;
      u[j] += alpha * gz;
    }
  }
  row.finish_grad_scores(s, n, grad_scores + row.row * n);
}

// Rows recomputed from (x, a, lse): p_rj = exp(z_rj - lse_r); with w_r = grad * disc_r,
// g_z[r] = w_r p_r (gains - dots_r) / tau and d out / d gains = sum_r w_r p_r. No reductions: each thread
// walks all k rows for its own columns.
template <typename scalar_t, typename acc_t, bool kWarp, bool kTiled>
__global__ void __launch_bounds__(kMaxThreads)
    soft_rank_gain_backward_kernel(const acc_t* grad, const scalar_t* scores, const scalar_t* gains, const acc_t* disc,
                                   const acc_t* lse, const acc_t* dots, scalar_t* grad_scores, scalar_t* grad_gains,
                                   Workspace<acc_t> ws, int64_t rows, int n, int k, int p2, acc_t inv_tau) {
  extern __shared__ __align__(16) unsigned char smem[];
  using G = Group<kWarp>;
  Row<acc_t, kWarp, kTiled> row(smem, ws, n, p2);
  if (row.row >= rows) return;
  const scalar_t* s = scores + row.row * n;
  row.setup(s, n, p2);
  const acc_t gb = grad[row.row];
  const acc_t* ls = lse + row.row * k;
  const acc_t* ds = dots + row.row * k;
  for (int j = G::rank(); j < n; j += G::size()) {
    const acc_t xj = row.buf.x[j], aj = row.buf.a[j];
    const acc_t gj = static_cast<acc_t>(gains[row.row * n + j]);
    acc_t h = 0, u = 0, gg = 0;
    for (int r = 0; r < k; ++r) {
      const acc_t alpha = acc_t(n - 1 - 2 * r);
      const acc_t w = gb * disc[r];
      const acc_t p = ::exp((alpha * xj - aj) * inv_tau - ls[r]);
      const acc_t gz = w * p * (gj - ds[r]) * inv_tau;
      h += gz;
      u += alpha * gz;
      gg += w * p;
    }
    grad_gains[row.row * n + j] = static_cast<scalar_t>(gg);
    row.buf.x[j] = h;  // this thread owns column j: x_j/a_j are dead once read
    row.buf.a[j] = u;
  }
  row.finish_grad_scores(s, n, grad_scores + row.row * n);
}

// ---- launch ----------------------------------------------------------------------------------------

int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

struct Plan {
  bool warp = false;
  bool tiled = false;
  int threads = 0;
  int p2 = 1;
  unsigned blocks = 0;
  size_t smem = 0;
};

template <typename acc_t>
Plan make_plan(int64_t rows, int n) {
  Plan plan;
  plan.p2 = next_pow2(n);
  const size_t red = round16(32 * sizeof(acc_t));
  // One block per row (kWarpRows for small N) and gridDim.x <= 2^31 - 1: e.g. 2^34 rows of N = 1 fit in memory.
  const int64_t grid = n <= kWarpMaxN ? (rows + kWarpRows - 1) / kWarpRows : rows;
  TORCH_CHECK(grid <= std::numeric_limits<int>::max(), "fairlit: soft_sort on CUDA supports at most ",
              int64_t(std::numeric_limits<int>::max()) * (n <= kWarpMaxN ? kWarpRows : 1), " rows for N = ", n,
              ", got ", rows);
  if (n <= kWarpMaxN) {
    plan.warp = true;
    plan.threads = 32 * kWarpRows;
    plan.blocks = static_cast<unsigned>(grid);
    plan.smem = red + kWarpRows * slot_bytes<acc_t>(n, plan.p2);
    return plan;
  }
  plan.threads = std::min(kMaxThreads, std::max(64, plan.p2 / 2));
  plan.blocks = static_cast<unsigned>(grid);
  plan.smem = red + slot_bytes<acc_t>(n, plan.p2);
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (plan.smem > static_cast<size_t>(limit)) {
    plan.tiled = true;
    plan.threads = kMaxThreads;
    plan.smem = red;
  }
  return plan;
}

// Sorted rows and scratch for the tiled path; kept alive by the caller until the kernel is queued.
template <typename acc_t>
struct TiledWorkspace {
  at::Tensor key, idx, scratch;
  Workspace<acc_t> view;

  TiledWorkspace(const Plan& plan, const at::Tensor& s) {
    if (!plan.tiled) return;
    auto sorted = at::sort(s.to(c10::CppTypeToScalarType<acc_t>::value), -1);
    key = std::get<0>(sorted).contiguous();
    idx = std::get<1>(sorted).contiguous();
    scratch = at::empty({s.size(0), 3 * s.size(1) + 1}, key.options());
    view = {key.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), scratch.data_ptr<acc_t>()};
  }
};

// Calls launch(kernel_selector) with the kernel instantiation that matches the plan.
template <template <bool, bool> class K, typename... Args>
void launch(const Plan& plan, Args... args) {
  if (plan.blocks == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto go = [&](auto kernel) {
    if (plan.smem > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(plan.smem)));
    }
    kernel<<<plan.blocks, plan.threads, plan.smem, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (plan.warp) {
    go(K<true, false>::kernel);
  } else if (plan.tiled) {
    go(K<false, true>::kernel);
  } else {
    go(K<false, false>::kernel);
  }
}

template <typename scalar_t, typename acc_t, bool kGain>
struct ForwardK {
  template <bool kWarp, bool kTiled>
  struct K {
    static constexpr auto kernel = soft_sort_forward_kernel<scalar_t, acc_t, kWarp, kTiled, kGain>;
  };
};

template <typename scalar_t, typename acc_t>
struct NeuralsortBackwardK {
  template <bool kWarp, bool kTiled>
  struct K {
    static constexpr auto kernel = neuralsort_backward_kernel<scalar_t, acc_t, kWarp, kTiled>;
  };
};

template <typename scalar_t, typename acc_t>
struct GainBackwardK {
  template <bool kWarp, bool kTiled>
  struct K {
    static constexpr auto kernel = soft_rank_gain_backward_kernel<scalar_t, acc_t, kWarp, kTiled>;
  };
};

at::Tensor neuralsort_cuda(const at::Tensor& scores, double tau, int64_t k) {
  check_scores(scores, tau, k);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor s = scores.contiguous();
  const int64_t rows = s.size(0);
  const int n = static_cast<int>(s.size(1));
  at::Tensor out = at::empty({rows, k, n}, s.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_neuralsort_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plan plan = make_plan<acc_t>(rows, n);
    const TiledWorkspace<acc_t> ws(plan, s);
    launch<ForwardK<scalar_t, acc_t, false>::template K>(
        plan, s.data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr), static_cast<const acc_t*>(nullptr),
        out.data_ptr<scalar_t>(), static_cast<acc_t*>(nullptr), static_cast<acc_t*>(nullptr), ws.view, rows, n,
        static_cast<int>(k), plan.p2, static_cast<acc_t>(1.0 / tau));
  });
  return out;
}

at::Tensor neuralsort_backward_cuda(const at::Tensor& grad, const at::Tensor& P, const at::Tensor& scores,
                                    double tau) {
  check_neuralsort_backward_inputs(grad, P, scores, tau);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor s = scores.contiguous(), p = P.contiguous(), g = grad.contiguous();
  const int64_t rows = s.size(0);
  const int n = static_cast<int>(s.size(1));
  at::Tensor grad_scores = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_neuralsort_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plan plan = make_plan<acc_t>(rows, n);
    const TiledWorkspace<acc_t> ws(plan, s);
    launch<NeuralsortBackwardK<scalar_t, acc_t>::template K>(
        plan, g.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
        grad_scores.data_ptr<scalar_t>(), ws.view, rows, n, static_cast<int>(p.size(1)), plan.p2,
        static_cast<acc_t>(1.0 / tau));
  });
  return grad_scores;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_rank_gain_cuda(const at::Tensor& scores, const at::Tensor& gains,
                                                                   double tau, int64_t k,
                                                                   const at::Tensor& discounts) {
  check_scores(scores, tau, k);
  check_gain_inputs(scores, gains, k, discounts);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor s = scores.contiguous(), gn = gains.contiguous();
  const int64_t rows = s.size(0);
  const int n = static_cast<int>(s.size(1));
  const at::ScalarType acc_type = loss_dtype(s.scalar_type());
  const at::Tensor disc = discounts.to(acc_type).contiguous();
  at::Tensor out = at::empty({rows}, s.options());
  at::Tensor lse = at::empty({rows, k}, s.options().dtype(acc_type));
  at::Tensor dots = at::empty({rows, k}, s.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_soft_rank_gain_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plan plan = make_plan<acc_t>(rows, n);
    const TiledWorkspace<acc_t> ws(plan, s);
    launch<ForwardK<scalar_t, acc_t, true>::template K>(
        plan, s.data_ptr<scalar_t>(), static_cast<const scalar_t*>(gn.data_ptr<scalar_t>()),
        static_cast<const acc_t*>(disc.data_ptr<acc_t>()), out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(),
        dots.data_ptr<acc_t>(), ws.view, rows, n, static_cast<int>(k), plan.p2, static_cast<acc_t>(1.0 / tau));
  });
  return {out, lse, dots};
}

std::tuple<at::Tensor, at::Tensor> soft_rank_gain_backward_cuda(const at::Tensor& grad, const at::Tensor& scores,
                                                                const at::Tensor& gains, double tau, int64_t k,
                                                                const at::Tensor& discounts, const at::Tensor& lse,
                                                                const at::Tensor& dots) {
  check_soft_rank_gain_backward_inputs(grad, scores, gains, tau, k, discounts, lse, dots);
  const int64_t rows = scores.size(0);
  const int n = static_cast<int>(scores.size(1));
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::ScalarType acc_type = loss_dtype(scores.scalar_type());
  const at::Tensor s = scores.contiguous(), gn = gains.contiguous();
  const at::Tensor disc = discounts.to(acc_type).contiguous(), go = grad.to(acc_type).contiguous();
  const at::Tensor ls = lse.to(acc_type).contiguous(), dt = dots.to(acc_type).contiguous();
  at::Tensor grad_scores = at::empty_like(s), grad_gains = at::empty_like(gn);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_soft_rank_gain_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plan plan = make_plan<acc_t>(rows, n);
    const TiledWorkspace<acc_t> ws(plan, s);
    launch<GainBackwardK<scalar_t, acc_t>::template K>(
        plan, static_cast<const acc_t*>(go.data_ptr<acc_t>()), static_cast<const scalar_t*>(s.data_ptr<scalar_t>()),
        static_cast<const scalar_t*>(gn.data_ptr<scalar_t>()), static_cast<const acc_t*>(disc.data_ptr<acc_t>()),
        static_cast<const acc_t*>(ls.data_ptr<acc_t>()), static_cast<const acc_t*>(dt.data_ptr<acc_t>()),
        grad_scores.data_ptr<scalar_t>(), grad_gains.data_ptr<scalar_t>(), ws.view, rows, n, static_cast<int>(k),
        plan.p2, static_cast<acc_t>(1.0 / tau));
  });
  return {grad_scores, grad_gains};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CUDA, m) {
  m.impl("neuralsort", &neuralsort_cuda);
  m.impl("neuralsort_backward", &neuralsort_backward_cuda);
  m.impl("soft_rank_gain", &soft_rank_gain_cuda);
  m.impl("soft_rank_gain_backward", &soft_rank_gain_backward_cuda);
}

}  // namespace fairlit
