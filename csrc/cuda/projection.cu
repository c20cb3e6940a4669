// CUDA kernels of the projection family: dual_projection (+ backward), FairDual's projection of each row of
// mu [R, G] onto M_r = {x : sum_g mhat_g min(x_g, 0) >= -lam_r} (spec fairdual §2.5), and dual_mirror_step
// (FairDual's momentum mirror step on its [G] state, then that projection). The math (keys,
// prefix sums, active count r, theta, gradients) is the one of csrc/cpu/projection.cpp.
//
// Parallel plan: one block per row (rows loop with a grid stride). No float atomics: the result depends on
// the data only and is bitwise reproducible run to run.
//  * G <= kMaxFused (1024): one fused kernel, P = max(32, next power of two >= G) threads, entry g on thread g.
//    The entries v_g < 0 are sorted in shared memory by a bitonic network (key descending, id ascending; the
//    other entries and the padding sort last), a Hillis-Steele scan in double gives the prefix sums, an
//    integer atomicMax over positions finds r, and every thread computes theta and writes its outputs
//    (forward) or gradients (backward; dL/dtheta by a fixed shared-memory tree).
//  * G > kMaxFused: the sort and the prefix sums are ATen ops on the [R, G] keys (at::sort, at::cumsum in
//    double; no host sync), non-negative entries keyed -inf so they sort last and never satisfy the
//    condition; a second kernel (kRowThreads per row, striding over G) runs the same device functions.
// mhat > 0 is not checked on the device (that would need a host sync; the wrapper's `validate` does it);
// any mhat, lam or NaN still gives only in-bounds reads and writes (every index comes from a sort of 0..G-1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <climits>

#include "../checks.h"
#include "utils.cuh"

