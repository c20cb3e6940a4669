// CPU kernels of the soft_sort family: neuralsort and soft_rank_gain (+ their backward ops).
//
// Row r (1-based) of the NeuralSort matrix of a score list s in R^N is
//   P[r] = softmax((alpha_r s - a) / tau),  alpha_r = N + 1 - 2r,  a_j = sum_i |s_j - s_i|   (fade.md §2.5).
// `a` needs one sort plus prefix sums, so a row costs O(N log N + k N) time and O(N) scratch; the N x N
// matrix is never formed. Parallel plan: rows are independent; each worker reuses one RowSort scratch.
// Each row is shifted by its midrange first: P is invariant to the shift, and it keeps the prefix sums
// (whose differences form `a`) small, so fp32 keeps its precision for offset scores.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "../checks.h"

namespace fairlit {
namespace {

// Rows per parallel_for task: about 64k logit evaluations, so small rows are batched.
int64_t row_grain(int64_t n, int64_t k) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, n * (k + 8))); }

// One sorted row: shifted scores x, abs row sums a and, for each item, the run [lo, hi) of sorted positions
// holding its value (ties share a run, which is how sign(0) = 0 enters both a and its vector-Jacobian product).
template <typename acc_t>
class RowSort {
 public:
  template <typename scalar_t>
  void build(const scalar_t* s, int64_t n, int64_t row) {
    n_ = n;
    order_.resize(n);
    x_.resize(n);
    a_.resize(n);
    lo_.resize(n);
    hi_.resize(n);
    prefix_.resize(n + 1);
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = static_cast<acc_t>(s[j]);
      TORCH_CHECK(std::isfinite(v), "fairlit: `scores` must be finite, row ", row, " has ", v, " at column ", j);
      order_[j] = {v, static_cast<int32_t>(j)};
    }
    std::sort(order_.begin(), order_.end());
    const acc_t centre = order_[0].first / 2 + order_[n - 1].first / 2;
    prefix_[0] = 0;
    for (int64_t p = 0; p < n; ++p) prefix_[p + 1] = prefix_[p] + (order_[p].first - centre);
    for (int64_t p0 = 0; p0 < n;) {
      int64_t p1 = p0 + 1;
      while (p1 < n && order_[p1].first == order_[p0].first) ++p1;
      const acc_t xc = order_[p0].first - centre;
      // sum_{below} (x - x_i) + sum_{above} (x_i - x); the run itself contributes 0.
      const acc_t a = xc * acc_t(p0) - prefix_[p0] + (prefix_[n] - prefix_[p1]) - acc_t(n - p1) * xc;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t j = order_[p].second;
        x_[j] = xc;
        a_[j] = a;
        lo_[j] = static_cast<int32_t>(p0);
        hi_[j] = static_cast<int32_t>(p1);
      }
      p0 = p1;
    }
  }

  // (alpha * s_j - a_j) / tau, up to a per-row constant that softmax ignores.
  acc_t logit(int64_t j, acc_t alpha, acc_t inv_tau) const { return (alpha * x_[j] - a_[j]) * inv_tau; }

  // out_m -= sum_j h_j d a_j / d s_m = h_m (lo_m - (N - hi_m)) - (sum_{s_j > s_m} h_j - sum_{s_j < s_m} h_j).
  void sub_abs_rowsum_vjp(const acc_t* h, acc_t* out) {
    prefix_[0] = 0;
    for (int64_t p = 0; p < n_; ++p) prefix_[p + 1] = prefix_[p] + h[order_[p].second];
    for (int64_t m = 0; m < n_; ++m) {
      out[m] -= h[m] * acc_t(lo_[m] - (n_ - hi_[m])) - ((prefix_[n_] - prefix_[hi_[m]]) - prefix_[lo_[m]]);
    }
  }

 private:
  int64_t n_ = 0;
  std::vector<std::pair<acc_t, int32_t>> order_;  // 32-bit columns: a smaller sort payload
  std::vector<acc_t> x_, a_, prefix_;
  std::vector<int32_t> lo_, hi_;
};

template <typename acc_t>
acc_t row_max_logit(const RowSort<acc_t>& rs, int64_t n, acc_t alpha, acc_t inv_tau) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, rs.logit(j, alpha, inv_tau));
  return m;
}

