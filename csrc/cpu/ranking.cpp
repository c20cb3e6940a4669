// CPU kernels of the ranking family: score_candidates (+ backward), topk_scores and sampled_topk_group_stats.
//
// score_candidates: parallel over rows, one dot product per (row, candidate), never [B, C, d].
// Its item gradient is a deterministic segmented sum: the B*C (row, candidate) pairs are bucketed by
// item id with a counting sort, then each item sums its bucket in order (parallel over items).
// topk_scores (full ranking): user rows x item tiles of bounded size are scored with one GEMM each and
// folded into a per-row top-k list, so memory beyond the output is O(rows_per_tile * items_per_tile).
// A row's top k of a tile (full ranking, and the shared sample of sampled_topk_group_stats) is found through
// block maxima (`row_topk_by_blocks`) instead of testing every score against the running k-th.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../checks.h"

namespace fairlit {
namespace {

constexpr int64_t kRowTile = 256;
constexpr int64_t kItemTile = 4096;

at::Tensor expand_candidates(const at::Tensor& candidates, int64_t batch) {
  return candidates.dim() == 1 ? candidates.unsqueeze(0).expand({batch, candidates.size(0)}).contiguous()
                               : candidates.contiguous();
}

// <a, b> over n entries with 8 independent partial sums: a single running sum is one dependent add per
// entry (one add latency each), while 8 lanes vectorise and overlap.
template <typename scalar_t, typename acc_t>
inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  constexpr int64_t kLanes = 8;
  acc_t lane[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += static_cast<acc_t>(a[d + l]) * static_cast<acc_t>(b[d + l]);
  }
  acc_t acc = 0;
  for (int64_t l = 0; l < kLanes; ++l) acc += lane[l];
  for (; d < n; ++d) acc += static_cast<acc_t>(a[d]) * static_cast<acc_t>(b[d]);
  return acc;
}

at::Tensor score_candidates_cpu(const at::Tensor& user_emb, const at::Tensor& item_emb,
                                const at::Tensor& candidates) {
  check_embedding_inputs(user_emb, item_emb);
  check_candidates(candidates, user_emb.size(0));
  const at::Tensor u = user_emb.contiguous(), it = item_emb.contiguous();
  const at::Tensor cand = expand_candidates(candidates, u.size(0));
  const int64_t batch = u.size(0), ncand = cand.size(1), dim = u.size(1), items = it.size(0);
  at::Tensor out = at::empty({batch, ncand}, u.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "fairlit_score_candidates_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* us = u.data_ptr<scalar_t>();
    const scalar_t* is = it.data_ptr<scalar_t>();
    const int64_t* cs = cand.data_ptr<int64_t>();
    scalar_t* os = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* ub = us + b * dim;
        for (int64_t c = 0; c < ncand; ++c) {
          const int64_t id = cs[b * ncand + c];
          TORCH_CHECK(id >= 0 && id < items, "fairlit: `candidates` contains item id ", id, "; expected ids in [0, ",
                      items, ")");
          os[b * ncand + c] = static_cast<scalar_t>(dot<scalar_t, acc_t>(ub, is + id * dim, dim));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> score_candidates_backward_cpu(const at::Tensor& grad, const at::Tensor& user_emb,
                                                                 const at::Tensor& item_emb,
                                                                 const at::Tensor& candidates) {
  check_embedding_inputs(user_emb, item_emb);
  check_candidates(candidates, user_emb.size(0));
  const at::Tensor u = user_emb.contiguous(), it = item_emb.contiguous();
  const at::Tensor g = grad.contiguous().to(u.scalar_type());  // as the CUDA kernel: any grad dtype
  const at::Tensor cand = expand_candidates(candidates, u.size(0));
  const int64_t batch = u.size(0), ncand = cand.size(1), dim = u.size(1), items = it.size(0);
  TORCH_CHECK(g.dim() == 2 && g.size(0) == batch && g.size(1) == ncand, "fairlit: grad must be [B, C]");
  const int64_t* cs = cand.data_ptr<int64_t>();
  const int64_t pairs = batch * ncand;

  // Counting sort of the (row, candidate) pairs by item id; serial so that bucket order is pair order.
  std::vector<int64_t> offset(static_cast<size_t>(items + 1), 0);
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t id = cs[p];
    TORCH_CHECK(id >= 0 && id < items, "fairlit: `candidates` contains item id ", id, "; expected ids in [0, ",
                items, ")");
    offset[id + 1] += 1;
  }
  for (int64_t i = 0; i < items; ++i) offset[i + 1] += offset[i];
  std::vector<int64_t> order(static_cast<size_t>(pairs));
  {
    std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
    for (int64_t p = 0; p < pairs; ++p) order[fill[cs[p]]++] = p;
  }

  // Items no pair touches get a zero row from one memset; the loop below visits only the touched ones.
  std::vector<int64_t> touched;
  for (int64_t i = 0; i < items; ++i) {
    if (offset[i + 1] > offset[i]) touched.push_back(i);
  }
  const int64_t ntouched = static_cast<int64_t>(touched.size());
  at::Tensor grad_user = at::empty_like(u);
  at::Tensor grad_item = at::zeros_like(it);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "fairlit_score_candidates_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* us = u.data_ptr<scalar_t>();
    const scalar_t* is = it.data_ptr<scalar_t>();
    const scalar_t* gs = g.data_ptr<scalar_t>();
    scalar_t* gu = grad_user.data_ptr<scalar_t>();
    scalar_t* gi = grad_item.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 16, [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> acc(static_cast<size_t>(dim));
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t c = 0; c < ncand; ++c) {
          const acc_t w = static_cast<acc_t>(gs[b * ncand + c]);
          const scalar_t* ib = is + cs[b * ncand + c] * dim;
          for (int64_t d = 0; d < dim; ++d) acc[d] += w * static_cast<acc_t>(ib[d]);
        }
        for (int64_t d = 0; d < dim; ++d) gu[b * dim + d] = static_cast<scalar_t>(acc[d]);
      }
    });
    at::parallel_for(0, ntouched, 64, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> acc(static_cast<size_t>(dim));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = touched[t];
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t q = offset[i]; q < offset[i + 1]; ++q) {
          const int64_t p = order[q];
          const acc_t w = static_cast<acc_t>(gs[p]);
          const scalar_t* ub = us + (p / ncand) * dim;
          for (int64_t d = 0; d < dim; ++d) acc[d] += w * static_cast<acc_t>(ub[d]);
        }
        for (int64_t d = 0; d < dim; ++d) gi[i * dim + d] = static_cast<scalar_t>(acc[d]);
      }
    });
  });
  return {grad_user, grad_item};
}

