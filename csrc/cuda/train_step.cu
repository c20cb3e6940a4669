// CUDA kernel of the train_step family: bpr_adam_step (see csrc/cpu/train_step.cpp for the contract).
//
// Per batch s: one warp per batch row computes the row's scores (lanes over d, fixed shuffle tree) and writes the
// row's gradient terms (its user row's and each of its 1 + M item rows') and its loss into [B]-indexed buffers;
// the terms are then summed into the gradient tables by index_add_ and the losses by a sum, so the kernel itself
// has no atomics: like index_add_, the result is deterministic under torch.use_deterministic_algorithms(True) and
// otherwise may vary in the last bits where batch rows share a user or an item. Torch's fused Adam
// (`aten::_fused_adam_`, CUDA) then updates both tables; the step counters stay on the device (no host sync). Ids
// outside the tables are skipped (their terms are 0, added to row 0; the Python wrapper rejects them before the
// call), so malformed input cannot read or write out of bounds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "utils.cuh"

namespace fairlit {
namespace {

using cuda::kThreads;

constexpr int kWarp = 32;

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_dot(const scalar_t* a, const scalar_t* b, int64_t d, int lane) {
  scalar_t v = 0;
  for (int64_t k = lane; k < d; k += kWarp) v += a[k] * b[k];
  v = cuda::group_sum(v, kWarp);
  return __shfl_sync(0xffffffffu, v, 0);
}

// Batch row b's terms: user_terms[b] = dL/dP[u_b] and item_terms[b, 0] / [b, 1 + j] = dL/dQ of its positive / its
// j-th negative (regulariser included), with their table rows in user_rows / item_rows; row_loss[b] its share of the
// batch loss. A row with an out-of-range user or positive, or a negative slot out of range, gets zero terms on row 0.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bpr_row_terms_kernel(
    const scalar_t* __restrict__ P, const scalar_t* __restrict__ Q, const int64_t* __restrict__ users,
    const int64_t* __restrict__ pos, const int64_t* __restrict__ neg, const scalar_t* __restrict__ weight, int64_t B,
    int64_t M, int64_t d, int64_t num_users, int64_t num_items, double reg_weight, bool sigmoid_scores,
    int64_t* __restrict__ user_rows, scalar_t* __restrict__ user_terms, int64_t* __restrict__ item_rows,
    scalar_t* __restrict__ item_terms, double* __restrict__ row_loss) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t stride = int64_t(gridDim.x) * warps_per_block;
  const scalar_t inv_bm = scalar_t(1) / scalar_t(B * M);
  const scalar_t reg_coef = static_cast<scalar_t>(reg_weight / double(B));
  for (int64_t b = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / kWarp; b < B; b += stride) {
    const int64_t u = users[b], i = pos[b];
    scalar_t* tu = user_terms + b * d;
    int64_t* rows = item_rows + b * (M + 1);
    scalar_t* ti = item_terms + b * (M + 1) * d;  // slot 0: the positive, slot 1 + j: negative j
    if (u < 0 || u >= num_users || i < 0 || i >= num_items) {
      for (int64_t k = lane; k < d; k += kWarp) tu[k] = 0;
      for (int64_t k = lane; k < (M + 1) * d; k += kWarp) ti[k] = 0;
      for (int64_t j = lane; j <= M; j += kWarp) rows[j] = 0;
      if (lane == 0) user_rows[b] = 0, row_loss[b] = 0.0;
      continue;
    }
    const scalar_t* pu = P + u * d;
    const scalar_t* qp = Q + i * d;
    const scalar_t w = weight == nullptr ? scalar_t(1) : weight[b];
    const scalar_t s_pos = warp_dot(pu, qp, d, lane);
    for (int64_t k = lane; k < d; k += kWarp) tu[k] = reg_coef * pu[k];
    scalar_t ds_pos = 0;
    double loss = 0.0, reg = 0.0;
    for (int64_t j = 0; j < M; ++j) {
      const int64_t item = neg[b * M + j];
      scalar_t* tn = ti + (1 + j) * d;
      if (item < 0 || item >= num_items) {
        for (int64_t k = lane; k < d; k += kWarp) tn[k] = 0;
        if (lane == 0) rows[1 + j] = 0;
        continue;
      }
      const scalar_t* qn = Q + item * d;
      const scalar_t s_neg = warp_dot(pu, qn, d, lane);
      const auto [diff, dneg, dpos] = bpr_pair_terms(s_pos, s_neg, sigmoid_scores);
      loss += static_cast<double>(stable_softplus(diff));
      const scalar_t c = w * inv_bm * dneg;
      ds_pos += w * inv_bm * dpos;
      scalar_t sq = 0;
      for (int64_t k = lane; k < d; k += kWarp) {
        tu[k] += c * qn[k];
        tn[k] = c * pu[k] + reg_coef * qn[k];
        sq += qn[k] * qn[k];
      }
      reg += static_cast<double>(cuda::group_sum(sq, kWarp));
      if (lane == 0) rows[1 + j] = item;
    }
    scalar_t sq = 0;
    for (int64_t k = lane; k < d; k += kWarp) {
      tu[k] += ds_pos * qp[k];
      ti[k] = ds_pos * pu[k] + reg_coef * qp[k];
      sq += pu[k] * pu[k] + qp[k] * qp[k];
    }
    reg += static_cast<double>(cuda::group_sum(sq, kWarp));
    if (lane == 0) {
      user_rows[b] = u;
      rows[0] = i;
      row_loss[b] = static_cast<double>(w) * loss / double(M * B) + reg_weight * reg / (2.0 * double(B));
    }
  }
}

