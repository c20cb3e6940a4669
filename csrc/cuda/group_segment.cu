// CUDA kernels of the group_segment family: group_sum, group_mean, group_bpr_loss (+ backward).
//
// Parallel plan (deterministic: no float atomics; every sum has a fixed order that depends on the data
// layout only, so results are bitwise reproducible run to run):
//  1. The N rows are stably sorted by group id (at::sort(stable=true): sorted ids + permutation) and the
//     segment offsets are offsets[g] = first sorted position with id >= g (at::searchsorted of 0..G).
//     Ids outside [0, G) sort before offsets[0] or at/after offsets[G]: they lie in no segment, are never
//     used as an index, and count nowhere.
//  2. Each group's segment is cut into chunks of kChunkRows rows; chunk_ptr = exclusive cumsum of
//     ceil(count_g / kChunkRows). The grid has min(N, ceil(N / L) + G) blocks, an upper bound on the
//     number of chunks known on the host (no device sync); block b finds its (group, chunk) by binary
//     search in chunk_ptr and exits when b >= chunk_ptr[G]. Each block processes one chunk for tiles of
//     TX columns (blockIdx.y strides over the tiles): thread (tx, ty) adds rows ty, ty + TY, ... of the
//     chunk in order, then a fixed shared-memory tree over ty writes partial[b, column].
//     group_bpr_loss uses the same pass with the per-sample loss w_n * mean_m softplus(neg - pos) computed
//     while reading the row (one fused pass over pos / neg).
//  3. One thread per (group, column) adds its group's partials in chunk order (an empty group gives 0).
// group_bpr_loss_backward is elementwise: `lanes` threads per row (a power of two <= 32) write
// grad_neg[n, :] and a fixed shuffle tree gives grad_pos[n]; a sample whose group id is out of range
// gets zero gradient.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../checks.h"
#include "utils.cuh"

namespace fairlit {
namespace {

using cuda::kThreads;

constexpr int64_t kChunkRows = 2048;

// Reads value[row, col] in the accumulation type.
template <typename scalar_t, typename acc_t>
struct ValueReader {
  const scalar_t* values;
  int64_t width;
  __device__ acc_t operator()(int64_t row, int64_t col) const {
    return static_cast<acc_t>(values[row * width + col]);
  }
};

// Per-sample BPR loss w_n * mean_m softplus(neg[n, m] - pos[n]) (one column).
template <typename scalar_t, typename acc_t>
struct BprLossReader {
  const scalar_t* pos;
  const scalar_t* neg;
  const scalar_t* weight;  // nullptr: unweighted
  int64_t m;
  acc_t inv_m;
  __device__ acc_t operator()(int64_t row, int64_t /*col*/) const {
    const acc_t p = static_cast<acc_t>(pos[row]);
    acc_t s = 0;
    for (int64_t j = 0; j < m; ++j) s += stable_softplus<acc_t>(static_cast<acc_t>(neg[row * m + j]) - p);
    s *= inv_m;
    if (weight != nullptr) s *= static_cast<acc_t>(weight[row]);
    return s;
  }
};

// Step 2: block b reduces chunk b (of group g) into partial[b, :].
template <typename acc_t, typename Reader>
__global__ void __launch_bounds__(kThreads) chunk_partial_kernel(Reader read, const int64_t* __restrict__ perm,
                                                                 const int64_t* __restrict__ offsets,
                                                                 const int64_t* __restrict__ chunk_ptr,
                                                                 int64_t num_groups, int64_t width,
                                                                 acc_t* __restrict__ partial) {
  __shared__ acc_t smem[kThreads];
  const int64_t b = blockIdx.x;
  if (b >= chunk_ptr[num_groups]) return;  // block-uniform: no chunk for this block
  const int64_t g = cuda::upper_bound(chunk_ptr, num_groups + 1, b) - 1;  // chunk_ptr[g] <= b < chunk_ptr[g+1]
  const int64_t start = offsets[g] + (b - chunk_ptr[g]) * kChunkRows;
  const int64_t end = min(offsets[g + 1], start + kChunkRows);
  const int64_t tx = threadIdx.x, ty = threadIdx.y, nx = blockDim.x, ny = blockDim.y;
  for (int64_t col0 = int64_t(blockIdx.y) * nx; col0 < width; col0 += int64_t(gridDim.y) * nx) {
    const int64_t col = col0 + tx;
    acc_t acc = 0;
    if (col < width) {
      for (int64_t pos = start + ty; pos < end; pos += ny) acc += read(perm[pos], col);
    }
    acc = cuda::column_tree_sum(smem, acc);
    if (ty == 0 && col < width) partial[b * width + col] = acc;
  }
}

// Step 3: out[g, col] = sum of partial[chunk_ptr[g] .. chunk_ptr[g+1]), col] in chunk order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const acc_t* __restrict__ partial,
                                                                const int64_t* __restrict__ chunk_ptr,
                                                                int64_t num_groups, int64_t width,
                                                                acc_t* __restrict__ out) {
  const int64_t total = num_groups * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = i / width, col = i % width;
    acc_t acc = 0;
    for (int64_t c = chunk_ptr[g]; c < chunk_ptr[g + 1]; ++c) acc += partial[c * width + col];
    out[i] = acc;
  }
}

