// CPU kernels of the group_segment family: group_sum, group_mean, group_bpr_loss (+ backward).
//
// Parallel plan: the N rows are cut into a fixed number of contiguous chunks (a function of N only,
// never of the thread count); each chunk accumulates into its own [G, D] partial buffer, and partials
// are then added in chunk order. The result is therefore bitwise identical run to run and for any
// number of threads, without atomics.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"

namespace fairlit {
namespace {

constexpr int64_t kRowsPerChunk = 4096;
constexpr int64_t kMaxChunks = 64;
constexpr int64_t kMaxPartialElements = int64_t(1) << 24;

int64_t num_chunks(int64_t rows, int64_t width) {
  int64_t chunks = std::min(kMaxChunks, (rows + kRowsPerChunk - 1) / kRowsPerChunk);
  chunks = std::min(chunks, std::max<int64_t>(1, kMaxPartialElements / std::max<int64_t>(width, 1)));
  return std::max<int64_t>(chunks, 1);
}

// Calls row_fn(row, partial_row_ptr_for_group) for every row, accumulating into per-chunk partials of
// `width` accumulators per group, then reduces the partials in chunk order into `out` ([G * width]).
template <typename acc_t, typename RowFn>
void chunked_group_reduce(int64_t rows, int64_t num_groups, int64_t width, const int64_t* groups,
                          acc_t* out, const RowFn& row_fn) {
  const int64_t chunks = num_chunks(rows, num_groups * width);
  const int64_t stride = num_groups * width;
  std::vector<acc_t> partial(static_cast<size_t>(chunks * stride), acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
      acc_t* part = partial.data() + c * stride;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t g = groups[r];
        TORCH_CHECK(g >= 0 && g < num_groups, "fairlit: `groups` contains ", g, " at position ", r,
                    "; expected ids in [0, ", num_groups, ")");
        row_fn(r, part + g * width);
      }
    }
  });
  at::parallel_for(0, stride, 256, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      acc_t acc = 0;
      for (int64_t c = 0; c < chunks; ++c) acc += partial[c * stride + j];
      out[j] = acc;
    }
  });
}

at::Tensor counts_of(const at::Tensor& groups, int64_t num_groups) {
  at::Tensor count = at::zeros({num_groups}, groups.options());
  const int64_t* g = groups.data_ptr<int64_t>();
  int64_t* cnt = count.data_ptr<int64_t>();
  // Integer counts are order-independent; the range was checked by the reduction that precedes this.
  for (int64_t r = 0; r < groups.size(0); ++r) cnt[g[r]] += 1;
  return count;
}

// Sum of rows per group into an accumulation-type tensor [G, D].
at::Tensor group_sum_acc(const at::Tensor& values, const at::Tensor& groups, int64_t num_groups) {
  const at::Tensor v = values.contiguous();
  const int64_t rows = v.size(0);
  const int64_t width = v.dim() == 2 ? v.size(1) : 1;
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "fairlit_group_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    out = at::empty({num_groups, width}, v.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const scalar_t* src = v.data_ptr<scalar_t>();
    chunked_group_reduce<acc_t>(rows, num_groups, width, groups.data_ptr<int64_t>(), out.data_ptr<acc_t>(),
                                [&](int64_t r, acc_t* acc) {
                                  const scalar_t* row = src + r * width;
                                  for (int64_t d = 0; d < width; ++d) acc[d] += static_cast<acc_t>(row[d]);
                                });
  });
  return out;
}

at::Tensor shape_like_values(const at::Tensor& acc, const at::Tensor& values) {
  at::Tensor out = acc.to(values.scalar_type());
  return values.dim() == 2 ? out : out.view({acc.size(0)});
}

at::Tensor group_sum_cpu(const at::Tensor& values, const at::Tensor& groups, int64_t num_groups) {
  check_group_inputs(values, groups, num_groups, "values");
  TORCH_CHECK(values.dim() <= 2, "fairlit: `values` must be [N] or [N, D], got ", values.sizes());
  return shape_like_values(group_sum_acc(values, groups.contiguous(), num_groups), values);
}

std::tuple<at::Tensor, at::Tensor> group_mean_cpu(const at::Tensor& values, const at::Tensor& groups,
                                                  int64_t num_groups) {
  check_group_inputs(values, groups, num_groups, "values");
  TORCH_CHECK(values.dim() <= 2, "fairlit: `values` must be [N] or [N, D], got ", values.sizes());
  const at::Tensor g = groups.contiguous();
  at::Tensor sums = group_sum_acc(values, g, num_groups);
  at::Tensor count = counts_of(g, num_groups);
  // Empty groups: divide by 1 so that the mean is exactly 0 (never NaN).
  at::Tensor mean = sums / count.clamp_min(1).to(sums.scalar_type()).unsqueeze(1);
  return {shape_like_values(mean, values), count};
}

// Per chunk of rows, the elementwise part (softplus / sigmoid of neg - pos) runs as ATen ops on the
// chunk's slice: they use ATen's vectorised (SLEEF) exp/log1p, which this extension could only get from
// the compiler with -ffast-math or per-ISA builds. A chunk (<= ~16k rows) stays in cache, so the pass is
// still fused: no [N, M] temporary is ever materialised.
at::Tensor neg_minus_pos(const at::Tensor& pos, const at::Tensor& neg2d, int64_t r0, int64_t r1,
                         at::ScalarType acc) {
  return neg2d.slice(0, r0, r1).to(acc) - pos.slice(0, r0, r1).to(acc).unsqueeze(1);
}