at::Tensor bpr_adam_step_cuda(at::Tensor& user_emb, at::Tensor& item_emb, at::Tensor& user_exp_avg,
                              at::Tensor& user_exp_avg_sq, at::Tensor& item_exp_avg, at::Tensor& item_exp_avg_sq,
                              at::Tensor& user_step, at::Tensor& item_step, const at::Tensor& users, const at::Tensor& pos,
                              const at::Tensor& neg, const c10::optional<at::Tensor>& weight, double reg_weight,
                              bool sigmoid_scores, double lr, double beta1, double beta2, double eps,
                              double weight_decay) {
  check_bpr_adam_inputs(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step,
                        item_step, users, pos, neg, weight);
  TORCH_CHECK(user_emb.is_cuda(), "fairlit: bpr_adam_step (CUDA) got `user_emb` on ", user_emb.device());
  const c10::cuda::CUDAGuard guard(user_emb.device());
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  const int64_t S = users.size(0), B = users.size(1), M = neg.size(2), d = user_emb.size(1);
  const auto users_c = users.contiguous(), pos_c = pos.contiguous(), neg_c = neg.contiguous();
  at::Tensor weight_c = weight.has_value() ? weight->contiguous() : at::Tensor();
  auto losses = at::empty({S}, user_emb.options().dtype(at::kDouble));
  auto grad_user = at::empty_like(user_emb), grad_item = at::empty_like(item_emb);
  auto user_rows = at::empty({B}, users.options()), item_rows = at::empty({B * (M + 1)}, users.options());
  auto user_terms = at::empty({B, d}, user_emb.options()), item_terms = at::empty({B * (M + 1), d}, user_emb.options());
  auto row_loss = at::empty({B}, losses.options());
  const std::vector<at::Tensor> params{user_emb, item_emb}, grads{grad_user, grad_item},
      exp_avgs{user_exp_avg, item_exp_avg}, exp_avg_sqs{user_exp_avg_sq, item_exp_avg_sq}, steps{user_step, item_step};
  const int warps = kThreads / kWarp;
  const auto blocks = cuda::blocks_for(B, warps);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(user_emb.scalar_type(), "bpr_adam_step_cuda", [&] {
    for (int64_t s = 0; s < S; ++s) {
      const scalar_t* w = weight.has_value() ? weight_c.data_ptr<scalar_t>() + s * B : nullptr;
      bpr_row_terms_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          user_emb.data_ptr<scalar_t>(), item_emb.data_ptr<scalar_t>(), users_c.data_ptr<int64_t>() + s * B,
          pos_c.data_ptr<int64_t>() + s * B, neg_c.data_ptr<int64_t>() + s * B * M, w, B, M, d, user_emb.size(0),
          item_emb.size(0), reg_weight, sigmoid_scores, user_rows.data_ptr<int64_t>(), user_terms.data_ptr<scalar_t>(),
          item_rows.data_ptr<int64_t>(), item_terms.data_ptr<scalar_t>(), row_loss.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_user.zero_().index_add_(0, user_rows, user_terms);
      grad_item.zero_().index_add_(0, item_rows, item_terms);
      auto loss_s = losses.select(0, s);
      at::sum_out(loss_s, row_loss, at::IntArrayRef{0});
      user_step.add_(1);
      item_step.add_(1);
      at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2, weight_decay, eps,
                       /*amsgrad=*/false, /*maximize=*/false);
    }
  });
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CUDA, m) { m.impl("bpr_adam_step", &bpr_adam_step_cuda); }

}  // namespace fairlit