// Row top-k by block maxima, shared by topk_scores (full ranking) and sampled_topk_group_stats.
constexpr int64_t kScanBlock = 16;

// Ranking order of a row's scores: NaN first (as torch.sort), then higher scores; positions arrive in increasing
// order and only a strictly better key moves ahead, so ties keep the earlier position.
template <typename V>
inline bool ranks_before(V a, V b) {
  return std::isnan(a) ? !std::isnan(b) : a > b;
}

// Inserts score s at position q into the sorted list val/pos of `filled` <= k entries, if it ranks before the k-th.
template <typename V>
inline void insert_ranked(V* val, int64_t* pos, int64_t& filled, int64_t k, V s, int64_t q) {
  if (filled == k && !ranks_before(s, val[k - 1])) return;
  int64_t at = filled < k ? filled++ : k - 1;
  while (at > 0 && ranks_before(s, val[at - 1])) {
    val[at] = val[at - 1];
    pos[at] = pos[at - 1];
    --at;
  }
  val[at] = s;
  pos[at] = q;
}

// Maxima of row[j:n] in blocks of kScanBlock entries into `maxima`; false if one of those entries is NaN.
template <typename V>
bool block_maxima_from(const V* row, int64_t j, int64_t n, V* maxima) {
  bool no_nan = true;
  for (; j < n; j += kScanBlock) {
    V m = row[j];
    for (int64_t q = j; q < std::min(n, j + kScanBlock); ++q) {
      no_nan &= !std::isnan(row[q]);
      m = row[q] > m ? row[q] : m;
    }
    *maxima++ = m;
  }
  return no_nan;
}