std::tuple<at::Tensor, at::Tensor> group_bpr_loss_cpu(const at::Tensor& pos, const at::Tensor& neg,
                                                      const at::Tensor& groups, int64_t num_groups,
                                                      const c10::optional<at::Tensor>& weight) {
  check_bpr_inputs(pos, neg, groups, weight);
  TORCH_CHECK(num_groups >= 1, "fairlit: `num_groups` must be >= 1, got ", num_groups);
  const at::Tensor p = pos.contiguous(), g = groups.contiguous();
  const at::Tensor n = (neg.dim() == 1 ? neg.unsqueeze(1) : neg).contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int64_t rows = p.size(0), m = n.size(1);
  const at::ScalarType acc_type = loss_dtype(p.scalar_type());
  at::Tensor loss = at::empty({num_groups}, p.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES(acc_type, "fairlit_group_bpr_cpu", [&] {
    using acc_t = scalar_t;
    const at::Tensor wa = w.defined() ? w.to(acc_type) : w;
    const acc_t* ws = wa.defined() ? wa.data_ptr<acc_t>() : nullptr;
    const int64_t* gs = g.data_ptr<int64_t>();
    const acc_t inv_m = m > 0 ? acc_t(1) / acc_t(m) : acc_t(0);
    // Fixed chunking (a function of N only) keeps the group sums deterministic for any thread count.
    const int64_t chunks = num_chunks(rows, num_groups);
    std::vector<acc_t> partial(static_cast<size_t>(chunks * num_groups), acc_t(0));
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
        const at::Tensor sp = at::softplus(neg_minus_pos(p, n, r0, r1, acc_type), 1, 20).contiguous();
        const acc_t* sps = sp.data_ptr<acc_t>();
        acc_t* part = partial.data() + c * num_groups;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t grp = gs[r];
          TORCH_CHECK(grp >= 0 && grp < num_groups, "fairlit: `groups` contains ", grp, " at position ", r,
                      "; expected ids in [0, ", num_groups, ")");
          acc_t s = 0;
          for (int64_t j = 0; j < m; ++j) s += sps[(r - r0) * m + j];
          s *= inv_m;
          if (ws != nullptr) s *= ws[r];
          part[grp] += s;
        }
      }
    });
    acc_t* out = loss.data_ptr<acc_t>();
    for (int64_t j = 0; j < num_groups; ++j) {
      acc_t acc = 0;
      for (int64_t c = 0; c < chunks; ++c) acc += partial[c * num_groups + j];
      out[j] = acc;
    }
  });
  return {loss, counts_of(g, num_groups)};
}

// d loss_sum[g_n] / d neg[n, j] = w_n / M * sigmoid(neg[n, j] - pos[n]); d / d pos[n] = -sum_j of that.
std::tuple<at::Tensor, at::Tensor> group_bpr_loss_backward_cpu(const at::Tensor& grad_loss,
                                                               const at::Tensor& pos, const at::Tensor& neg,
                                                               const at::Tensor& groups,
                                                               const c10::optional<at::Tensor>& weight) {
  check_bpr_inputs(pos, neg, groups, weight);
  const at::ScalarType acc_type = loss_dtype(pos.scalar_type());
  const at::Tensor gl = grad_loss.contiguous().to(acc_type);
  const at::Tensor p = pos.contiguous(), g = groups.contiguous();
  const at::Tensor n = (neg.dim() == 1 ? neg.unsqueeze(1) : neg).contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous().to(acc_type) : at::Tensor();
  const int64_t rows = p.size(0), num_groups = gl.size(0), m = n.size(1);
  at::Tensor grad_pos = at::empty_like(p);
  at::Tensor grad_neg = at::empty_like(n);
  const int64_t* gs = g.data_ptr<int64_t>();
  at::parallel_for(0, rows, 4096, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      TORCH_CHECK(gs[r] >= 0 && gs[r] < num_groups, "fairlit: `groups` contains ", gs[r], " at position ", r,
                  "; expected ids in [0, ", num_groups, ")");
    }
    at::Tensor scale = gl.index_select(0, g.slice(0, r0, r1)) / static_cast<double>(m);
    if (w.defined()) scale.mul_(w.slice(0, r0, r1));
    const at::Tensor d = at::sigmoid(neg_minus_pos(p, n, r0, r1, acc_type)).mul_(scale.unsqueeze(1));
    grad_neg.slice(0, r0, r1).copy_(d);
    grad_pos.slice(0, r0, r1).copy_(d.sum(1).neg_());
  });
  return {grad_pos, neg.dim() == 1 ? grad_neg.squeeze(1) : grad_neg};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CPU, m) {
  m.impl("group_sum", &group_sum_cpu);
  m.impl("group_mean", &group_mean_cpu);
  m.impl("group_bpr_loss", &group_bpr_loss_cpu);
  m.impl("group_bpr_loss_backward", &group_bpr_loss_backward_cpu);
}

}  // namespace fairlit