// Step 1: the segment layout of `groups` (contiguous, non-empty).
struct SegmentPlan {
  at::Tensor perm;       // [N] row index of each sorted position
  at::Tensor offsets;    // [G + 1] segment starts
  at::Tensor chunk_ptr;  // [G + 1] first chunk (= block) of each group
  int64_t blocks;        // upper bound on the number of chunks
};

SegmentPlan make_plan(const at::Tensor& groups, int64_t num_groups) {
  const int64_t rows = groups.size(0);
  at::Tensor sorted, perm;
  std::tie(sorted, perm) = at::sort(groups, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor offsets = at::searchsorted(sorted, at::arange(num_groups + 1, groups.options()));
  at::Tensor counts = offsets.narrow(0, 1, num_groups) - offsets.narrow(0, 0, num_groups);
  at::Tensor chunks = at::div(counts + (kChunkRows - 1), kChunkRows, "floor");
  at::Tensor chunk_ptr = at::cat({at::zeros({1}, groups.options()), at::cumsum(chunks, 0)});
  // Each chunk holds >= 1 row, and sum_g ceil(c_g / L) <= ceil(N / L) + G.
  const int64_t blocks = std::min(rows, cuda::ceil_div(rows, kChunkRows) + num_groups);
  TORCH_CHECK(blocks <= int64_t(INT32_MAX), "fairlit: too many rows / groups for the CUDA kernel");
  return {perm, offsets, chunk_ptr, blocks};
}

at::Tensor counts_from(const SegmentPlan& plan, int64_t num_groups) {
  return plan.offsets.narrow(0, 1, num_groups) - plan.offsets.narrow(0, 0, num_groups);
}

// Sums read(row, col) over the rows of each group into out ([G, width], accumulation type; every entry
// is written, 0 for an empty group). Requires N >= 1 and width >= 1.
template <typename acc_t, typename Reader>
void segmented_reduce(const Reader& read, const SegmentPlan& plan, int64_t num_groups, int64_t width,
                      at::Tensor& out) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial = at::empty({plan.blocks, width}, out.options());
  const int tx = cuda::lanes_for(width);
  const dim3 block(tx, kThreads / tx);
  const dim3 grid(static_cast<unsigned int>(plan.blocks),
                  static_cast<unsigned int>(std::min<int64_t>(cuda::ceil_div(width, tx), 65535)));
  chunk_partial_kernel<acc_t, Reader><<<grid, block, 0, stream>>>(
      read, plan.perm.data_ptr<int64_t>(), plan.offsets.data_ptr<int64_t>(), plan.chunk_ptr.data_ptr<int64_t>(),
      num_groups, width, partial.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_partials_kernel<acc_t><<<cuda::blocks_for(num_groups * width, kThreads), kThreads, 0, stream>>>(
      partial.data_ptr<acc_t>(), plan.chunk_ptr.data_ptr<int64_t>(), num_groups, width, out.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Per-group sums of `values` ([N] or [N, D]) in the accumulation type, shape [G, D] (D = 1 for [N]).
at::Tensor group_sum_acc(const at::Tensor& values, const SegmentPlan* plan, int64_t num_groups) {
  const at::Tensor v = values.contiguous();
  const int64_t rows = v.size(0);
  const int64_t width = v.dim() == 2 ? v.size(1) : 1;
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "fairlit_group_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    out = at::empty({num_groups, width}, v.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (rows == 0 || width == 0) {
      out.zero_();
      return;
    }
    segmented_reduce<acc_t>(ValueReader<scalar_t, acc_t>{v.data_ptr<scalar_t>(), width}, *plan, num_groups,
                            width, out);
  });
  return out;
}

