// Composite kernel of the train_step family: fairdual_bpr_adam_step, S consecutive FairDual training steps of a
// BPR-MF model, as one C++ loop over the CPU or CUDA kernels of three fairlit ops (one implementation, registered
// for both devices; every call stays on the tables' device, no host sync):
//
//   for s in 0..S-1:
//     sampled_topk_group_stats(P[users_s], E, sampled_s)  -> each row's top-K_f share of the groups (Alg. 1 l. 11)
//     w_s = 1 - Â[pos_s]·mu  (Eq. 7)   or   1 - bw/Σbw, bw_b = mean_g(share_bg · mu_g)  (FairDiverse's code)
//     dual_mirror_step(mu, gmom, gamma, consumed / (B K_f), B / N, ...)               (Alg. 1 lines 12-14)
//     bpr_adam_step(P, Q, Adam state, users_s, pos_s, neg_s, w_s)                     (weighted BPR + Adam)
//
// E is `signal_items` (FairDual's frozen tower) or, if absent, the live item table Q as it is before batch s's
// update. The order is FairDual's training step (fairlit/methods/fairdual.py: weights and the dual update from
// mu before the batch, then the weighted BPR step), so the result equals that Python loop's, bit for bit (on CUDA
// under torch.use_deterministic_algorithms(True): otherwise bpr_adam_step's index_add_ sums use atomics). The
// point is the call count: FairDual's step from Python is ~25 small calls, more time than their arithmetic. On CPU
// the BPR step is bpr_adam_step's own batch function (csrc/cpu/train_step.h) with gradient buffers kept across the
// batches; on CUDA it is a bpr_adam_step call per batch. With validate=False on CUDA the ids must be valid: the
// gathers below (index_select) stop at a device-side assert on an out-of-range user, positive or group id.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "../checks.h"
#include "../cpu/train_step.h"
#include "../op_handle.h"

