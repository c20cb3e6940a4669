// CPU kernels of the projection family: dual_projection (+ backward), FairDual's projection of each row of
// mu [R, G] onto M_r = {x : sum_g mhat_g min(x_g, 0) >= -lam_r} (spec fairdual §2.5), and dual_mirror_step,
// FairDual's whole dual update (momentum mirror step, then that projection) on its [G] state.
//
// Per row: the entries with v_g < 0 (v = mhat * mu for "weighted", v = mu for "euclid") get the key
// b = -v (weighted) or b / mhat (euclid, b = -mu) and are sorted by key, descending. Prefix sums of the
// numerators (b, resp. mhat * b) and denominators (k, resp. mhat^2) give theta_k = (num_k - lam) / den_k;
// the active count r is the last k with theta_k < key_k and theta = max(theta_r, 0) (theta = the largest key
// when r = 0, i.e. lam = 0). The reference (fairlit.ops.reference.dual_projection) also sorts the entries
// v >= 0, with key 0, to the end; they cannot change the prefixes before them, and a true condition there
// means theta_k < 0, i.e. theta = 0 either way, so they are skipped here.
// Each step uses the reference's dtype (float32 for half inputs) and the prefix sums accumulate in double,
// rounding every prefix as torch.cumsum does on CPU: results match the reference to the last bit except
// where tied keys are summed in another order. Rows are independent (at::parallel_for over rows), so the
// output does not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"

namespace fairlit {
namespace {

template <typename acc_t>
struct Entry {
  acc_t key;
  int64_t idx;
};

// Descending by key with NaN first (as torch.sort(descending=True)): a strict weak order even with NaN,
// which std::sort needs to stay in bounds on malformed input.
template <typename acc_t>
inline bool key_before(const Entry<acc_t>& a, const Entry<acc_t>& b) {
  return a.key > b.key || (std::isnan(a.key) && !std::isnan(b.key));
}

template <typename acc_t>
struct RowSolution {
  acc_t theta;      // max(theta_raw, 0), the shift applied to the active entries
  acc_t theta_raw;  // theta_r, or the largest key when r = 0; its gradient flows only when >= 0 (clamp)
  acc_t den;        // den_r: r (weighted) or sum of mhat^2 over the active entries (euclid)
  int64_t r;        // active count
};

// Fills `e` with the row's entries v < 0 sorted by key (descending) and solves for theta.
template <typename scalar_t, typename acc_t, bool kWeighted>
RowSolution<acc_t> solve_row(const scalar_t* mu, const acc_t* mhat, int64_t groups, acc_t lam,
                             std::vector<Entry<acc_t>>& e) {
  e.clear();
  for (int64_t g = 0; g < groups; ++g) {
    const acc_t x = static_cast<acc_t>(mu[g]);
    if (kWeighted) {
      const acc_t v = mhat[g] * x;
      if (v < 0) e.push_back({-v, g});
    } else if (x < 0) {
      e.push_back({-x / mhat[g], g});
    }
  }
  std::sort(e.begin(), e.end(), key_before<acc_t>);
  const int64_t n = static_cast<int64_t>(e.size());
  double num = 0, den = 0;  // torch.cumsum's CPU accumulator for float and double
  RowSolution<acc_t> s{0, n > 0 ? e[0].key : acc_t(0), 0, 0};
  for (int64_t k = 0; k < n; ++k) {
    acc_t den_k;
    if (kWeighted) {
      num += static_cast<double>(e[k].key);
      den_k = static_cast<acc_t>(k + 1);
    } else {
      const acc_t m = mhat[e[k].idx];
      num += static_cast<double>(m * -static_cast<acc_t>(mu[e[k].idx]));
      den += static_cast<double>(m * m);
      den_k = static_cast<acc_t>(den);
    }
    const acc_t theta_k = (static_cast<acc_t>(num) - lam) / den_k;
    if (theta_k < e[k].key) s = RowSolution<acc_t>{0, theta_k, den_k, k + 1};
  }
  s.theta = s.theta_raw < 0 ? acc_t(0) : s.theta_raw;
  return s;
}

// Output entry g: weighted -relu(b - theta) / mhat, euclid -relu(b - theta * mhat) where v < 0, else mu.
template <typename acc_t, bool kWeighted>
inline acc_t project_entry(acc_t x, acc_t m, acc_t theta) {
  if (kWeighted) {
    const acc_t v = m * x;
    if (!(v < 0)) return x;
    const acc_t d = -v - theta;
    return -(d > 0 ? d : acc_t(0)) / m;
  }
  if (!(x < 0)) return x;
  const acc_t d = -x - theta * m;
  return -(d > 0 ? d : acc_t(0));
}

// d out_g / d mu_g holding theta fixed (1 on kept and active entries, 0 on clipped ones); adds this entry's
// share of dL/dtheta (grad_g * d out_g / d theta) to `dtheta`.
template <typename acc_t, bool kWeighted>
inline acc_t direct_grad(acc_t x, acc_t m, acc_t theta, acc_t grad, double& dtheta) {
  const bool negative = kWeighted ? (m * x < 0) : (x < 0);
  if (!negative) return grad;
  const acc_t d = kWeighted ? (-(m * x) - theta) : (-x - theta * m);
  if (!(d > 0)) return acc_t(0);
  dtheta += static_cast<double>(kWeighted ? grad / m : grad * m);
  return grad;
}

// d theta / d mu_j for the entry that determines theta_raw: -mhat_j / den over the r active entries
// (theta = (sum b - lam) / den); for r = 0, theta = the largest key, whose derivative is -mhat (weighted)
// or -1 / mhat (euclid).
template <typename acc_t, bool kWeighted>
inline acc_t top_key_grad(acc_t m) {
  return kWeighted ? -m : acc_t(-1) / m;
}

void check_mhat_positive(const at::Tensor& mhat) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mhat.scalar_type(), "fairlit_mhat_check", [&] {
    const scalar_t* m = mhat.data_ptr<scalar_t>();
    for (int64_t g = 0; g < mhat.size(0); ++g) {
      const float value = static_cast<float>(m[g]);
      TORCH_CHECK(static_cast<double>(m[g]) > 0, "fairlit: `mhat` must be > 0, got ", value, " at position ", g);
    }
  });
}