template <typename V>
bool block_maxima(const V* row, int64_t n, V* maxima) {
  return block_maxima_from(row, 0, n, maxima);
}

#if defined(__SSE2__)
// float: four SSE maxima per block (a max reduction does not auto-vectorise without fast-math; NaN is detected
// separately, so MAXPS's NaN rule does not matter).
template <>
bool block_maxima<float>(const float* row, int64_t n, float* maxima) {
  static_assert(kScanBlock == 16, "the SSE block maxima read 4 x 4 floats");
  __m128 nan = _mm_setzero_ps();
  int64_t j = 0;
  for (; j + kScanBlock <= n; j += kScanBlock) {
    const __m128 a = _mm_loadu_ps(row + j), b = _mm_loadu_ps(row + j + 4);
    const __m128 c = _mm_loadu_ps(row + j + 8), d = _mm_loadu_ps(row + j + 12);
    nan = _mm_or_ps(nan, _mm_or_ps(_mm_or_ps(_mm_cmpunord_ps(a, a), _mm_cmpunord_ps(b, b)),
                                   _mm_or_ps(_mm_cmpunord_ps(c, c), _mm_cmpunord_ps(d, d))));
    __m128 m = _mm_max_ps(_mm_max_ps(a, b), _mm_max_ps(c, d));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    *maxima++ = _mm_cvtss_f32(m);
  }
  return block_maxima_from(row, j, n, maxima) && _mm_movemask_ps(nan) == 0;
}
#endif

// Per-thread scratch of `row_topk_by_blocks` for rows of up to n scores.
template <typename V>
struct RowTopKScratch {
  std::vector<V> maxima, candidates;
  std::vector<int64_t> positions;
  explicit RowTopKScratch(int64_t n)
      : maxima(static_cast<size_t>((n + kScanBlock - 1) / kScanBlock)),
        candidates(static_cast<size_t>(n)),
        positions(static_cast<size_t>(n)) {}
};

// One row's top k of its n scores into val/pos (positions in the row), best first, ties to the earlier position.
// Testing every score against the running k-th costs a mispredicted branch per insertion, so this goes in four
// passes:
//  1. the block maxima (vectorised);
//  2. the threshold t = the k-th largest block maximum, a lower bound of the k-th best score (k blocks reach it).
//     Only maxima >= the smallest maximum of k disjoint runs of blocks can be among the k largest, so only those
//     are inserted;
//  3. the entries >= t of the blocks whose maximum is >= t (about k blocks), gathered in position order without
//     a branch per entry;
//  4. those few candidates inserted into the top k. Only entries >= t can be in it, and visiting them in position
//     order keeps the ties of the full scan.
// Q = 700, k = 10, fresh random scores: the top-k of 64 rows 100 -> 58 us. Returns false, writing nothing, for a
// row with a NaN or with fewer than k blocks: the caller scans those entry by entry.
template <typename V>
bool row_topk_by_blocks(const V* row, int64_t n, int64_t k, V* val, int64_t* pos, RowTopKScratch<V>& scratch) {
  const int64_t blocks = (n + kScanBlock - 1) / kScanBlock;
  V* maxima = scratch.maxima.data();
  if (blocks < k || !block_maxima(row, n, maxima)) return false;
  V bound = std::numeric_limits<V>::infinity();
  for (int64_t run = 0; run < k; ++run) {
    const V* first = maxima + run * blocks / k;
    const V* last = maxima + (run + 1) * blocks / k;
    bound = std::min(bound, *std::max_element(first, last));
  }
  int64_t filled = 0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    if (maxima[blk] >= bound) insert_ranked(val, pos, filled, k, maxima[blk], blk);
  }
  const V threshold = val[k - 1];
  V* candidates = scratch.candidates.data();
  int64_t* positions = scratch.positions.data();
  int64_t count = 0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    if (!(maxima[blk] >= threshold)) continue;
    for (int64_t q = blk * kScanBlock; q < std::min(n, (blk + 1) * kScanBlock); ++q) {
      candidates[count] = row[q];
      positions[count] = q;
      count += row[q] >= threshold;
    }
  }
  filled = 0;
  for (int64_t c = 0; c < count; ++c) insert_ranked(val, pos, filled, k, candidates[c], positions[c]);
  return true;
}