at::Tensor neuralsort_cpu(const at::Tensor& scores, double tau, int64_t k) {
  check_scores(scores, tau, k);
  const at::Tensor s = scores.contiguous();
  const int64_t rows = s.size(0), n = s.size(1);
  at::Tensor out = at::empty({rows, k, n}, s.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_neuralsort_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    const scalar_t* ss = s.data_ptr<scalar_t>();
    scalar_t* os = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(n, k), [&](int64_t b0, int64_t b1) {
      RowSort<acc_t> rs;
      std::vector<acc_t> e(static_cast<size_t>(n));
      for (int64_t b = b0; b < b1; ++b) {
        rs.build(ss + b * n, n, b);
        for (int64_t r = 0; r < k; ++r) {
          const acc_t alpha = acc_t(n - 1 - 2 * r);
          const acc_t m = row_max_logit(rs, n, alpha, inv_tau);
          acc_t sum = 0;
          for (int64_t j = 0; j < n; ++j) {
            e[j] = std::exp(rs.logit(j, alpha, inv_tau) - m);
            sum += e[j];
          }
          const acc_t inv = acc_t(1) / sum;
          scalar_t* o = os + (b * k + r) * n;
          for (int64_t j = 0; j < n; ++j) o[j] = static_cast<scalar_t>(e[j] * inv);
        }
      }
    });
  });
  return out;
}

// fade.md §2.7: g_z[r] = P[r] (g_P[r] - g_P[r].P[r]) / tau;  g_s = sum_r alpha_r g_z[r] - vjp_a(sum_r g_z[r]).
at::Tensor neuralsort_backward_cpu(const at::Tensor& grad, const at::Tensor& P, const at::Tensor& scores,
                                   double tau) {
  check_neuralsort_backward_inputs(grad, P, scores, tau);
  const at::Tensor s = scores.contiguous(), p = P.contiguous(), g = grad.contiguous();
  const int64_t rows = s.size(0), n = s.size(1), k = p.size(1);
  at::Tensor grad_scores = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_neuralsort_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    const scalar_t* ss = s.data_ptr<scalar_t>();
    const scalar_t* ps = p.data_ptr<scalar_t>();
    const scalar_t* gs = g.data_ptr<scalar_t>();
    scalar_t* out = grad_scores.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(n, k), [&](int64_t b0, int64_t b1) {
      RowSort<acc_t> rs;
      std::vector<acc_t> h(static_cast<size_t>(n)), u(static_cast<size_t>(n));
      for (int64_t b = b0; b < b1; ++b) {
        rs.build(ss + b * n, n, b);
        std::fill(h.begin(), h.end(), acc_t(0));
        std::fill(u.begin(), u.end(), acc_t(0));
        for (int64_t r = 0; r < k; ++r) {
          const scalar_t* pr = ps + (b * k + r) * n;
          const scalar_t* gr = gs + (b * k + r) * n;
          const acc_t alpha = acc_t(n - 1 - 2 * r);
          acc_t d = 0;
          for (int64_t j = 0; j < n; ++j) d += static_cast<acc_t>(gr[j]) * static_cast<acc_t>(pr[j]);
          for (int64_t j = 0; j < n; ++j) {
            const acc_t gz = static_cast<acc_t>(pr[j]) * (static_cast<acc_t>(gr[j]) - d) * inv_tau;
            h[j] += gz;
            u[j] += alpha * gz;
          }
        }
        rs.sub_abs_rowsum_vjp(h.data(), u.data());
        for (int64_t j = 0; j < n; ++j) out[b * n + j] = static_cast<scalar_t>(u[j]);
      }
    });
  });
  return grad_scores;
}

// One pass per requested row: online statistics only, (lse_r, dots_r = P[r].gains) are kept for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_rank_gain_cpu(const at::Tensor& scores, const at::Tensor& gains,
                                                                  double tau, int64_t k,
                                                                  const at::Tensor& discounts) {
  check_scores(scores, tau, k);
  check_gain_inputs(scores, gains, k, discounts);
  const at::Tensor s = scores.contiguous(), gn = gains.contiguous();
  const int64_t rows = s.size(0), n = s.size(1);
  const at::ScalarType acc_type = loss_dtype(s.scalar_type());
  const at::Tensor disc = discounts.to(acc_type).contiguous();
  at::Tensor out = at::empty({rows}, s.options());
  at::Tensor lse = at::empty({rows, k}, s.options().dtype(acc_type));
  at::Tensor dots = at::empty({rows, k}, s.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_soft_rank_gain_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    const scalar_t* ss = s.data_ptr<scalar_t>();
    const scalar_t* gs = gn.data_ptr<scalar_t>();
    const acc_t* ds = disc.data_ptr<acc_t>();
    scalar_t* os = out.data_ptr<scalar_t>();
    acc_t* ls = lse.data_ptr<acc_t>();
    acc_t* dt = dots.data_ptr<acc_t>();
    at::parallel_for(0, rows, row_grain(n, k), [&](int64_t b0, int64_t b1) {
      RowSort<acc_t> rs;
      for (int64_t b = b0; b < b1; ++b) {
        rs.build(ss + b * n, n, b);
        const scalar_t* g = gs + b * n;
        acc_t total = 0;
        for (int64_t r = 0; r < k; ++r) {
          const acc_t alpha = acc_t(n - 1 - 2 * r);
          const acc_t m = row_max_logit(rs, n, alpha, inv_tau);
          acc_t sum = 0, dot = 0;
          for (int64_t j = 0; j < n; ++j) {
            const acc_t e = std::exp(rs.logit(j, alpha, inv_tau) - m);
            sum += e;
            dot += e * static_cast<acc_t>(g[j]);
          }
          ls[b * k + r] = m + std::log(sum);
          dt[b * k + r] = dot / sum;
          total += ds[r] * dt[b * k + r];
        }
        os[b] = static_cast<scalar_t>(total);
      }
    });
  });
  return {out, lse, dots};
}