int64_t rows_per_task(int64_t groups) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(groups, 1)); }

template <typename acc_t, typename scalar_t>
std::vector<acc_t> to_acc(const at::Tensor& t) {
  const scalar_t* p = t.data_ptr<scalar_t>();
  return std::vector<acc_t>(p, p + t.numel());
}

// Projects one row xr [G] into out [G] (out may not alias xr).
template <typename scalar_t, typename acc_t, bool kWeighted>
void project_row(const scalar_t* xr, const acc_t* m, int64_t groups, acc_t lam, std::vector<Entry<acc_t>>& e,
                 scalar_t* out) {
  const RowSolution<acc_t> s = solve_row<scalar_t, acc_t, kWeighted>(xr, m, groups, lam, e);
  for (int64_t g = 0; g < groups; ++g) {
    out[g] = static_cast<scalar_t>(project_entry<acc_t, kWeighted>(static_cast<acc_t>(xr[g]), m[g], s.theta));
  }
}

template <typename scalar_t, typename acc_t, bool kWeighted>
void forward_rows(const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam, at::Tensor& out) {
  const int64_t rows = mu.size(0), groups = mu.size(1);
  const std::vector<acc_t> m = to_acc<acc_t, scalar_t>(mhat);
  const scalar_t* x = mu.data_ptr<scalar_t>();
  const scalar_t* l = lam.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, rows, rows_per_task(groups), [&](int64_t r0, int64_t r1) {
    std::vector<Entry<acc_t>> e;
    e.reserve(static_cast<size_t>(groups));
    for (int64_t row = r0; row < r1; ++row) {
      project_row<scalar_t, acc_t, kWeighted>(x + row * groups, m.data(), groups, static_cast<acc_t>(l[row]), e,
                                              o + row * groups);
    }
  });
}

// grad_mu = direct term + (d theta / d mu) * dL/dtheta, grad_lam = -dL/dtheta / den_r (0 when r = 0 or
// theta_raw < 0, where theta does not depend on lam). mhat is a constant.
template <typename scalar_t, typename acc_t, bool kWeighted>
void backward_rows(const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam,
                   at::Tensor& grad_mu, at::Tensor& grad_lam) {
  const int64_t rows = mu.size(0), groups = mu.size(1);
  const std::vector<acc_t> m = to_acc<acc_t, scalar_t>(mhat);
  const scalar_t* x = mu.data_ptr<scalar_t>();
  const scalar_t* gr = grad.data_ptr<scalar_t>();
  const scalar_t* l = lam.data_ptr<scalar_t>();
  scalar_t* gm = grad_mu.data_ptr<scalar_t>();
  scalar_t* gl = grad_lam.data_ptr<scalar_t>();
  at::parallel_for(0, rows, rows_per_task(groups), [&](int64_t r0, int64_t r1) {
    std::vector<Entry<acc_t>> e;
    std::vector<acc_t> direct(static_cast<size_t>(groups));
    e.reserve(static_cast<size_t>(groups));
    for (int64_t row = r0; row < r1; ++row) {
      const scalar_t* xr = x + row * groups;
      const scalar_t* grr = gr + row * groups;
      const RowSolution<acc_t> s =
          solve_row<scalar_t, acc_t, kWeighted>(xr, m.data(), groups, static_cast<acc_t>(l[row]), e);
      double dtheta = 0;
      for (int64_t g = 0; g < groups; ++g) {
        direct[g] = direct_grad<acc_t, kWeighted>(static_cast<acc_t>(xr[g]), m[g], s.theta,
                                                  static_cast<acc_t>(grr[g]), dtheta);
      }
      acc_t glam = 0;
      if (!(s.theta_raw < 0) && !e.empty()) {  // clamp(theta_raw, 0) passes its gradient
        const acc_t dt = static_cast<acc_t>(dtheta);
        if (s.r > 0) {
          const acc_t c = dt / s.den;
          for (int64_t k = 0; k < s.r; ++k) direct[e[k].idx] -= c * m[e[k].idx];
          glam = -c;
        } else {
          direct[e[0].idx] += dt * top_key_grad<acc_t, kWeighted>(m[e[0].idx]);
        }
      }
      for (int64_t g = 0; g < groups; ++g) gm[row * groups + g] = static_cast<scalar_t>(direct[g]);
      gl[row] = static_cast<scalar_t>(glam);
    }
  });
}