namespace fairlit {
namespace {

constexpr int kMaxFused = 1024;   // largest G of the fused kernel (one thread per entry)
constexpr int kRowThreads = 256;  // threads per row of the kernel for G > kMaxFused (a power of two)

template <typename acc_t>
struct RowTheta {
  acc_t theta;  // max(raw, 0)
  acc_t raw;    // theta_r, or the largest key when r = 0; its gradient flows only when raw >= 0
  acc_t den;    // den_r: r (weighted) or the prefix sum of mhat^2 (euclid)
  int r;        // active count
};

template <typename acc_t, bool kWeighted>
__device__ __forceinline__ bool is_negative(acc_t x, acc_t m) {
  return kWeighted ? (m * x < acc_t(0)) : (x < acc_t(0));
}

// Output entry: weighted -relu(b - theta) / mhat, euclid -relu(b - theta * mhat) where v < 0, else mu.
template <typename acc_t, bool kWeighted>
__device__ __forceinline__ acc_t project_entry(acc_t x, acc_t m, acc_t theta) {
  if (!is_negative<acc_t, kWeighted>(x, m)) return x;
  const acc_t d = kWeighted ? (-(m * x) - theta) : (-x - theta * m);
  const acc_t kept = d > acc_t(0) ? d : acc_t(0);
  return kWeighted ? -kept / m : -kept;
}

// d out / d mu holding theta fixed (1 kept or active, 0 clipped); adds grad * d out / d theta to dtheta.
template <typename acc_t, bool kWeighted>
__device__ __forceinline__ acc_t direct_grad(acc_t x, acc_t m, acc_t theta, acc_t grad, double& dtheta) {
  if (!is_negative<acc_t, kWeighted>(x, m)) return grad;
  const acc_t d = kWeighted ? (-(m * x) - theta) : (-x - theta * m);
  if (!(d > acc_t(0))) return acc_t(0);
  dtheta += static_cast<double>(kWeighted ? grad / m : grad * m);
  return grad;
}

// Descending key, NaN first, then ascending id; ids >= P mark entries outside the sort (they go last).
template <typename acc_t>
__device__ __forceinline__ bool sorts_before(acc_t ka, int ia, acc_t kb, int ib, int P) {
  const bool pa = ia < P, pb = ib < P;
  if (pa != pb) return pa;
  if (ka > kb) return true;
  if (kb > ka) return false;
  const bool na = ka != ka, nb = kb != kb;
  if (na != nb) return na;
  return ia < ib;
}

// Bitonic sort of key[0, P), id[0, P) with P = blockDim.x (a power of two) threads; a total order, so the
// result is unique. Starts and ends with a barrier.
template <typename acc_t>
__device__ void bitonic_sort(acc_t* key, int* id) {
  const int P = blockDim.x, t = threadIdx.x;
  __syncthreads();
  for (int k = 2; k <= P; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      const int o = t ^ j;
      if (o > t) {
        const bool ascending = (t & k) == 0;
        const acc_t kt = key[t], ko = key[o];
        const int it = id[t], io = id[o];
        if (sorts_before(ko, io, kt, it, P) == ascending) {
          key[t] = ko;
          key[o] = kt;
          id[t] = io;
          id[o] = it;
        }
      }
      __syncthreads();
    }
  }
}

// Inclusive Hillis-Steele scan of a[0, blockDim.x) (and b unless nullptr; block-uniform).
__device__ void inclusive_scan(double* a, double* b) {
  const int t = threadIdx.x;
  __syncthreads();
  for (int off = 1; off < static_cast<int>(blockDim.x); off <<= 1) {
    const double va = t >= off ? a[t - off] : 0.0;
    const double vb = (b != nullptr && t >= off) ? b[t - off] : 0.0;
    __syncthreads();
    a[t] += va;
    if (b != nullptr) b[t] += vb;
    __syncthreads();
  }
}

// Sum over the block (blockDim.x a power of two) with a fixed tree; every thread gets the total.
__device__ double block_sum(double v, double* red) {
  const int t = threadIdx.x;
  __syncthreads();  // `red` may alias memory other threads are still reading
  red[t] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  const double total = red[0];
  __syncthreads();
  return total;
}

// r = last position p < n with theta_p = (pnum_p - lam) / den_p < skey_p, then theta; every thread gets it.
template <typename acc_t, bool kWeighted>
__device__ RowTheta<acc_t> find_theta(const acc_t* skey, const double* pnum, const double* pden, int64_t n,
                                      acc_t lam, int* r_smem) {
  if (threadIdx.x == 0) *r_smem = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
    const acc_t den = kWeighted ? static_cast<acc_t>(p + 1) : static_cast<acc_t>(pden[p]);
    const acc_t theta_p = (static_cast<acc_t>(pnum[p]) - lam) / den;
    if (theta_p < skey[p]) atomicMax(r_smem, static_cast<int>(p + 1));
  }
  __syncthreads();
  RowTheta<acc_t> s;
  s.r = *r_smem;
  if (s.r > 0) {
    s.den = kWeighted ? static_cast<acc_t>(s.r) : static_cast<acc_t>(pden[s.r - 1]);
    s.raw = (static_cast<acc_t>(pnum[s.r - 1]) - lam) / s.den;
  } else {
    s.den = acc_t(0);
    s.raw = n > 0 ? skey[0] : acc_t(0);
  }
  s.theta = s.raw < acc_t(0) ? acc_t(0) : s.raw;
  return s;
}

template <typename scalar_t, typename acc_t, bool kWeighted>
__device__ void write_projection(const scalar_t* x, const scalar_t* mhat, int64_t groups, acc_t theta,
                                 scalar_t* out) {
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
    out[g] = static_cast<scalar_t>(project_entry<acc_t, kWeighted>(static_cast<acc_t>(x[g]),
                                                                   static_cast<acc_t>(mhat[g]), theta));
  }
}