// Rows are recomputed from (s, a, lse): p_rj = exp(z_rj - lse_r). With w_r = grad * discounts[r],
// g_z[r] = w_r p_r (gains - dots_r) / tau feeds §2.7's g_s; d out / d gains = sum_r w_r p_r.
std::tuple<at::Tensor, at::Tensor> soft_rank_gain_backward_cpu(const at::Tensor& grad, const at::Tensor& scores,
                                                               const at::Tensor& gains, double tau, int64_t k,
                                                               const at::Tensor& discounts, const at::Tensor& lse,
                                                               const at::Tensor& dots) {
  check_soft_rank_gain_backward_inputs(grad, scores, gains, tau, k, discounts, lse, dots);
  const int64_t rows = scores.size(0), n = scores.size(1);
  const at::ScalarType acc_type = loss_dtype(scores.scalar_type());
  const at::Tensor s = scores.contiguous(), gn = gains.contiguous();
  const at::Tensor disc = discounts.to(acc_type).contiguous(), go = grad.to(acc_type).contiguous();
  const at::Tensor ls = lse.to(acc_type).contiguous(), dt = dots.to(acc_type).contiguous();
  at::Tensor grad_scores = at::empty_like(s), grad_gains = at::empty_like(gn);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "fairlit_soft_rank_gain_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    const scalar_t* ss = s.data_ptr<scalar_t>();
    const scalar_t* gs = gn.data_ptr<scalar_t>();
    const acc_t* ds = disc.data_ptr<acc_t>();
    const acc_t* gos = go.data_ptr<acc_t>();
    const acc_t* lss = ls.data_ptr<acc_t>();
    const acc_t* dts = dt.data_ptr<acc_t>();
    scalar_t* out_s = grad_scores.data_ptr<scalar_t>();
    scalar_t* out_g = grad_gains.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(n, k), [&](int64_t b0, int64_t b1) {
      RowSort<acc_t> rs;
      std::vector<acc_t> h(static_cast<size_t>(n)), u(static_cast<size_t>(n)), gg(static_cast<size_t>(n));
      for (int64_t b = b0; b < b1; ++b) {
        rs.build(ss + b * n, n, b);
        const scalar_t* g = gs + b * n;
        std::fill(h.begin(), h.end(), acc_t(0));
        std::fill(u.begin(), u.end(), acc_t(0));
        std::fill(gg.begin(), gg.end(), acc_t(0));
        for (int64_t r = 0; r < k; ++r) {
          const acc_t alpha = acc_t(n - 1 - 2 * r);
          const acc_t w = gos[b] * ds[r], l = lss[b * k + r], d = dts[b * k + r];
          for (int64_t j = 0; j < n; ++j) {
            const acc_t p = std::exp(rs.logit(j, alpha, inv_tau) - l);
            const acc_t gz = w * p * (static_cast<acc_t>(g[j]) - d) * inv_tau;
            h[j] += gz;
            u[j] += alpha * gz;
            gg[j] += w * p;
          }
        }
        rs.sub_abs_rowsum_vjp(h.data(), u.data());
        for (int64_t j = 0; j < n; ++j) {
          out_s[b * n + j] = static_cast<scalar_t>(u[j]);
          out_g[b * n + j] = static_cast<scalar_t>(gg[j]);
        }
      }
    });
  });
  return {grad_scores, grad_gains};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CPU, m) {
  m.impl("neuralsort", &neuralsort_cpu);
  m.impl("neuralsort_backward", &neuralsort_backward_cpu);
  m.impl("soft_rank_gain", &soft_rank_gain_cpu);
  m.impl("soft_rank_gain_backward", &soft_rank_gain_backward_cpu);
}

}  // namespace fairlit
