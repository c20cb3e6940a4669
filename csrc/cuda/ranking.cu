// CUDA kernels of the ranking family: score_candidates (+ backward), topk_scores and sampled_topk_group_stats.
//
// Parallel plan:
// - score_candidates: each group of `lanes` threads (a power of two <= 32, ~d) computes one (row,
//   candidate) dot product with opmath accumulation and a fixed shuffle tree; [B, C, d] is never formed.
//   Candidates are [C] (shared) or [B, C]; an item id outside [0, I) is never read and scores 0.
// - score_candidates_backward: grad_user: each block processes one row b, its threads split the d
//   columns and add grad[b, c] * item[cand[b, c]] over c in order. grad_item (deterministic, no atomics):
//   the B*C candidate ids (the [C] case expanded) are stably sorted; each warp processes one item i, finds
//   its run [lower_bound(i), lower_bound(i + 1)) in the sorted ids, adds grad * user_emb[row] over the
//   run in sorted (= pair) order and writes row i, so every row is written (0 for an item never seen)
//   and out-of-range ids, which fall in no run, are skipped.
// - topk_scores, float32/half/bfloat16: every (row, item) is encoded as one int64 key whose ascending
//   order is (score desc, id asc) exactly (utils.cuh); excluded items get INT64_MAX. Full ranking loops
//   over item tiles of T items (B * T * 8 bytes <= kTileBytes): S = user_emb @ item_tile^T (cuBLAS, in
//   the embedding dtype), one thread per score writes its key, one kernel marks the exclusions that fall
//   in the tile (exclusion entries are sorted by item id once, so a tile's entries are a contiguous range
//   found by binary search on the device), then at::topk(cat(running, tile), k, smallest) keeps the k best
//   keys per row; a final sort and decode give (value, id), padded with (-inf, -1). Candidate path: scores
//   from the score kernel, exclusion by binary search of row * I + item in the sorted exclusion keys,
//   same key encoding and one at::topk. Extra memory is O(B * k + B * T).
// - topk_scores, float64: a 32-bit key would merge distinct doubles, so rows are ordered by a stable sort
//   of the negated scores instead (excluded entries become NaN, which sorts last, with id -1). Ties keep
//   position order, which is id order: within a tile items are in id order and the running list (first
//   in the concatenation) holds only lower ids; candidates are first stably sorted by id.
// - sampled_topk_group_stats: S = user_emb @ item_emb[sampled]^T (cuBLAS, ids clamped for the gather), then one
//   block per row selects its k slots in k rounds: round j takes the first entry, in the order (NaN first, score
//   descending, position ascending), that comes after round j-1's pick (a block-wide argmin with a fixed tree).
//   Positions whose id lies outside [0, I) are never picked; missing slots are (-inf, -1). Thread 0 of the block
//   then adds the row's k * P contributions into its own row of a [B, G] float64 buffer (no atomics), and
//   consumed = that buffer's column sums: deterministic. Intended for Q up to a few thousand (O(k Q / 256) per row).
// No host sync anywhere (exclusion rows are found by binary search in indptr on the device).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "utils.cuh"

