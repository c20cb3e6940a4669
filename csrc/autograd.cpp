// Autograd kernels registered in C++ for the ops on every training step: score_candidates and group_bpr_loss
// (every BPR step), dual_projection (every FairDual step), bpr_adam_step, dual_mirror_step and fairdual_bpr_adam_step
// (state updates with no derivative: their kernels only refuse to run where autograd would have to record them). A
// formula registered from Python (torch.library.register_autograd) runs ~50-70 µs of interpreter code per op per step
// (wrapping, argument filling, the backward closure), which is more than the kernels themselves in a small-model CPU
// step; these are the same formulas in C++. The other ops keep their Python formulas (fairlit/ops/<family>.py).
// Forward and backward call the ops through the dispatcher, so the CPU, CUDA and fake kernels all serve
// (torch.compile traces through these functions).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "op_handle.h"

namespace {

using fairlit::op_handle;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// scores[b, c] = <user_emb[b], item_emb[candidates[b, c]]>; gradients from score_candidates_backward.
class ScoreCandidates : public torch::autograd::Function<ScoreCandidates> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& user_emb, const at::Tensor& item_emb,
                            const at::Tensor& candidates) {
    static auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "fairlit::score_candidates");
    ctx->save_for_backward({user_emb, item_emb, candidates});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(user_emb, item_emb, candidates);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, const at::Tensor&)>(
        "fairlit::score_candidates_backward");
    auto saved = ctx->get_saved_variables();
    auto [grad_user, grad_item] = op.call(grads[0], saved[0], saved[1], saved[2]);
    return {grad_user, grad_item, at::Tensor()};
  }
};

// (loss [G], count [G]) of the group-segmented BPR loss; the count is not differentiable. The weight's
// gradient is the unweighted per-row loss times the row's group gradient.
class GroupBprLoss : public torch::autograd::Function<GroupBprLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pos, const at::Tensor& neg,
                               const at::Tensor& groups, int64_t num_groups,
                               const std::optional<at::Tensor>& weight) {
    static auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&)>(
        "fairlit::group_bpr_loss");
    const bool has_weight = weight.has_value() && weight->defined();
    ctx->saved_data["has_weight"] = has_weight;
    ctx->save_for_backward({pos, neg, groups, has_weight ? *weight : pos.new_empty({0})});
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, count] = op.call(pos, neg, groups, num_groups, weight);
    ctx->mark_non_differentiable({count});
    return {loss, count};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const std::optional<at::Tensor>&)>("fairlit::group_bpr_loss_backward");
    auto saved = ctx->get_saved_variables();
    const at::Tensor &pos = saved[0], &neg = saved[1], &groups = saved[2], &weight = saved[3];
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const at::Tensor& grad_loss = grads[0];
    auto [grad_pos, grad_neg] =
        op.call(grad_loss, pos, neg, groups, has_weight ? std::optional<at::Tensor>(weight) : std::nullopt);
    at::Tensor grad_weight;
    if (has_weight && ctx->needs_input_grad(3)) {  // edges: pos, neg, groups, weight
      const auto acc = grad_loss.scalar_type();
      const at::Tensor neg2 = (neg.dim() == 1 ? neg.unsqueeze(1) : neg).to(acc);
      const at::Tensor unweighted = at::softplus(neg2 - pos.to(acc).unsqueeze(1)).mean(1);
      // Rows with a group id outside [0, G) (skipped by the CUDA kernels under validate=False) get 0, and their
      // id is never used as an index.
      const int64_t num_groups = grad_loss.size(0);
      const at::Tensor invalid = groups.lt(0).logical_or(groups.ge(num_groups));
      const at::Tensor grad_rows = grad_loss.index_select(0, groups.clamp(0, num_groups - 1)).masked_fill(invalid, 0);
      grad_weight = (unweighted * grad_rows).to(weight.scalar_type());
    }
    return {grad_pos, grad_neg, at::Tensor(), at::Tensor(), grad_weight};
  }
};

// FairDual's projection onto its dual set: gradients in mu and lam from dual_projection_backward (the active set
// held fixed; see fairlit/ops/projection.py). mhat is a constant of the set: no gradient.
class DualProjection : public torch::autograd::Function<DualProjection> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam,
                            bool weighted) {
    static auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>(
        "fairlit::dual_projection");
    ctx->saved_data["weighted"] = weighted;
    ctx->save_for_backward({mu, mhat, lam});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(mu, mhat, lam, weighted);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, const at::Tensor&, bool)>(
        "fairlit::dual_projection_backward");
    auto saved = ctx->get_saved_variables();
    auto [grad_mu, grad_lam] =
        op.call(grads[0].contiguous(), saved[0], saved[1], saved[2], ctx->saved_data["weighted"].toBool());
    return {grad_mu, at::Tensor(), grad_lam, at::Tensor()};
  }
};

at::Tensor dual_projection_autograd(const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam,
                                    bool weighted) {
  return DualProjection::apply(mu, mhat, lam, weighted);
}

at::Tensor score_candidates_autograd(const at::Tensor& user_emb, const at::Tensor& item_emb,
                                     const at::Tensor& candidates) {
  return ScoreCandidates::apply(user_emb, item_emb, candidates);
}

std::tuple<at::Tensor, at::Tensor> group_bpr_loss_autograd(const at::Tensor& pos, const at::Tensor& neg,
                                                           const at::Tensor& groups, int64_t num_groups,
                                                           const std::optional<at::Tensor>& weight) {
  auto out = GroupBprLoss::apply(pos, neg, groups, num_groups, weight);
  return {out[0], out[1]};
}