// grad_mu = direct term + (d theta / d mu) dL/dtheta; d theta / d mu_j = -mhat_j / den over the r active
// entries order[0, r) (r = 0: theta is the largest key, order[0]); grad_lam = -dL/dtheta / den. `red` holds
// blockDim.x doubles. Positions are read only where p < r <= the row's sorted length.
template <typename scalar_t, typename acc_t, bool kWeighted, typename index_t>
__device__ void write_gradients(const scalar_t* x, const scalar_t* mhat, const scalar_t* grad, int64_t groups,
                                const RowTheta<acc_t>& s, const index_t* order, bool has_top, double* red,
                                scalar_t* grad_mu, scalar_t* grad_lam) {
  double partial = 0;
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
    grad_mu[g] = static_cast<scalar_t>(direct_grad<acc_t, kWeighted>(
        static_cast<acc_t>(x[g]), static_cast<acc_t>(mhat[g]), s.theta, static_cast<acc_t>(grad[g]), partial));
  }
  const acc_t dtheta = static_cast<acc_t>(block_sum(partial, red));  // also orders the writes above
  acc_t glam = 0;
  if (!(s.raw < acc_t(0)) && has_top) {
    if (s.r > 0) {
      const acc_t c = dtheta / s.den;
      glam = -c;
      for (int64_t p = threadIdx.x; p < s.r; p += blockDim.x) {
        const int64_t j = order[p];
        const acc_t xj = static_cast<acc_t>(x[j]), mj = static_cast<acc_t>(mhat[j]);
        if (!is_negative<acc_t, kWeighted>(xj, mj)) continue;
        double unused = 0;
        const acc_t d = direct_grad<acc_t, kWeighted>(xj, mj, s.theta, static_cast<acc_t>(grad[j]), unused);
        grad_mu[j] = static_cast<scalar_t>(d - c * mj);
      }
    } else if (threadIdx.x == 0) {
      const int64_t j = order[0];
      const acc_t xj = static_cast<acc_t>(x[j]), mj = static_cast<acc_t>(mhat[j]);
      if (is_negative<acc_t, kWeighted>(xj, mj)) {
        double unused = 0;
        const acc_t d = direct_grad<acc_t, kWeighted>(xj, mj, s.theta, static_cast<acc_t>(grad[j]), unused);
        grad_mu[j] = static_cast<scalar_t>(d + dtheta * (kWeighted ? -mj : acc_t(-1) / mj));
      }
    }
  }
  if (threadIdx.x == 0) *grad_lam = static_cast<scalar_t>(glam);
}

// G <= kMaxFused. Dynamic shared memory: pnum, pden [P] double, key [P] acc_t, id [P] int.
template <typename scalar_t, typename acc_t, bool kWeighted, bool kBackward>
__global__ void __launch_bounds__(kMaxFused) fused_kernel(
    const scalar_t* __restrict__ mu, const scalar_t* __restrict__ mhat, const scalar_t* __restrict__ lam,
    const scalar_t* __restrict__ grad, int64_t rows, int groups, scalar_t* __restrict__ out,
    scalar_t* __restrict__ grad_lam) {
  extern __shared__ double smem[];
  __shared__ int r_smem;
  const int P = blockDim.x, t = threadIdx.x;
  double* pnum = smem;
  double* pden = smem + P;
  acc_t* skey = reinterpret_cast<acc_t*>(smem + 2 * P);
  int* sid = reinterpret_cast<int*>(skey + P);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // block-uniform
    const scalar_t* x = mu + row * groups;
    acc_t key = -static_cast<acc_t>(INFINITY);
    int id = P + t;  // outside the sort
    if (t < groups) {
      const acc_t xt = static_cast<acc_t>(x[t]), mt = static_cast<acc_t>(mhat[t]);
      if (is_negative<acc_t, kWeighted>(xt, mt)) {
        key = kWeighted ? -(mt * xt) : -xt / mt;
        id = t;
      }
    }
    skey[t] = key;
    sid[t] = id;
    const int n = __syncthreads_count(id < P);
    bitonic_sort(skey, sid);
    double a = 0, d = 0;
    if (t < n) {
      if (kWeighted) {
        a = static_cast<double>(skey[t]);
      } else {
        const int j = sid[t];
        const acc_t mj = static_cast<acc_t>(mhat[j]);
        a = static_cast<double>(mj * -static_cast<acc_t>(x[j]));
        d = static_cast<double>(mj * mj);
      }
    }
    pnum[t] = a;
    pden[t] = d;
    inclusive_scan(pnum, kWeighted ? nullptr : pden);
    const RowTheta<acc_t> s =
        find_theta<acc_t, kWeighted>(skey, pnum, pden, n, static_cast<acc_t>(lam[row]), &r_smem);
    if constexpr (kBackward) {
      write_gradients<scalar_t, acc_t, kWeighted>(x, mhat, grad + row * groups, groups, s, sid, n > 0, pnum,
                                                  out + row * groups, grad_lam + row);
    } else {
      write_projection<scalar_t, acc_t, kWeighted>(x, mhat, groups, s.theta, out + row * groups);
    }
    __syncthreads();  // shared memory is rewritten by the next row
  }
}