namespace fairlit {
namespace {

using cuda::kThreads;

constexpr int64_t kTileBytes = int64_t(256) << 20;  // bound on B * T * 8 of one item tile

// ---- score_candidates -----------------------------------------------------------------------------

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) score_kernel(const scalar_t* __restrict__ user,
                                                         const scalar_t* __restrict__ item,
                                                         const int64_t* __restrict__ cand, bool shared,
                                                         int64_t batch, int64_t ncand, int64_t items, int64_t dim,
                                                         int lanes, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pairs = batch * ncand;
  const int64_t per_block = blockDim.x / lanes;
  const int lane = threadIdx.x % lanes;
  // `base` is block-uniform: every lane of a warp runs the same iterations (the shuffles need them).
  for (int64_t base = int64_t(blockIdx.x) * per_block; base < pairs; base += int64_t(gridDim.x) * per_block) {
    const int64_t pair = base + threadIdx.x / lanes;
    acc_t acc = 0;
    if (pair < pairs) {
      const int64_t b = pair / ncand;
      const int64_t id = shared ? cand[pair % ncand] : cand[pair];
      if (id >= 0 && id < items) {  // an out-of-range id is never dereferenced; it scores 0
        const scalar_t* u = user + b * dim;
        const scalar_t* v = item + id * dim;
        for (int64_t d = lane; d < dim; d += lanes) acc += static_cast<acc_t>(u[d]) * static_cast<acc_t>(v[d]);
      }
    }
    acc = cuda::group_sum(acc, lanes);
    if (pair < pairs && lane == 0) out[pair] = static_cast<scalar_t>(acc);
  }
}

// Scores [B, C] of contiguous embeddings and candidates.
at::Tensor scores_of(const at::Tensor& u, const at::Tensor& it, const at::Tensor& cand) {
  const int64_t batch = u.size(0), dim = u.size(1), items = it.size(0);
  const int64_t ncand = cand.size(-1);
  const bool shared = cand.dim() == 1;
  at::Tensor out = at::empty({batch, ncand}, u.options());
  const int64_t pairs = batch * ncand;
  if (pairs == 0) return out;
  const int lanes = cuda::lanes_for(dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "fairlit_score_candidates_cuda", [&] {
    score_kernel<scalar_t><<<cuda::blocks_for(pairs, kThreads / lanes, int64_t(1) << 20), kThreads, 0,
                             c10::cuda::getCurrentCUDAStream()>>>(
        u.data_ptr<scalar_t>(), it.data_ptr<scalar_t>(), cand.data_ptr<int64_t>(), shared, batch, ncand, items, dim,
        lanes, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor score_candidates_cuda(const at::Tensor& user_emb, const at::Tensor& item_emb,
                                 const at::Tensor& candidates) {
  check_embedding_inputs(user_emb, item_emb);
  check_candidates(candidates, user_emb.size(0));
  check_same_device(user_emb, candidates, "user_emb", "candidates");
  c10::cuda::CUDAGuard guard(user_emb.device());
  return scores_of(user_emb.contiguous(), item_emb.contiguous(), candidates.contiguous());
}

// grad_user[b, :] = sum_c grad[b, c] * item[cand[b, c], :]; one block per row (grid stride).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) grad_user_kernel(const scalar_t* __restrict__ grad,
                                                             const scalar_t* __restrict__ item,
                                                             const int64_t* __restrict__ cand, bool shared,
                                                             int64_t batch, int64_t ncand, int64_t items,
                                                             int64_t dim, scalar_t* __restrict__ grad_user) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    const int64_t* row_cand = shared ? cand : cand + b * ncand;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      acc_t acc = 0;
      for (int64_t c = 0; c < ncand; ++c) {
        const int64_t id = row_cand[c];
        if (id >= 0 && id < items) {
          acc += static_cast<acc_t>(grad[b * ncand + c]) * static_cast<acc_t>(item[id * dim + d]);
        }
      }
      grad_user[b * dim + d] = static_cast<scalar_t>(acc);
    }
  }
}

// grad_item[i, :] = sum over the pairs p with id i, in sorted order, of grad[p] * user[p / C, :];
// one warp per item (grid stride).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) grad_item_kernel(const scalar_t* __restrict__ grad,
                                                             const scalar_t* __restrict__ user,
                                                             const int64_t* __restrict__ sorted_ids,
                                                             const int64_t* __restrict__ pair_of,
                                                             int64_t pairs, int64_t ncand, int64_t items,
                                                             int64_t dim, scalar_t* __restrict__ grad_item) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t i = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32; i < items;
       i += int64_t(gridDim.x) * warps_per_block) {
    const int64_t lo = cuda::lower_bound(sorted_ids, pairs, i);
    const int64_t hi = cuda::lower_bound(sorted_ids, pairs, i + 1);
    for (int64_t d = lane; d < dim; d += 32) {
      acc_t acc = 0;
      for (int64_t q = lo; q < hi; ++q) {
        const int64_t p = pair_of[q];
        acc += static_cast<acc_t>(grad[p]) * static_cast<acc_t>(user[(p / ncand) * dim + d]);
      }
      grad_item[i * dim + d] = static_cast<scalar_t>(acc);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> score_candidates_backward_cuda(const at::Tensor& grad, const at::Tensor& user_emb,
                                                                  const at::Tensor& item_emb,
                                                                  const at::Tensor& candidates) {
  check_embedding_inputs(user_emb, item_emb);
  check_candidates(candidates, user_emb.size(0));
  check_same_device(user_emb, candidates, "user_emb", "candidates");
  check_same_device(user_emb, grad, "user_emb", "grad");
  c10::cuda::CUDAGuard guard(user_emb.device());
  const at::Tensor u = user_emb.contiguous(), it = item_emb.contiguous(), cand = candidates.contiguous();
  const int64_t batch = u.size(0), ncand = cand.size(-1), dim = u.size(1), items = it.size(0);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == batch && grad.size(1) == ncand, "fairlit: grad must be [B, C] = [",
              batch, ", ", ncand, "], got ", grad.sizes());
  const at::Tensor g = grad.contiguous().to(u.scalar_type());
  const bool shared = cand.dim() == 1;
  const int64_t pairs = batch * ncand;
  at::Tensor grad_user = at::empty_like(u);
  at::Tensor grad_item = at::empty_like(it);
  if (pairs == 0 || dim == 0) {
    grad_user.zero_();
    grad_item.zero_();
    return {grad_user, grad_item};
  }
  // Pairs grouped by item id: a stable sort keeps pair order inside each item's run.
  const at::Tensor flat = shared ? cand.unsqueeze(0).expand({batch, ncand}).reshape({pairs}) : cand.view({pairs});
  at::Tensor sorted_ids, pair_of;
  std::tie(sorted_ids, pair_of) = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "fairlit_score_candidates_bwd_cuda", [&] {
    const int threads = static_cast<int>(std::min<int64_t>(kThreads, cuda::ceil_div(dim, 32) * 32));
    grad_user_kernel<scalar_t><<<cuda::blocks_for(batch, 1), threads, 0, stream>>>(
        g.data_ptr<scalar_t>(), it.data_ptr<scalar_t>(), cand.data_ptr<int64_t>(), shared, batch, ncand, items, dim,
        grad_user.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (items > 0) {
      grad_item_kernel<scalar_t><<<cuda::blocks_for(items, kThreads / 32), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), sorted_ids.data_ptr<int64_t>(), pair_of.data_ptr<int64_t>(),
          pairs, ncand, items, dim, grad_item.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_user, grad_item};
}

// ---- topk_scores ----------------------------------------------------------------------------------

// Marks: float path writes the excluded key; float64 path writes (NaN, -1).
struct KeyMark {
  int64_t* keys;
  __device__ void operator()(int64_t offset) const { keys[offset] = cuda::kExcludedKey; }
};

struct DoubleMark {
  double* neg_scores;
  int64_t* ids;
  __device__ void operator()(int64_t offset) const {
    neg_scores[offset] = cuda::nan_d();
    ids[offset] = -1;
  }
};

// Exclusion entries with item in [i0, i1) (a contiguous range of the item-sorted entries) are marked
// in the [B, width] tile at (row, item - i0). Every thread finds the range itself: no host sync.
template <typename Mark>
__global__ void __launch_bounds__(kThreads) mark_tile_kernel(Mark mark, const int64_t* __restrict__ sorted_items,
                                                             const int64_t* __restrict__ entry_of,
                                                             const int64_t* __restrict__ indptr, int64_t batch,
                                                             int64_t nnz, int64_t i0, int64_t i1, int64_t width) {
  const int64_t lo = cuda::lower_bound(sorted_items, nnz, i0);
  const int64_t hi = cuda::lower_bound(sorted_items, nnz, i1);
  for (int64_t q = lo + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < hi; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = cuda::csr_row_of(indptr, batch, entry_of[q]);
    if (row >= 0 && row < batch) mark(row * width + (sorted_items[q] - i0));
  }
}

// key[b, j] of a [B, width] score tile whose column j is item i0 + j.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) encode_tile_kernel(const scalar_t* __restrict__ scores, int64_t total,
                                                               int64_t width, int64_t i0, int64_t* __restrict__ keys) {
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += int64_t(gridDim.x) * blockDim.x) {
    keys[x] = cuda::encode_key(static_cast<float>(scores[x]), i0 + x % width);
  }
}

