// CPU kernels of the group_segment family: group_sum, group_mean, group_bpr_loss (+ backward).
//
// Parallel plan: the N rows are cut into a fixed number of contiguous chunks (a function of N only,
// never of the thread count); each chunk accumulates into its own [G, D] partial buffer, and partials
// are then added in chunk order. The result is therefore bitwise identical run to run and for any
// number of threads, without atomics.
#include <ATen/Parallel.h>
#include <torch/library.h>

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

std::tuple<at::Tensor, at::Tensor> group_bpr_loss_cpu(const at::Tensor& pos, const at::Tensor& neg,
                                                      const at::Tensor& groups, int64_t num_groups,
                                                      const c10::optional<at::Tensor>& weight) {
  check_bpr_inputs(pos, neg, groups, weight);
  TORCH_CHECK(num_groups >= 1, "fairlit: `num_groups` must be >= 1, got ", num_groups);
  const at::Tensor p = pos.contiguous(), n = neg.contiguous(), g = groups.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int64_t rows = p.size(0);
  const int64_t m = n.dim() == 2 ? n.size(1) : 1;
  at::Tensor loss = at::empty({num_groups}, p.options().dtype(loss_dtype(p.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "fairlit_group_bpr_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ps = p.data_ptr<scalar_t>();
    const scalar_t* ns = n.data_ptr<scalar_t>();
    const scalar_t* ws = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const acc_t inv_m = m > 0 ? acc_t(1) / acc_t(m) : acc_t(0);
    chunked_group_reduce<acc_t>(rows, num_groups, 1, g.data_ptr<int64_t>(), loss.data_ptr<acc_t>(),
                                [&](int64_t r, acc_t* acc) {
                                  const acc_t pr = static_cast<acc_t>(ps[r]);
                                  acc_t s = 0;
                                  for (int64_t j = 0; j < m; ++j) {
                                    s += stable_softplus<acc_t>(static_cast<acc_t>(ns[r * m + j]) - pr);
                                  }
                                  s *= inv_m;
                                  if (ws != nullptr) s *= static_cast<acc_t>(ws[r]);
                                  acc[0] += s;
                                });
  });
  return {loss, counts_of(g, num_groups)};
}

// d loss_sum[g_n] / d neg[n, j] = w_n / M * sigmoid(neg[n, j] - pos[n]); d / d pos[n] = -sum_j of that.
std::tuple<at::Tensor, at::Tensor> group_bpr_loss_backward_cpu(const at::Tensor& grad_loss,
                                                               const at::Tensor& pos, const at::Tensor& neg,
                                                               const at::Tensor& groups,
                                                               const c10::optional<at::Tensor>& weight) {
  check_bpr_inputs(pos, neg, groups, weight);
  const at::Tensor gl = grad_loss.contiguous().to(loss_dtype(pos.scalar_type()));
  const at::Tensor p = pos.contiguous(), n = neg.contiguous(), g = groups.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int64_t rows = p.size(0), num_groups = gl.size(0);
  const int64_t m = n.dim() == 2 ? n.size(1) : 1;
  at::Tensor grad_pos = at::empty_like(p);
  at::Tensor grad_neg = at::empty_like(n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "fairlit_group_bpr_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ps = p.data_ptr<scalar_t>();
    const scalar_t* ns = n.data_ptr<scalar_t>();
    const scalar_t* ws = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const int64_t* gs = g.data_ptr<int64_t>();
    const acc_t* gls = gl.data_ptr<acc_t>();
    scalar_t* gp = grad_pos.data_ptr<scalar_t>();
    scalar_t* gn = grad_neg.data_ptr<scalar_t>();
    const acc_t inv_m = m > 0 ? acc_t(1) / acc_t(m) : acc_t(0);
    at::parallel_for(0, rows, 1024, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t grp = gs[r];
        TORCH_CHECK(grp >= 0 && grp < num_groups, "fairlit: `groups` contains ", grp, " at position ", r,
                    "; expected ids in [0, ", num_groups, ")");
        acc_t scale = gls[grp] * inv_m;
        if (ws != nullptr) scale *= static_cast<acc_t>(ws[r]);
        const acc_t pr = static_cast<acc_t>(ps[r]);
        acc_t total = 0;
        for (int64_t j = 0; j < m; ++j) {
          const acc_t d = scale * stable_sigmoid<acc_t>(static_cast<acc_t>(ns[r * m + j]) - pr);
          gn[r * m + j] = static_cast<scalar_t>(d);
          total += d;
        }
        gp[r] = static_cast<scalar_t>(-total);
      }
    });
  });
  return {grad_pos, grad_neg};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CPU, m) {
  m.impl("group_sum", &group_sum_cpu);
  m.impl("group_mean", &group_mean_cpu);
  m.impl("group_bpr_loss", &group_bpr_loss_cpu);
  m.impl("group_bpr_loss_backward", &group_bpr_loss_backward_cpu);
}

}  // namespace fairlit