namespace fairlit {
namespace {

using SignalOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&, int64_t,
    bool, bool);
using MirrorOp = void(at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, double, double, double, bool, bool);
using BprAdamOp = at::Tensor(at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                             at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&, double, bool, double, double, double, double, double);

std::tuple<at::Tensor, at::Tensor> fairdual_bpr_adam_step(
    at::Tensor& user_emb, at::Tensor& item_emb, at::Tensor& user_exp_avg, at::Tensor& user_exp_avg_sq,
    at::Tensor& item_exp_avg, at::Tensor& item_exp_avg_sq, at::Tensor& user_step, at::Tensor& item_step,
    const at::Tensor& users, const at::Tensor& pos, const at::Tensor& neg, at::Tensor& mu, at::Tensor& gmom,
    at::Tensor& gamma, const at::Tensor& sampled, const std::optional<at::Tensor>& signal_items,
    const at::Tensor& group_ids, const at::Tensor& group_weights, const at::Tensor& rho, const at::Tensor& mhat,
    int64_t topk, bool sigmoid_utility, bool topk_exposure_weights, double s_min, double batch_fraction, double lam,
    double eta, double alpha, bool weighted, bool remaining, double reg_weight, bool sigmoid_scores, double lr,
    double beta1, double beta2, double eps, double weight_decay) {
  static auto signal_op = op_handle<SignalOp>("fairlit::sampled_topk_group_stats");
  static auto mirror_op = op_handle<MirrorOp>("fairlit::dual_mirror_step");
  static auto bpr_adam_op = op_handle<BprAdamOp>("fairlit::bpr_adam_step");
  // Shapes and devices of the loop's own arguments; each called kernel checks the rest (dtypes, ids, groups).
  check_bpr_adam_inputs(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step,
                        item_step, users, pos, neg, c10::nullopt);
  check_index(sampled, "sampled");
  check_dim(sampled, 2, "sampled");
  TORCH_CHECK(sampled.size(0) == users.size(0), "fairlit: `sampled` must be [S, Q] with S = ", users.size(0),
              " batches, got ", sampled.sizes());
  check_same_device(user_emb, sampled, "user_emb", "sampled");
  check_same_device(user_emb, mu, "user_emb", "mu");
  if (signal_items.has_value()) {
    TORCH_CHECK(signal_items->sizes() == item_emb.sizes() && signal_items->scalar_type() == item_emb.scalar_type(),
                "fairlit: `signal_items` must be shaped like `item_emb` ", item_emb.sizes(), " with its dtype, got ",
                signal_items->scalar_type(), " ", signal_items->sizes());
    check_same_device(item_emb, *signal_items, "item_emb", "signal_items");
  }
  TORCH_CHECK(batch_fraction >= 0 && std::isfinite(batch_fraction), "fairlit: `batch_fraction` must be finite and "
              ">= 0, got ", batch_fraction);
  at::AutoDispatchBelowADInplaceOrView guard;  // state updates: the calls below go straight to the device kernels
  const int64_t S = users.size(0), B = users.size(1), G = mu.size(0);
  auto losses = at::empty({S}, user_emb.options().dtype(at::kDouble));
  auto weights = at::empty({S, B}, user_emb.options());
  const auto fraction = at::full({}, batch_fraction, mu.options());
  const auto slots = static_cast<double>(B * topk);
  // On CPU the BPR step runs in place with one pair of gradient buffers for all S batches: a bpr_adam_step call per
  // batch allocates and faults in two table-sized buffers, ~1/3 of a small batch's step.
  std::optional<BprAdamScratch> cpu_scratch;
  if (user_emb.is_cpu()) {
    check_bpr_ids_cpu(users.contiguous(), pos.contiguous(), neg.contiguous(), user_emb, item_emb);  // before any update
    cpu_scratch.emplace(user_emb, item_emb);
  }
  for (int64_t s = 0; s < S; ++s) {
    const auto batch_users = users.select(0, s), batch_pos = pos.select(0, s);
    const auto user = user_emb.index_select(0, batch_users);
    const auto [values, top, consumed, per_row] = signal_op.call(
        user, signal_items.has_value() ? *signal_items : item_emb, sampled.select(0, s), topk, group_ids,
        group_weights, G, sigmoid_utility, topk_exposure_weights);
    at::Tensor weight;
    if (topk_exposure_weights) {  // the code divides by Σbw unguarded; a zero sum (mu = 0, no slot): w = 1
      const auto bw = (per_row * mu).mean(1);
      const auto total = bw.sum();
      const auto nonzero = total.ne(0);
      weight = at::where(nonzero, 1 - bw / at::where(nonzero, total, at::ones_like(total)), 1.0);
    } else {
      const auto row_mu = mu.index_select(0, group_ids.index_select(0, batch_pos).flatten()).view({B, -1});
      weight = (1 - (group_weights.index_select(0, batch_pos).to(mu.scalar_type()) * row_mu).sum(-1)).clamp_min(s_min);
    }
    weights.select(0, s).copy_(weight);
    mirror_op.call(mu, gmom, gamma, consumed.to(mu.scalar_type()) / slots, fraction, rho, mhat, lam, eta, alpha,
                   weighted, remaining);
    if (cpu_scratch.has_value()) {
      losses.data_ptr<double>()[s] = bpr_adam_batch_cpu(
          user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
          batch_users, batch_pos, neg.select(0, s), weights.select(0, s), reg_weight, sigmoid_scores, lr, beta1, beta2,
          eps, weight_decay, *cpu_scratch);
    } else {
      losses.narrow(0, s, 1).copy_(bpr_adam_op.call(
          user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
          users.narrow(0, s, 1), pos.narrow(0, s, 1), neg.narrow(0, s, 1), weights.narrow(0, s, 1), reg_weight,
          sigmoid_scores, lr, beta1, beta2, eps, weight_decay));
    }
  }
  return {losses, weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, CPU, m) { m.impl("fairdual_bpr_adam_step", &fairdual_bpr_adam_step); }
TORCH_LIBRARY_IMPL(fairlit, CUDA, m) { m.impl("fairdual_bpr_adam_step", &fairdual_bpr_adam_step); }

}  // namespace fairlit