// G > kMaxFused: rows already sorted by ATen (skey/order [R, G], prefix sums pnum/pden [R, G] double).
template <typename scalar_t, typename acc_t, bool kWeighted, bool kBackward>
__global__ void __launch_bounds__(kRowThreads) sorted_rows_kernel(
    const scalar_t* __restrict__ mu, const scalar_t* __restrict__ mhat, const scalar_t* __restrict__ lam,
    const scalar_t* __restrict__ grad, const acc_t* __restrict__ skey, const int64_t* __restrict__ order,
    const double* __restrict__ pnum, const double* __restrict__ pden, int64_t rows, int64_t groups,
    scalar_t* __restrict__ out, scalar_t* __restrict__ grad_lam) {
  __shared__ double red[kRowThreads];
  __shared__ int r_smem;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // block-uniform
    const int64_t base = row * groups;
    const RowTheta<acc_t> s = find_theta<acc_t, kWeighted>(skey + base, pnum + base,
                                                           kWeighted ? nullptr : pden + base, groups,
                                                           static_cast<acc_t>(lam[row]), &r_smem);
    if constexpr (kBackward) {
      write_gradients<scalar_t, acc_t, kWeighted>(mu + base, mhat, grad + base, groups, s, order + base,
                                                  /*has_top=*/true, red, out + base, grad_lam + row);
    } else {
      write_projection<scalar_t, acc_t, kWeighted>(mu + base, mhat, groups, s.theta, out + base);
    }
    __syncthreads();
  }
}

struct SortedRows {
  at::Tensor key, order, pnum, pden;  // pden undefined for weighted
};

// The G > kMaxFused path's sort and prefix sums, in the accumulation dtype (no host sync).
SortedRows sort_rows(const at::Tensor& mu, const at::Tensor& mhat, bool weighted) {
  const at::ScalarType acc = at::toOpMathType(mu.scalar_type());
  const at::Tensor x = mu.to(acc), m = mhat.to(acc).unsqueeze(0);
  const at::Tensor b = weighted ? -(m * x) : -x;
  const at::Tensor negative = b.gt(0);  // v < 0
  const at::Tensor key = (weighted ? b : b / m).masked_fill(negative.logical_not(), -INFINITY);
  at::Tensor skey, order;
  std::tie(skey, order) = at::sort(key, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  const at::Tensor num = (weighted ? b : m * b).masked_fill(negative.logical_not(), 0);
  SortedRows out{skey.contiguous(), order.contiguous(),
                 at::cumsum(num.gather(-1, order).to(at::kDouble), -1).contiguous(), at::Tensor()};
  if (!weighted) {
    const at::Tensor den = (m * m).expand_as(x).masked_fill(negative.logical_not(), 0);
    out.pden = at::cumsum(den.gather(-1, order).to(at::kDouble), -1).contiguous();
  }
  return out;
}

// Runs the forward (grad undefined) or the backward of rows [R, G] into out (and grad_lam).
template <bool kBackward>
void launch(const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam, const at::Tensor& grad,
            bool weighted, at::Tensor& out, at::Tensor& grad_lam) {
  const int64_t rows = mu.size(0), groups = mu.size(1);
  TORCH_CHECK(groups < INT_MAX, "fairlit: G must be < 2^31 for the CUDA kernel, got ", groups);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int blocks = cuda::blocks_for(rows, 1);
  SortedRows sorted;
  if (groups > kMaxFused) sorted = sort_rows(mu, mhat, weighted);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "fairlit_dual_projection_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = kBackward ? grad.data_ptr<scalar_t>() : nullptr;
    scalar_t* gl = kBackward ? grad_lam.data_ptr<scalar_t>() : nullptr;
    if (groups <= kMaxFused) {
      int threads = 32;
      while (threads < groups) threads <<= 1;
      const size_t smem = static_cast<size_t>(threads) * (2 * sizeof(double) + sizeof(acc_t) + sizeof(int));
      auto kernel = weighted ? fused_kernel<scalar_t, acc_t, true, kBackward>
                             : fused_kernel<scalar_t, acc_t, false, kBackward>;
      kernel<<<blocks, threads, smem, stream>>>(mu.data_ptr<scalar_t>(), mhat.data_ptr<scalar_t>(),
                                               lam.data_ptr<scalar_t>(), g, rows, static_cast<int>(groups),
                                               out.data_ptr<scalar_t>(), gl);
    } else {
      auto kernel = weighted ? sorted_rows_kernel<scalar_t, acc_t, true, kBackward>
                             : sorted_rows_kernel<scalar_t, acc_t, false, kBackward>;
      kernel<<<blocks, kRowThreads, 0, stream>>>(
          mu.data_ptr<scalar_t>(), mhat.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), g,
          sorted.key.data_ptr<acc_t>(), sorted.order.data_ptr<int64_t>(), sorted.pnum.data_ptr<double>(),
          weighted ? nullptr : sorted.pden.data_ptr<double>(), rows, groups, out.data_ptr<scalar_t>(), gl);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor dual_projection_cuda(const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam, bool weighted) {
  check_projection_inputs(mu, mhat, lam);
  c10::cuda::CUDAGuard guard(mu.device());
  const at::Tensor x = mu.contiguous(), m = mhat.contiguous(), l = lam.contiguous();
  at::Tensor out = at::empty_like(x);
  at::Tensor unused;
  if (out.numel() == 0) return out;
  launch<false>(x, m, l, at::Tensor(), weighted, out, unused);
  return out;
}

std::tuple<at::Tensor, at::Tensor> dual_projection_backward_cuda(const at::Tensor& grad, const at::Tensor& mu,
                                                                 const at::Tensor& mhat, const at::Tensor& lam,
                                                                 bool weighted) {
  check_projection_inputs(mu, mhat, lam);
  check_projection_grad(grad, mu);
  c10::cuda::CUDAGuard guard(mu.device());
  const at::Tensor g = grad.contiguous(), x = mu.contiguous(), m = mhat.contiguous(), l = lam.contiguous();
  at::Tensor grad_mu = at::empty_like(x);
  at::Tensor grad_lam = at::zeros_like(l);
  if (grad_mu.numel() == 0) return {grad_mu, grad_lam};
  launch<true>(x, m, l, g, weighted, grad_mu, grad_lam);
  return {grad_mu, grad_lam};
}

// dual_mirror_step: the elementwise momentum mirror step (the math of csrc/cpu/projection.cpp) writes mu - eta *
// step into a [1, G] buffer, then the projection kernel above writes its row into mu: two launches, no host sync.
template <typename scalar_t>
__global__ void mirror_step_kernel(const scalar_t* __restrict__ mu, scalar_t* __restrict__ gmom,
                                   scalar_t* __restrict__ gamma, const scalar_t* __restrict__ share,
                                   const scalar_t* __restrict__ fraction, const scalar_t* __restrict__ rho,
                                   const scalar_t* __restrict__ mhat, int64_t groups, scalar_t keep, scalar_t alpha,
                                   scalar_t eta, bool weighted, bool remaining, scalar_t* __restrict__ tilde) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < groups;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    scalar_t grad;
    if (remaining) {
      const scalar_t budget = gamma[k] - fraction[0] * share[k];
      gamma[k] = budget;
      grad = budget - share[k];
    } else {
      grad = rho[k] - share[k];
    }
    const scalar_t g = gmom[k] * keep + alpha * grad;
    gmom[k] = g;
    tilde[k] = mu[k] - eta * (weighted ? g / (mhat[k] * mhat[k]) : g);
  }
}