// A row's running top-k, kept sorted best-first. Order: higher score first, ties to the lower item id;
// an empty slot (id -1) is worse than any item. V is float, or double for float64 embeddings (float keys
// would merge distinct doubles).
template <typename V>
struct TopK {
  V* val;
  int64_t* idx;
  int64_t k;

  static bool better(V s, int64_t i, V s2, int64_t i2) {
    if (i2 < 0) return i >= 0;
    if (i < 0) return false;
    return s > s2 || (s == s2 && i < i2);
  }

  void push(V s, int64_t id) {
    if (!better(s, id, val[k - 1], idx[k - 1])) return;
    int64_t pos = k - 1;
    while (pos > 0 && better(s, id, val[pos - 1], idx[pos - 1])) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    val[pos] = s;
    idx[pos] = id;
  }
};

// Row-wise sorted copy of the exclusion lists, so a row can be merged against items in id order.
struct Exclusions {
  std::vector<int64_t> ids;
  std::vector<int64_t> indptr;

  bool contains(int64_t b, int64_t id) const {
    return !indptr.empty() && std::binary_search(ids.begin() + indptr[b], ids.begin() + indptr[b + 1], id);
  }
};

Exclusions sorted_exclusions(const c10::optional<at::Tensor>& exclude_indptr,
                             const c10::optional<at::Tensor>& exclude_indices, int64_t batch, int64_t items) {
  TORCH_CHECK(exclude_indptr.has_value() == exclude_indices.has_value(),
              "fairlit: pass both `exclude_indptr` and `exclude_indices`, or neither");
  Exclusions ex;
  if (!exclude_indptr.has_value()) return ex;
  check_index(*exclude_indptr, "exclude_indptr");
  check_index(*exclude_indices, "exclude_indices");
  TORCH_CHECK(exclude_indptr->dim() == 1 && exclude_indptr->size(0) == batch + 1,
              "fairlit: `exclude_indptr` must be [B + 1] with B = ", batch, ", got ", exclude_indptr->sizes());
  const at::Tensor ip = exclude_indptr->contiguous(), ix = exclude_indices->contiguous();
  const int64_t nnz = ix.numel();
  ex.indptr.assign(ip.data_ptr<int64_t>(), ip.data_ptr<int64_t>() + batch + 1);
  ex.ids.assign(ix.data_ptr<int64_t>(), ix.data_ptr<int64_t>() + nnz);
  TORCH_CHECK(ex.indptr[0] == 0 && ex.indptr[batch] == nnz, "fairlit: `exclude_indptr` must start at 0 and end at ",
              "len(exclude_indices) = ", nnz);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(ex.indptr[b] <= ex.indptr[b + 1], "fairlit: `exclude_indptr` must be non-decreasing (row ", b, ")");
  }
  for (int64_t e = 0; e < nnz; ++e) {
    TORCH_CHECK(ex.ids[e] >= 0 && ex.ids[e] < items, "fairlit: `exclude_indices` contains item id ", ex.ids[e],
                "; expected ids in [0, ", items, ")");
  }
  at::parallel_for(0, batch, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) std::sort(ex.ids.begin() + ex.indptr[b], ex.ids.begin() + ex.indptr[b + 1]);
  });
  return ex;
}