at::Tensor shape_like_values(const at::Tensor& acc, const at::Tensor& values) {
  at::Tensor out = acc.to(values.scalar_type());
  return values.dim() == 2 ? out : out.view({acc.size(0)});
}

void check_values_rank(const at::Tensor& values) {
  TORCH_CHECK(values.dim() <= 2, "fairlit: `values` must be [N] or [N, D], got ", values.sizes());
}

at::Tensor group_sum_cuda(const at::Tensor& values, const at::Tensor& groups, int64_t num_groups) {
  check_group_inputs(values, groups, num_groups, "values");
  check_values_rank(values);
  c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor g = groups.contiguous();
  if (g.size(0) == 0) return shape_like_values(group_sum_acc(values, nullptr, num_groups), values);
  const SegmentPlan plan = make_plan(g, num_groups);
  return shape_like_values(group_sum_acc(values, &plan, num_groups), values);
}

std::tuple<at::Tensor, at::Tensor> group_mean_cuda(const at::Tensor& values, const at::Tensor& groups,
                                                   int64_t num_groups) {
  check_group_inputs(values, groups, num_groups, "values");
  check_values_rank(values);
  c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor g = groups.contiguous();
  at::Tensor sums, count;
  if (g.size(0) == 0) {
    sums = group_sum_acc(values, nullptr, num_groups);
    count = at::zeros({num_groups}, g.options());
  } else {
    const SegmentPlan plan = make_plan(g, num_groups);
    sums = group_sum_acc(values, &plan, num_groups);
    count = counts_from(plan, num_groups);
  }
  // Empty groups: divide by 1 so that the mean is exactly 0 (never NaN).
  at::Tensor mean = sums / count.clamp_min(1).to(sums.scalar_type()).unsqueeze(1);
  return {shape_like_values(mean, values), count};
}

std::tuple<at::Tensor, at::Tensor> group_bpr_loss_cuda(const at::Tensor& pos, const at::Tensor& neg,
                                                       const at::Tensor& groups, int64_t num_groups,
                                                       const c10::optional<at::Tensor>& weight) {
  check_bpr_inputs(pos, neg, groups, weight);
  TORCH_CHECK(num_groups >= 1, "fairlit: `num_groups` must be >= 1, got ", num_groups);
  c10::cuda::CUDAGuard guard(pos.device());
  const at::Tensor p = pos.contiguous(), n = neg.contiguous(), g = groups.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int64_t rows = p.size(0);
  const int64_t m = n.dim() == 2 ? n.size(1) : 1;
  at::Tensor loss = at::empty({num_groups}, p.options().dtype(loss_dtype(p.scalar_type())));
  if (rows == 0) return {loss.zero_(), at::zeros({num_groups}, g.options())};
  const SegmentPlan plan = make_plan(g, num_groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "fairlit_group_bpr_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_m = m > 0 ? acc_t(1) / acc_t(m) : acc_t(0);
    const BprLossReader<scalar_t, acc_t> read{p.data_ptr<scalar_t>(), n.data_ptr<scalar_t>(),
                                              w.defined() ? w.data_ptr<scalar_t>() : nullptr, m, inv_m};
    segmented_reduce<acc_t>(read, plan, num_groups, /*width=*/1, loss);
  });
  return {loss, counts_from(plan, num_groups)};
}