// float64 tile: (-score, id) with column j = item i0 + j.
__global__ void __launch_bounds__(kThreads) negate_tile_kernel(const double* __restrict__ scores, int64_t total,
                                                               int64_t width, int64_t i0,
                                                               double* __restrict__ neg_scores,
                                                               int64_t* __restrict__ ids) {
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += int64_t(gridDim.x) * blockDim.x) {
    neg_scores[x] = -scores[x];
    ids[x] = i0 + x % width;
  }
}

// keys [B, kk] (ascending) -> values / ids [B, k]; INT64_MAX and columns >= kk give (-inf, -1).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) decode_keys_kernel(const int64_t* __restrict__ keys, int64_t batch,
                                                               int64_t kk, int64_t k, scalar_t* __restrict__ values,
                                                               int64_t* __restrict__ ids) {
  const int64_t total = batch * k;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = x / k, j = x % k;
    float score = cuda::neg_inf_f();
    int64_t id = -1;
    if (j < kk) {
      const int64_t key = keys[b * kk + j];
      if (key != cuda::kExcludedKey) cuda::decode_key(key, &score, &id);
    }
    values[x] = static_cast<scalar_t>(score);
    ids[x] = id;
  }
}

// float64: (neg_scores, ids) [B, kk] in rank order -> values / ids [B, k]; id -1 or j >= kk: (-inf, -1).
__global__ void __launch_bounds__(kThreads) finish_double_kernel(const double* __restrict__ neg_scores,
                                                                 const int64_t* __restrict__ src_ids, int64_t batch,
                                                                 int64_t kk, int64_t k, double* __restrict__ values,
                                                                 int64_t* __restrict__ ids) {
  const int64_t total = batch * k;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = x / k, j = x % k;
    double score = -std::numeric_limits<double>::infinity();
    int64_t id = -1;
    if (j < kk && src_ids[b * kk + j] >= 0) {
      id = src_ids[b * kk + j];
      score = -neg_scores[b * kk + j];
    }
    values[x] = score;
    ids[x] = id;
  }
}