// bpr_adam_step updates parameters in place, like torch.optim's fused steps: there is nothing to differentiate.
// Under grad mode with a table that requires grad, autograd would have to record an in-place update of a leaf:
// refuse with the fix instead. Otherwise run the device kernel.
at::Tensor bpr_adam_step_autograd(at::Tensor& user_emb, at::Tensor& item_emb, at::Tensor& user_exp_avg,
                                  at::Tensor& user_exp_avg_sq, at::Tensor& item_exp_avg, at::Tensor& item_exp_avg_sq,
                                  at::Tensor& user_step, at::Tensor& item_step, const at::Tensor& users,
                                  const at::Tensor& pos, const at::Tensor& neg, const std::optional<at::Tensor>& weight,
                                  double reg_weight, bool sigmoid_scores, double lr, double beta1, double beta2,
                                  double eps, double weight_decay) {
  static auto op = op_handle<decltype(bpr_adam_step_autograd)>("fairlit::bpr_adam_step");
  TORCH_CHECK(!at::GradMode::is_enabled() || !(user_emb.requires_grad() || item_emb.requires_grad()),
              "fairlit: bpr_adam_step is an optimizer step (no derivative); call it under torch.no_grad() "
              "(fairlit.ops.bpr_adam_step does)");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
                 users, pos, neg, weight, reg_weight, sigmoid_scores, lr, beta1, beta2, eps, weight_decay);
}

// dual_mirror_step updates FairDual's dual state in place (a descent step on the dual, no derivative is defined
// through it): refused under grad mode when the state requires grad, otherwise the device kernel.
void dual_mirror_step_autograd(at::Tensor& mu, at::Tensor& gmom, at::Tensor& gamma, const at::Tensor& share,
                               const at::Tensor& batch_fraction, const at::Tensor& rho, const at::Tensor& mhat,
                               double lam, double eta, double alpha, bool weighted, bool remaining) {
  static auto op = op_handle<decltype(dual_mirror_step_autograd)>("fairlit::dual_mirror_step");
  TORCH_CHECK(!at::GradMode::is_enabled() ||
                  !(mu.requires_grad() || gmom.requires_grad() || gamma.requires_grad() || share.requires_grad() ||
                    batch_fraction.requires_grad()),
              "fairlit: dual_mirror_step updates the dual state in place (no derivative); call it under "
              "torch.no_grad() (fairlit.ops.dual_mirror_step does)");
  at::AutoDispatchBelowADInplaceOrView guard;
  op.call(mu, gmom, gamma, share, batch_fraction, rho, mhat, lam, eta, alpha, weighted, remaining);
}

// fairdual_bpr_adam_step is S training steps (state updates, like bpr_adam_step): refused under grad mode when a table
// or the dual state requires grad, otherwise the device kernel.
std::tuple<at::Tensor, at::Tensor> fairdual_bpr_adam_step_autograd(
    at::Tensor& user_emb, at::Tensor& item_emb, at::Tensor& user_exp_avg, at::Tensor& user_exp_avg_sq,
    at::Tensor& item_exp_avg, at::Tensor& item_exp_avg_sq, at::Tensor& user_step, at::Tensor& item_step,
    const at::Tensor& users, const at::Tensor& pos, const at::Tensor& neg, at::Tensor& mu, at::Tensor& gmom,
    at::Tensor& gamma, const at::Tensor& sampled, const std::optional<at::Tensor>& signal_items,
    const at::Tensor& group_ids, const at::Tensor& group_weights, const at::Tensor& rho, const at::Tensor& mhat,
    int64_t topk, bool sigmoid_utility, bool topk_exposure_weights, double s_min, double batch_fraction, double lam,
    double eta, double alpha, bool weighted, bool remaining, double reg_weight, bool sigmoid_scores, double lr,
    double beta1, double beta2, double eps, double weight_decay) {
  static auto op = op_handle<decltype(fairdual_bpr_adam_step_autograd)>("fairlit::fairdual_bpr_adam_step");
  TORCH_CHECK(!at::GradMode::is_enabled() || !(user_emb.requires_grad() || item_emb.requires_grad() ||
                                               mu.requires_grad() || gmom.requires_grad() || gamma.requires_grad()),
              "fairlit: fairdual_bpr_adam_step is a sequence of training steps (no derivative); call it under "
              "torch.no_grad() (fairlit.ops.fairdual_bpr_adam_step does)");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step, item_step,
                 users, pos, neg, mu, gmom, gamma, sampled, signal_items, group_ids, group_weights, rho, mhat, topk,
                 sigmoid_utility, topk_exposure_weights, s_min, batch_fraction, lam, eta, alpha, weighted, remaining,
                 reg_weight, sigmoid_scores, lr, beta1, beta2, eps, weight_decay);
}

}  // namespace

TORCH_LIBRARY_IMPL(fairlit, Autograd, m) {
  m.impl("bpr_adam_step", &bpr_adam_step_autograd);
  m.impl("dual_mirror_step", &dual_mirror_step_autograd);
  m.impl("fairdual_bpr_adam_step", &fairdual_bpr_adam_step_autograd);
  m.impl("score_candidates", &score_candidates_autograd);
  m.impl("group_bpr_loss", &group_bpr_loss_autograd);
  m.impl("dual_projection", &dual_projection_autograd);
}