at::Tensor dual_projection_cpu(const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam, bool weighted) {
  check_projection_inputs(mu, mhat, lam);
  const at::Tensor x = mu.contiguous(), m = mhat.contiguous(), l = lam.contiguous();
  check_mhat_positive(m);
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fairlit_dual_projection_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (weighted) {
      forward_rows<scalar_t, acc_t, true>(x, m, l, out);
    } else {
      forward_rows<scalar_t, acc_t, false>(x, m, l, out);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dual_projection_backward_cpu(const at::Tensor& grad, const at::Tensor& mu,
                                                                const at::Tensor& mhat, const at::Tensor& lam,
                                                                bool weighted) {
  check_projection_inputs(mu, mhat, lam);
  check_projection_grad(grad, mu);
  const at::Tensor g = grad.contiguous(), x = mu.contiguous(), m = mhat.contiguous(), l = lam.contiguous();
  check_mhat_positive(m);
  at::Tensor grad_mu = at::empty_like(x);
  at::Tensor grad_lam = at::zeros_like(l);
  if (grad_mu.numel() == 0) return {grad_mu, grad_lam};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fairlit_dual_projection_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (weighted) {
      backward_rows<scalar_t, acc_t, true>(g, x, m, l, grad_mu, grad_lam);
    } else {
      backward_rows<scalar_t, acc_t, false>(g, x, m, l, grad_mu, grad_lam);
    }
  });
  return {grad_mu, grad_lam};
}

// dual_mirror_step: FairDual's momentum mirror step (spec fairdual §2.3, Alg. 1 lines 12-14) on the [G] state in
// place, operation by operation in the state's dtype as fairlit.ops.reference.dual_mirror_step (torch rounds each
// of those elementwise ops the same way), then the projection of the one row onto M as dual_projection.
void dual_mirror_step_cpu(at::Tensor& mu, at::Tensor& gmom, at::Tensor& gamma, const at::Tensor& share,
                          const at::Tensor& batch_fraction, const at::Tensor& rho, const at::Tensor& mhat, double lam,
                          double eta, double alpha, bool weighted, bool remaining) {
  check_dual_mirror_inputs(mu, gmom, gamma, share, batch_fraction, rho, mhat);
  const at::Tensor d = share.contiguous(), r = rho.contiguous(), m = mhat.contiguous(), f = batch_fraction.contiguous();
  check_mhat_positive(m);
  const int64_t groups = mu.size(0);
  if (groups == 0) return;
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "fairlit_dual_mirror_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* x = mu.data_ptr<scalar_t>();
    scalar_t* g = gmom.data_ptr<scalar_t>();
    scalar_t* budget = gamma.data_ptr<scalar_t>();
    const scalar_t* ds = d.data_ptr<scalar_t>();
    const scalar_t* rs = r.data_ptr<scalar_t>();
    const scalar_t* ms = m.data_ptr<scalar_t>();
    const scalar_t fraction = f.data_ptr<scalar_t>()[0];
    const scalar_t keep = static_cast<scalar_t>(1.0 - alpha), a = static_cast<scalar_t>(alpha);
    const scalar_t step_size = static_cast<scalar_t>(eta);
    std::vector<scalar_t> tilde(static_cast<size_t>(groups));
    for (int64_t k = 0; k < groups; ++k) {
      scalar_t grad;
      if (remaining) {
        budget[k] = budget[k] - fraction * ds[k];
        grad = budget[k] - ds[k];
      } else {
        grad = rs[k] - ds[k];
      }
      g[k] = g[k] * keep + a * grad;
      const scalar_t step = weighted ? g[k] / (ms[k] * ms[k]) : g[k];
      tilde[k] = x[k] - step_size * step;
    }
    const std::vector<acc_t> mh = to_acc<acc_t, scalar_t>(m);
    std::vector<Entry<acc_t>> e;
    e.reserve(static_cast<size_t>(groups));
    if (weighted) {
      project_row<scalar_t, acc_t, true>(tilde.data(), mh.data(), groups, static_cast<acc_t>(lam), e, x);
    } else {
      project_row<scalar_t, acc_t, false>(tilde.data(), mh.data(), groups, static_cast<acc_t>(lam), e, x);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CPU, m) {
  m.impl("dual_projection", &dual_projection_cpu);
  m.impl("dual_projection_backward", &dual_projection_backward_cpu);
  m.impl("dual_mirror_step", &dual_mirror_step_cpu);
}

}  // namespace fairlit