void dual_mirror_step_cuda(at::Tensor& mu, at::Tensor& gmom, at::Tensor& gamma, const at::Tensor& share,
                           const at::Tensor& batch_fraction, const at::Tensor& rho, const at::Tensor& mhat, double lam,
                           double eta, double alpha, bool weighted, bool remaining) {
  check_dual_mirror_inputs(mu, gmom, gamma, share, batch_fraction, rho, mhat);
  c10::cuda::CUDAGuard guard(mu.device());
  const int64_t groups = mu.size(0);
  if (groups == 0) return;
  const at::Tensor d = share.contiguous(), r = rho.contiguous(), m = mhat.contiguous(), f = batch_fraction.contiguous();
  at::Tensor tilde = at::empty({1, groups}, mu.options());
  constexpr int kThreads = 256;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "fairlit_dual_mirror_step_cuda", [&] {
    mirror_step_kernel<scalar_t><<<cuda::blocks_for(groups, kThreads), kThreads, 0, stream>>>(
        mu.data_ptr<scalar_t>(), gmom.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
        f.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), groups,
        static_cast<scalar_t>(1.0 - alpha), static_cast<scalar_t>(alpha), static_cast<scalar_t>(eta), weighted,
        remaining, tilde.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor out = mu.view({1, groups});
  at::Tensor unused;
  launch<false>(tilde, m, at::full({1}, lam, mu.options()), at::Tensor(), weighted, out, unused);
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CUDA, m) {
  m.impl("dual_projection", &dual_projection_cuda);
  m.impl("dual_projection_backward", &dual_projection_backward_cuda);
  m.impl("dual_mirror_step", &dual_mirror_step_cuda);
}

}  // namespace fairlit