// Candidate path: sort keys (float path) or (-score, id) (float64 path) of each (row, candidate);
// an excluded or out-of-range candidate gets the excluded key / (NaN, -1).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) candidate_keys_kernel(
    const scalar_t* __restrict__ scores, const int64_t* __restrict__ cand, bool shared, int64_t batch, int64_t ncand,
    int64_t items, const int64_t* __restrict__ excluded, int64_t nnz, int64_t* __restrict__ keys,
    double* __restrict__ neg_scores, int64_t* __restrict__ ids) {
  const int64_t total = batch * ncand;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = x / ncand;
    const int64_t id = shared ? cand[x % ncand] : cand[x];
    bool valid = id >= 0 && id < items;
    if (valid && nnz > 0) valid = !cuda::sorted_contains(excluded, nnz, b * items + id);
    if (keys != nullptr) {
      keys[x] = valid ? cuda::encode_key(static_cast<float>(scores[x]), id) : cuda::kExcludedKey;
    } else {
      neg_scores[x] = valid ? -static_cast<double>(scores[x]) : cuda::nan_d();
      ids[x] = valid ? id : -1;
    }
  }
}

// row * I + item of each exclusion entry (-1 for an entry outside every row or an out-of-range item).
__global__ void __launch_bounds__(kThreads) exclusion_keys_kernel(const int64_t* __restrict__ indptr,
                                                                  const int64_t* __restrict__ indices, int64_t batch,
                                                                  int64_t nnz, int64_t items,
                                                                  int64_t* __restrict__ keys) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < nnz; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = cuda::csr_row_of(indptr, batch, e);
    const int64_t item = indices[e];
    keys[e] = (row >= 0 && row < batch && item >= 0 && item < items) ? row * items + item : -1;
  }
}

struct Exclusions {
  at::Tensor indptr;   // [B + 1]
  at::Tensor indices;  // [nnz]
  int64_t nnz = 0;     // 0: nothing to exclude
};