// d loss_sum[g_n] / d neg[n, j] = w_n / M * sigmoid(neg[n, j] - pos[n]); d / d pos[n] = -sum_j of that.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) bpr_backward_kernel(
    const acc_t* __restrict__ grad_loss, const scalar_t* __restrict__ pos, const scalar_t* __restrict__ neg,
    const scalar_t* __restrict__ weight, const int64_t* __restrict__ groups, int64_t rows, int64_t m,
    int64_t num_groups, acc_t inv_m, int lanes, scalar_t* __restrict__ grad_pos, scalar_t* __restrict__ grad_neg) {
  const int64_t rows_per_block = blockDim.x / lanes;
  const int lane = threadIdx.x % lanes;
  // `base` is block-uniform, so every lane of a warp runs the same iterations (the shuffles need them).
  for (int64_t base = int64_t(blockIdx.x) * rows_per_block; base < rows; base += int64_t(gridDim.x) * rows_per_block) {
    const int64_t row = base + threadIdx.x / lanes;
    acc_t total = 0;
    if (row < rows) {
      const int64_t grp = groups[row];
      acc_t scale = (grp >= 0 && grp < num_groups) ? grad_loss[grp] * inv_m : acc_t(0);  // bad id: no gradient
      if (weight != nullptr) scale *= static_cast<acc_t>(weight[row]);
      const acc_t p = static_cast<acc_t>(pos[row]);
      for (int64_t j = lane; j < m; j += lanes) {
        const acc_t d = scale * stable_sigmoid<acc_t>(static_cast<acc_t>(neg[row * m + j]) - p);
        grad_neg[row * m + j] = static_cast<scalar_t>(d);
        total += d;
      }
    }
    total = cuda::group_sum(total, lanes);
    if (row < rows && lane == 0) grad_pos[row] = static_cast<scalar_t>(-total);
  }
}

std::tuple<at::Tensor, at::Tensor> group_bpr_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& pos,
                                                                const at::Tensor& neg, const at::Tensor& groups,
                                                                const c10::optional<at::Tensor>& weight) {
  check_bpr_inputs(pos, neg, groups, weight);
  check_float(grad_loss, "grad_loss");
  check_dim(grad_loss, 1, "grad_loss");
  check_same_device(pos, grad_loss, "pos", "grad_loss");
  c10::cuda::CUDAGuard guard(pos.device());
  const at::Tensor gl = grad_loss.contiguous().to(loss_dtype(pos.scalar_type()));
  const at::Tensor p = pos.contiguous(), n = neg.contiguous(), g = groups.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int64_t rows = p.size(0), num_groups = gl.size(0);
  const int64_t m = n.dim() == 2 ? n.size(1) : 1;
  at::Tensor grad_pos = at::empty_like(p);
  at::Tensor grad_neg = at::empty_like(n);
  if (rows == 0) return {grad_pos, grad_neg};
  const int lanes = cuda::lanes_for(m);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "fairlit_group_bpr_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_m = m > 0 ? acc_t(1) / acc_t(m) : acc_t(0);
    bpr_backward_kernel<scalar_t, acc_t>
        <<<cuda::blocks_for(rows, kThreads / lanes), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            gl.data_ptr<acc_t>(), p.data_ptr<scalar_t>(), n.data_ptr<scalar_t>(),
            w.defined() ? w.data_ptr<scalar_t>() : nullptr, g.data_ptr<int64_t>(), rows, m, num_groups, inv_m, lanes,
            grad_pos.data_ptr<scalar_t>(), grad_neg.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_pos, grad_neg};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CUDA, m) {
  m.impl("group_sum", &group_sum_cuda);
  m.impl("group_mean", &group_mean_cuda);
  m.impl("group_bpr_loss", &group_bpr_loss_cuda);
  m.impl("group_bpr_loss_backward", &group_bpr_loss_backward_cuda);
}

}  // namespace fairlit