// Top-k among per-row candidate lists; V is the ranking type (float or double).
template <typename V>
void topk_candidates(const at::Tensor& scores, const at::Tensor& cand, const Exclusions& ex, V* vs, int64_t* xs,
                     int64_t k) {
  const int64_t batch = cand.size(0), ncand = cand.size(1);
  const int64_t* cs = cand.data_ptr<int64_t>();
  const at::Tensor s = scores.to(c10::CppTypeToScalarType<V>::value).contiguous();
  const V* ss = s.data_ptr<V>();
  at::parallel_for(0, batch, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      TopK<V> top{vs + b * k, xs + b * k, k};
      for (int64_t c = 0; c < ncand; ++c) {
        const int64_t id = cs[b * ncand + c];
        if (!ex.contains(b, id)) top.push(ss[b * ncand + c], id);
      }
    }
  });
}

// Full ranking: GEMM per (row tile, item tile); each row's top k of the tile (`row_topk_by_blocks`) is folded
// into its running list. Items arrive in id order, so each row walks its sorted exclusion list once. At 1024 rows
// x 3706 items, k 20, ~100 exclusions per row: 25.9 -> 13.6 ms with the block path (the GEMM takes 7 ms).
template <typename V>
void topk_full(const at::Tensor& user_emb, const at::Tensor& item_emb, const Exclusions& ex, V* vs, int64_t* xs,
               int64_t k) {
  const at::ScalarType rank_type = c10::CppTypeToScalarType<V>::value;
  const int64_t batch = user_emb.size(0), items = item_emb.size(0);
  const at::Tensor users_t = user_emb.to(rank_type), items_t = item_emb.to(rank_type);
  std::vector<int64_t> cursor(static_cast<size_t>(batch), 0);
  if (!ex.indptr.empty()) std::copy(ex.indptr.begin(), ex.indptr.end() - 1, cursor.begin());
  for (int64_t r0 = 0; r0 < batch; r0 += kRowTile) {
    const int64_t r1 = std::min(batch, r0 + kRowTile);
    const at::Tensor u = users_t.slice(0, r0, r1);
    for (int64_t i0 = 0; i0 < items; i0 += kItemTile) {
      const int64_t i1 = std::min(items, i0 + kItemTile), width = i1 - i0;
      // Scores are rounded to the embedding dtype, as a GEMM in that dtype returns them on the GPU.
      const at::Tensor s = at::mm(u, items_t.slice(0, i0, i1).t()).to(user_emb.scalar_type()).to(rank_type);
      V* ss = s.data_ptr<V>();
      at::parallel_for(r0, r1, 8, [&](int64_t b0, int64_t b1) {
        RowTopKScratch<V> scratch(width);
        std::vector<V> tile_val(static_cast<size_t>(k));
        std::vector<int64_t> tile_pos(static_cast<size_t>(k));
        for (int64_t b = b0; b < b1; ++b) {
          TopK<V> top{vs + b * k, xs + b * k, k};
          V* row = ss + (b - r0) * width;
          const int64_t first = cursor[b], end = ex.indptr.empty() ? 0 : ex.indptr[b + 1];
          // The tile's excluded items score -inf in its (scratch) score row: the block path ranks them last and
          // its top k is used only if its k-th score is above -inf, so none of them is in it. Otherwise (a NaN,
          // too few items or eligible scores) the row is merged entry by entry against its exclusion list.
          int64_t cur = first;
          for (; cur < end && ex.ids[cur] < i1; ++cur) {
            if (ex.ids[cur] >= i0) row[ex.ids[cur] - i0] = -std::numeric_limits<V>::infinity();
          }
          if (row_topk_by_blocks(row, width, k, tile_val.data(), tile_pos.data(), scratch) &&
              tile_val[k - 1] > -std::numeric_limits<V>::infinity()) {
            for (int64_t j = 0; j < k; ++j) top.push(tile_val[j], i0 + tile_pos[j]);
          } else {
            for (int64_t j = 0, c = first; j < width; ++j) {
              const int64_t id = i0 + j;
              while (c < end && ex.ids[c] < id) ++c;
              if (c < end && ex.ids[c] == id) continue;
              top.push(row[j], id);
            }
          }
          cursor[b] = cur;
        }
      });
    }
  }
}