Exclusions exclusions_of(const c10::optional<at::Tensor>& exclude_indptr,
                         const c10::optional<at::Tensor>& exclude_indices, const at::Tensor& user_emb) {
  TORCH_CHECK(exclude_indptr.has_value() == exclude_indices.has_value(),
              "fairlit: pass both `exclude_indptr` and `exclude_indices`, or neither");
  Exclusions ex;
  if (!exclude_indptr.has_value()) return ex;
  const int64_t batch = user_emb.size(0);
  check_index(*exclude_indptr, "exclude_indptr");
  check_index(*exclude_indices, "exclude_indices");
  check_same_device(user_emb, *exclude_indptr, "user_emb", "exclude_indptr");
  check_same_device(user_emb, *exclude_indices, "user_emb", "exclude_indices");
  TORCH_CHECK(exclude_indptr->dim() == 1 && exclude_indptr->size(0) == batch + 1,
              "fairlit: `exclude_indptr` must be [B + 1] with B = ", batch, ", got ", exclude_indptr->sizes());
  check_dim(*exclude_indices, 1, "exclude_indices");
  // Values (monotone indptr, id range) are checked by the Python wrapper; the kernels only ever use
  // bounded binary searches on indptr and skip out-of-range rows / items, so bad values cannot fault.
  ex.indptr = exclude_indptr->contiguous();
  ex.indices = exclude_indices->contiguous();
  ex.nnz = ex.indices.numel();
  return ex;
}

unsigned int launch_blocks(int64_t total) { return cuda::blocks_for(total, kThreads); }

// The exclusion entries of one tile are a data-dependent range of the nnz entries: a grid that fills the
// device and strides over the range (each thread first binary-searches the range bounds).
unsigned int mark_blocks(int64_t nnz) { return cuda::blocks_for(nnz, kThreads, /*cap=*/1024); }