std::tuple<at::Tensor, at::Tensor> topk_scores_cpu(const at::Tensor& user_emb, const at::Tensor& item_emb, int64_t k,
                                                   const c10::optional<at::Tensor>& candidates,
                                                   const c10::optional<at::Tensor>& exclude_indptr,
                                                   const c10::optional<at::Tensor>& exclude_indices) {
  check_embedding_inputs(user_emb, item_emb);
  TORCH_CHECK(k >= 1, "fairlit: `k` must be >= 1, got ", k);
  const int64_t batch = user_emb.size(0), items = item_emb.size(0);
  const Exclusions ex = sorted_exclusions(exclude_indptr, exclude_indices, batch, items);
  const bool is_double = user_emb.scalar_type() == at::kDouble;
  const at::ScalarType rank_type = is_double ? at::kDouble : at::kFloat;
  at::Tensor val = at::full({batch, k}, -std::numeric_limits<double>::infinity(), user_emb.options().dtype(rank_type));
  at::Tensor idx = at::full({batch, k}, -1, user_emb.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(rank_type, "fairlit_topk_scores_cpu", [&] {
    if (candidates.has_value()) {
      check_candidates(*candidates, batch);
      // Shared candidates: one GEMM against the gathered rows instead of B * C separate dot products.
      const at::Tensor scores =
          candidates->dim() == 1
              ? at::mm(user_emb.to(rank_type), item_emb.index_select(0, *candidates).to(rank_type).t())
                    .to(user_emb.scalar_type())
              : score_candidates_cpu(user_emb, item_emb, *candidates);
      topk_candidates<scalar_t>(scores, expand_candidates(*candidates, batch), ex, val.data_ptr<scalar_t>(),
                                idx.data_ptr<int64_t>(), k);
    } else {
      topk_full<scalar_t>(user_emb.contiguous(), item_emb.contiguous(), ex, val.data_ptr<scalar_t>(),
                          idx.data_ptr<int64_t>(), k);
    }
  });
  return {val.to(user_emb.scalar_type()), idx};
}

// sampled_topk_group_stats: one GEMM scores the shared [Q] sample, then each row keeps its top-k (by blocks) and
// adds its slots' utility to the groups of those items. Rows are processed in fixed blocks of kStatsRows whose
// [G] partial sums are added in block order, so `consumed` does not depend on the thread count.
constexpr int64_t kStatsRows = 64;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sampled_topk_group_stats_cpu(
    const at::Tensor& user_emb, const at::Tensor& item_emb, const at::Tensor& sampled, int64_t k,
    const at::Tensor& group_ids, const at::Tensor& group_weights, int64_t num_groups, bool sigmoid_utility,
    bool per_row) {
  check_sampled_group_inputs(user_emb, item_emb, sampled, k, group_ids, group_weights, num_groups);
  const int64_t batch = user_emb.size(0), items = item_emb.size(0), nsampled = sampled.size(0);
  const int64_t width = group_ids.size(1);
  const at::Tensor ids = sampled.contiguous();
  const int64_t* is = ids.data_ptr<int64_t>();
  for (int64_t q = 0; q < nsampled; ++q) {
    TORCH_CHECK(is[q] >= 0 && is[q] < items, "fairlit: `sampled` contains item id ", is[q], "; expected ids in [0, ",
                items, ")");
  }
  const bool is_double = user_emb.scalar_type() == at::kDouble;
  const at::ScalarType rank_type = is_double ? at::kDouble : at::kFloat;
  // Scores are rounded to the embedding dtype (what a GEMM in that dtype returns), then ranked in rank_type.
  const at::Tensor scores = at::mm(user_emb.to(rank_type), item_emb.index_select(0, ids).to(rank_type).t())
                                .to(user_emb.scalar_type()).to(rank_type).contiguous();
  const at::Tensor gid = group_ids.contiguous();
  const at::Tensor gw = group_weights.to(at::kDouble).contiguous();
  at::Tensor values = at::empty({batch, k}, user_emb.options().dtype(rank_type));
  at::Tensor top_items = at::empty({batch, k}, user_emb.options().dtype(at::kLong));
  at::Tensor rows = at::zeros({per_row ? batch : 0, num_groups}, user_emb.options().dtype(at::kDouble));
  const int64_t blocks = (batch + kStatsRows - 1) / kStatsRows;
  std::vector<double> partial(static_cast<size_t>(blocks * num_groups), 0.0);
  const int64_t* gs = gid.data_ptr<int64_t>();
  const double* ws = gw.data_ptr<double>();
  double* rs = per_row ? rows.data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(rank_type, "fairlit_sampled_topk_group_stats_cpu", [&] {
    const scalar_t* ss = scores.data_ptr<scalar_t>();
    scalar_t* vs = values.data_ptr<scalar_t>();
    int64_t* xs = top_items.data_ptr<int64_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t blk0, int64_t blk1) {
      std::vector<int64_t> pos(static_cast<size_t>(k));
      RowTopKScratch<scalar_t> scratch(nsampled);
      for (int64_t blk = blk0; blk < blk1; ++blk) {
        double* acc = partial.data() + blk * num_groups;
        for (int64_t b = blk * kStatsRows; b < std::min(batch, (blk + 1) * kStatsRows); ++b) {
          scalar_t* val = vs + b * k;
          const scalar_t* row = ss + b * nsampled;
          if (!row_topk_by_blocks(row, nsampled, k, val, pos.data(), scratch)) {
            int64_t filled = 0, q = 0;
            for (; q < nsampled && filled < k; ++q) insert_ranked(val, pos.data(), filled, k, row[q], q);
            // Once k slots are full, one compare against a register copy of the k-th skips almost every entry:
            // `!(s <= kth)` is true for a larger score and for NaN (or a NaN k-th), which `ranks_before` orders.
            scalar_t kth = val[k - 1];
            for (; q < nsampled; ++q) {
              if (!(row[q] <= kth)) {
                insert_ranked(val, pos.data(), filled, k, row[q], q);
                kth = val[k - 1];
              }
            }
          }
          for (int64_t j = 0; j < k; ++j) {
            const int64_t item = is[pos[j]];
            xs[b * k + j] = item;
            const double v = static_cast<double>(val[j]);
            const double util = !std::isfinite(v) ? 0.0 : sigmoid_utility ? stable_sigmoid(v) : 1.0;
            for (int64_t p = 0; p < width; ++p) {
              const int64_t g = gs[item * width + p];
              TORCH_CHECK(g >= 0 && g < num_groups, "fairlit: `group_ids` of item ", item, " contains group id ", g,
                          "; expected ids in [0, ", num_groups, ")");
              const double c = util * ws[item * width + p];
              acc[g] += c;
              if (rs != nullptr) rs[b * num_groups + g] += c;
            }
          }
        }
      }
    });
  });
  at::Tensor consumed = at::zeros({num_groups}, user_emb.options().dtype(at::kDouble));
  double* cs = consumed.data_ptr<double>();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int64_t g = 0; g < num_groups; ++g) cs[g] += partial[blk * num_groups + g];
  }
  return {values.to(user_emb.scalar_type()), top_items, consumed, rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CPU, m) {
  m.impl("score_candidates", &score_candidates_cpu);
  m.impl("score_candidates_backward", &score_candidates_backward_cpu);
  m.impl("topk_scores", &topk_scores_cpu);
  m.impl("sampled_topk_group_stats", &sampled_topk_group_stats_cpu);
}

}  // namespace fairlit