// Full ranking, float32 / half / bfloat16: running keys [B, <= k] folded over item tiles.
at::Tensor topk_keys_full(const at::Tensor& u, const at::Tensor& it, int64_t k, const Exclusions& ex,
                          int64_t tile) {
  const int64_t batch = u.size(0), items = it.size(0);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor sorted_items, entry_of;
  if (ex.nnz > 0) std::tie(sorted_items, entry_of) = at::sort(ex.indices, /*stable=*/false, 0, false);
  at::Tensor running;
  for (int64_t i0 = 0; i0 < items; i0 += tile) {
    const int64_t width = std::min(tile, items - i0);
    const at::Tensor scores = at::matmul(u, it.narrow(0, i0, width).t()).contiguous();  // [B, width]
    at::Tensor keys = at::empty({batch, width}, u.options().dtype(at::kLong));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "fairlit_topk_encode_cuda", [&] {
      encode_tile_kernel<scalar_t><<<launch_blocks(batch * width), kThreads, 0, stream>>>(
          scores.data_ptr<scalar_t>(), batch * width, width, i0, keys.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (ex.nnz > 0) {
      mark_tile_kernel<KeyMark><<<mark_blocks(ex.nnz), kThreads, 0, stream>>>(
          KeyMark{keys.data_ptr<int64_t>()}, sorted_items.data_ptr<int64_t>(), entry_of.data_ptr<int64_t>(),
          ex.indptr.data_ptr<int64_t>(), batch, ex.nnz, i0, i0 + width, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    running = running.defined() ? at::cat({running, keys}, 1) : keys;
    if (running.size(1) > k) {
      running = std::get<0>(at::topk(running, k, /*dim=*/1, /*largest=*/false, /*sorted=*/false));
    }
  }
  return std::get<0>(at::sort(running, /*dim=*/1, /*descending=*/false)).contiguous();
}

// Full ranking, float64: running (neg_scores, ids) [B, <= k] in rank order, folded over item tiles.
std::tuple<at::Tensor, at::Tensor> topk_double_full(const at::Tensor& u, const at::Tensor& it, int64_t k,
                                                    const Exclusions& ex, int64_t tile) {
  const int64_t batch = u.size(0), items = it.size(0);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor sorted_items, entry_of;
  if (ex.nnz > 0) std::tie(sorted_items, entry_of) = at::sort(ex.indices, /*stable=*/false, 0, false);
  at::Tensor run_neg, run_ids;
  for (int64_t i0 = 0; i0 < items; i0 += tile) {
    const int64_t width = std::min(tile, items - i0);
    const at::Tensor scores = at::matmul(u, it.narrow(0, i0, width).t()).contiguous();  // [B, width]
    at::Tensor neg = at::empty({batch, width}, scores.options());
    at::Tensor ids = at::empty({batch, width}, scores.options().dtype(at::kLong));
    negate_tile_kernel<<<launch_blocks(batch * width), kThreads, 0, stream>>>(
        scores.data_ptr<double>(), batch * width, width, i0, neg.data_ptr<double>(), ids.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (ex.nnz > 0) {
      mark_tile_kernel<DoubleMark><<<mark_blocks(ex.nnz), kThreads, 0, stream>>>(
          DoubleMark{neg.data_ptr<double>(), ids.data_ptr<int64_t>()}, sorted_items.data_ptr<int64_t>(),
          entry_of.data_ptr<int64_t>(), ex.indptr.data_ptr<int64_t>(), batch, ex.nnz, i0, i0 + width, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (run_neg.defined()) {
      neg = at::cat({run_neg, neg}, 1);
      ids = at::cat({run_ids, ids}, 1);
    }
    // Ascending -score = descending score; NaN (excluded) last; stable: ties keep id order.
    at::Tensor sorted, order;
    std::tie(sorted, order) = at::sort(neg, /*stable=*/true, /*dim=*/1, /*descending=*/false);
    const int64_t kk = std::min(k, sorted.size(1));
    run_neg = sorted.narrow(1, 0, kk).contiguous();
    run_ids = ids.gather(1, order.narrow(1, 0, kk)).contiguous();
  }
  return {run_neg, run_ids};
}

std::tuple<at::Tensor, at::Tensor> topk_scores_cuda(const at::Tensor& user_emb, const at::Tensor& item_emb, int64_t k,
                                                    const c10::optional<at::Tensor>& candidates,
                                                    const c10::optional<at::Tensor>& exclude_indptr,
                                                    const c10::optional<at::Tensor>& exclude_indices) {
  check_embedding_inputs(user_emb, item_emb);
  TORCH_CHECK(k >= 1, "fairlit: `k` must be >= 1, got ", k);
  const int64_t batch = user_emb.size(0), items = item_emb.size(0);
  TORCH_CHECK(items < (int64_t(1) << 32), "fairlit: topk_scores on CUDA supports fewer than 2^32 items, got ", items);
  const Exclusions ex = exclusions_of(exclude_indptr, exclude_indices, user_emb);
  at::Tensor cand;
  if (candidates.has_value()) {
    check_candidates(*candidates, batch);
    check_same_device(user_emb, *candidates, "user_emb", "candidates");
    cand = candidates->contiguous();
  }
  // After the device checks: a CPU user_emb with CUDA exclusions gets their message, not CUDAGuard's.
  c10::cuda::CUDAGuard guard(user_emb.device());
  const bool is_double = user_emb.scalar_type() == at::kDouble;
  at::Tensor values = at::empty({batch, k}, user_emb.options());
  at::Tensor indices = at::empty({batch, k}, user_emb.options().dtype(at::kLong));
  if (batch == 0) return {values, indices};
  const at::Tensor u = user_emb.contiguous(), it = item_emb.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Ranked entries [B, kk] (kk <= k) in rank order: keys, or (neg_scores, ids) for float64.
  at::Tensor keys, neg, ids;
  int64_t kk = 0;
  if (cand.defined()) {
    const int64_t ncand = cand.size(-1);
    if (ncand > 0) {
      at::Tensor excluded;  // sorted row * I + item of every exclusion entry
      if (ex.nnz > 0) {
        excluded = at::empty({ex.nnz}, ex.indices.options());
        exclusion_keys_kernel<<<launch_blocks(ex.nnz), kThreads, 0, stream>>>(
            ex.indptr.data_ptr<int64_t>(), ex.indices.data_ptr<int64_t>(), batch, ex.nnz, items,
            excluded.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        excluded = std::get<0>(at::sort(excluded, /*dim=*/0, /*descending=*/false));
      }
      const at::Tensor scores = scores_of(u, it, cand);
      const int64_t* ex_ptr = ex.nnz > 0 ? excluded.data_ptr<int64_t>() : nullptr;
      kk = std::min(k, ncand);
      if (!is_double) {
        at::Tensor all = at::empty({batch, ncand}, cand.options());
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "fairlit_topk_cand_cuda", [&] {
          candidate_keys_kernel<scalar_t><<<launch_blocks(batch * ncand), kThreads, 0, stream>>>(
              scores.data_ptr<scalar_t>(), cand.data_ptr<int64_t>(), cand.dim() == 1, batch, ncand, items, ex_ptr,
              ex.nnz, all.data_ptr<int64_t>(), nullptr, nullptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        keys = kk < ncand ? std::get<0>(at::topk(all, kk, 1, /*largest=*/false, /*sorted=*/true))
                          : std::get<0>(at::sort(all, /*dim=*/1, /*descending=*/false));
        keys = keys.contiguous();
      } else {
        at::Tensor all_neg = at::empty({batch, ncand}, scores.options());
        at::Tensor all_ids = at::empty({batch, ncand}, cand.options());
        candidate_keys_kernel<double><<<launch_blocks(batch * ncand), kThreads, 0, stream>>>(
            scores.data_ptr<double>(), cand.data_ptr<int64_t>(), cand.dim() == 1, batch, ncand, items, ex_ptr, ex.nnz,
            nullptr, all_neg.data_ptr<double>(), all_ids.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        // Ties to the lower id: order by id first (stable), then stably by -score (NaN = excluded last).
        at::Tensor by_id, order;
        std::tie(by_id, order) = at::sort(all_ids, /*stable=*/true, /*dim=*/1, /*descending=*/false);
        at::Tensor sorted, order2;
        std::tie(sorted, order2) =
            at::sort(all_neg.gather(1, order), /*stable=*/true, /*dim=*/1, /*descending=*/false);
        neg = sorted.narrow(1, 0, kk).contiguous();
        ids = by_id.gather(1, order2.narrow(1, 0, kk)).contiguous();
      }
    }
  } else if (items > 0) {
    const int64_t tile = std::max<int64_t>(1, std::min(items, kTileBytes / (8 * batch)));
    if (!is_double) {
      keys = topk_keys_full(u, it, k, ex, tile);
      kk = keys.size(1);
    } else {
      std::tie(neg, ids) = topk_double_full(u, it, k, ex, tile);
      kk = neg.size(1);
    }
  }

  // Decode and pad to k; with nothing ranked (kk == 0) every slot is (-inf, -1).
  const int64_t total = batch * k;
  if (!is_double) {
    const at::Tensor src = kk > 0 ? keys : at::empty({batch, 0}, indices.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "fairlit_topk_decode_cuda", [&] {
      decode_keys_kernel<scalar_t><<<launch_blocks(total), kThreads, 0, stream>>>(
          src.data_ptr<int64_t>(), batch, kk, k, values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    const at::Tensor src_neg = kk > 0 ? neg : at::empty({batch, 0}, values.options());
    const at::Tensor src_ids = kk > 0 ? ids : at::empty({batch, 0}, indices.options());
    finish_double_kernel<<<launch_blocks(total), kThreads, 0, stream>>>(
        src_neg.data_ptr<double>(), src_ids.data_ptr<int64_t>(), batch, kk, k, values.data_ptr<double>(),
        indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {values, indices};
}

// ---- sampled_topk_group_stats ----------------------------------------------------------------------

// (a, qa) comes before (b, qb) in the dual signal's order: NaN first, then higher scores, ties to the lower position.
template <typename V>
__device__ __forceinline__ bool slot_before(V a, int64_t qa, V b, int64_t qb) {
  const bool na = a != a, nb = b != b;
  if (na || nb) return na && (!nb || qa < qb);
  return a > b || (a == b && qa < qb);
}

template <typename V>
__global__ void __launch_bounds__(kThreads) sampled_topk_group_kernel(
    const V* __restrict__ scores, const int64_t* __restrict__ sampled, int64_t nsampled, int64_t items, int64_t k,
    const int64_t* __restrict__ group_ids, const double* __restrict__ group_weights, int64_t width,
    int64_t num_groups, bool sigmoid_utility, V* __restrict__ values, int64_t* __restrict__ top_items,
    double* __restrict__ rows) {
  __shared__ V best_val[kThreads];
  __shared__ int64_t best_pos[kThreads];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const V* row = scores + b * nsampled;
  V prev_val = V(0);
  int64_t prev_pos = -1;  // -1: nothing picked yet
  for (int64_t j = 0; j < k; ++j) {
    V val = V(0);
    int64_t pos = -1;
    for (int64_t q = tid; q < nsampled; q += blockDim.x) {
      const int64_t id = sampled[q];
      if (id < 0 || id >= items) continue;
      const V s = row[q];
      if (prev_pos >= 0 && !slot_before(prev_val, prev_pos, s, q)) continue;
      if (pos < 0 || slot_before(s, q, val, pos)) {
        val = s;
        pos = q;
      }
    }
    best_val[tid] = val;
    best_pos[tid] = pos;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
      if (tid < stride) {
        const int64_t other = best_pos[tid + stride];
        if (other >= 0 && (best_pos[tid] < 0 || slot_before(best_val[tid + stride], other, best_val[tid], best_pos[tid]))) {
          best_val[tid] = best_val[tid + stride];
          best_pos[tid] = other;
        }
      }
      __syncthreads();
    }
    prev_val = best_val[0];
    prev_pos = best_pos[0];
    __syncthreads();  // everyone has read the winner before the arrays are reused
    if (tid == 0) {
      values[b * k + j] = prev_pos >= 0 ? prev_val : -std::numeric_limits<V>::infinity();
      top_items[b * k + j] = prev_pos >= 0 ? sampled[prev_pos] : -1;
    }
    if (prev_pos < 0) {  // nothing left: the remaining slots stay empty
      for (int64_t r = j + 1 + tid; r < k; r += blockDim.x) {
        values[b * k + r] = -std::numeric_limits<V>::infinity();
        top_items[b * k + r] = -1;
      }
      break;
    }
  }
  // Every thread leaves the loop in the same round (prev_pos is block-uniform); the barrier makes the empty
  // slots written by other threads visible to thread 0 before it reads them back.
  __syncthreads();
  if (tid != 0) return;
  double* out = rows + b * num_groups;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t item = top_items[b * k + j];
    const double v = static_cast<double>(values[b * k + j]);
    if (item < 0 || !isfinite(v)) continue;
    const double util = sigmoid_utility ? stable_sigmoid(v) : 1.0;
    for (int64_t p = 0; p < width; ++p) {
      const int64_t g = group_ids[item * width + p];
      if (g >= 0 && g < num_groups) out[g] += util * group_weights[item * width + p];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sampled_topk_group_stats_cuda(
    const at::Tensor& user_emb, const at::Tensor& item_emb, const at::Tensor& sampled, int64_t k,
    const at::Tensor& group_ids, const at::Tensor& group_weights, int64_t num_groups, bool sigmoid_utility,
    bool per_row) {
  check_sampled_group_inputs(user_emb, item_emb, sampled, k, group_ids, group_weights, num_groups);
  c10::cuda::CUDAGuard guard(user_emb.device());
  const int64_t batch = user_emb.size(0), items = item_emb.size(0), nsampled = sampled.size(0);
  const at::ScalarType rank_type = user_emb.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor values = at::empty({batch, k}, user_emb.options().dtype(rank_type));
  at::Tensor top_items = at::empty({batch, k}, user_emb.options().dtype(at::kLong));
  at::Tensor rows = at::zeros({batch, num_groups}, user_emb.options().dtype(at::kDouble));
  if (batch > 0 && items > 0) {
    const at::Tensor ids = sampled.contiguous();
    const at::Tensor gathered = item_emb.index_select(0, ids.clamp(0, items - 1));
    const at::Tensor scores = at::mm(user_emb.to(rank_type), gathered.to(rank_type).t())
                                  .to(user_emb.scalar_type()).to(rank_type).contiguous();
    const at::Tensor gid = group_ids.contiguous();
    const at::Tensor gw = group_weights.to(at::kDouble).contiguous();
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(rank_type, "fairlit_sampled_topk_group_stats_cuda", [&] {
      sampled_topk_group_kernel<scalar_t><<<static_cast<unsigned int>(batch), kThreads, 0, stream>>>(
          scores.data_ptr<scalar_t>(), ids.data_ptr<int64_t>(), nsampled, items, k, gid.data_ptr<int64_t>(),
          gw.data_ptr<double>(), gid.size(1), num_groups, sigmoid_utility, values.data_ptr<scalar_t>(),
          top_items.data_ptr<int64_t>(), rows.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else if (batch > 0) {
    values.fill_(-std::numeric_limits<double>::infinity());
    top_items.fill_(-1);
  }
  at::Tensor consumed = rows.sum(0);
  if (!per_row) rows = rows.new_zeros({0, num_groups});
  return {values.to(user_emb.scalar_type()), top_items, consumed, rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CUDA, m) {
  m.impl("score_candidates", &score_candidates_cuda);
  m.impl("score_candidates_backward", &score_candidates_backward_cuda);
  m.impl("topk_scores", &topk_scores_cuda);
  m.impl("sampled_topk_group_stats", &sampled_topk_group_stats_cuda);
}

}  // namespace fairlit
