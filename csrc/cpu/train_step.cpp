// CPU kernel of the train_step family: bpr_adam_step, S consecutive BPR steps of a dot-product
// (matrix-factorisation) model, each one gradient and one Adam update of both embedding tables.
//
// Per batch s the gradient is computed from the tables as they are before its update, into two dense
// scratch tables that are zero except on the rows the batch touches (a row that appears several times in
// the batch accumulates in batch order: deterministic, no atomics). The update is torch's own fused Adam
// (`aten::_fused_adam_`, the kernel `torch.optim.Adam(fused=True)` runs), so the moments, the step counters
// and the update rule are exactly Adam's. The point of the op is the call count: one dispatch for the
// whole step (or S of them) instead of ~30 autograd and optimizer calls from Python, which cost more than
// the arithmetic of a small-batch step on CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "train_step.h"

namespace fairlit {
namespace {

inline void check_ids(const int64_t* ids, int64_t count, int64_t limit, const char* name, const char* table) {
  for (int64_t i = 0; i < count; ++i) {
    TORCH_CHECK(ids[i] >= 0 && ids[i] < limit, "fairlit: `", name, "` contains id ", ids[i], "; expected ids in [0, ",
                limit, ") (the rows of ", table, ")");
  }
}

// Gradient of batch s's loss w.r.t. P [m, d] and Q [n, d], added into gP / gQ (zero on entry except where
// a previous call left rows that the caller zeroes), and the loss value (spec: ops/train_step.py).
template <typename scalar_t>
double batch_gradient(const scalar_t* P, const scalar_t* Q, const int64_t* users, const int64_t* pos,
                      const int64_t* neg, const scalar_t* weight, int64_t B, int64_t M, int64_t d, double reg_weight,
                      bool sigmoid_scores, scalar_t* gP, scalar_t* gQ) {
  double loss = 0.0, reg = 0.0;
  const scalar_t inv_bm = scalar_t(1) / scalar_t(B * M);
  const scalar_t reg_coef = static_cast<scalar_t>(reg_weight / double(B));  // d/dx of lambda/(2B) ||x||^2
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* pu = P + users[b] * d;
    const scalar_t* qp = Q + pos[b] * d;
    scalar_t* gpu = gP + users[b] * d;
    scalar_t* gqp = gQ + pos[b] * d;
    const scalar_t w = weight == nullptr ? scalar_t(1) : weight[b];
    scalar_t s_pos = 0;
    for (int64_t k = 0; k < d; ++k) s_pos += pu[k] * qp[k];
    scalar_t ds_pos = 0;  // d loss / d s_pos, summed over the row's negatives
    double row_loss = 0.0;
    for (int64_t j = 0; j < M; ++j) {
      const int64_t item = neg[b * M + j];
      const scalar_t* qn = Q + item * d;
      scalar_t s_neg = 0;
      for (int64_t k = 0; k < d; ++k) s_neg += pu[k] * qn[k];
      const auto [diff, dneg, dpos] = bpr_pair_terms(s_pos, s_neg, sigmoid_scores);
      row_loss += static_cast<double>(stable_softplus(diff));
      const scalar_t c = w * inv_bm * dneg;  // d loss / d s_neg
      ds_pos += w * inv_bm * dpos;
      scalar_t* gqn = gQ + item * d;
      for (int64_t k = 0; k < d; ++k) {
        gpu[k] += c * qn[k];
        gqn[k] += c * pu[k];
      }
      if (reg_weight != 0.0) {
        scalar_t sq = 0;
        for (int64_t k = 0; k < d; ++k) {
          sq += qn[k] * qn[k];
          gqn[k] += reg_coef * qn[k];
        }
        reg += static_cast<double>(sq);
      }
    }
    for (int64_t k = 0; k < d; ++k) {
      gpu[k] += ds_pos * qp[k];
      gqp[k] += ds_pos * pu[k];
    }
    if (reg_weight != 0.0) {
      scalar_t sq = 0;
      for (int64_t k = 0; k < d; ++k) {
        sq += pu[k] * pu[k] + qp[k] * qp[k];
        gpu[k] += reg_coef * pu[k];
        gqp[k] += reg_coef * qp[k];
      }
      reg += static_cast<double>(sq);
    }
    loss += static_cast<double>(w) * row_loss / double(M);
  }
  return loss / double(B) + reg_weight * reg / (2.0 * double(B));
}

template <typename scalar_t>
void zero_rows(scalar_t* table, const int64_t* ids, int64_t count, int64_t d) {
  for (int64_t i = 0; i < count; ++i) std::fill(table + ids[i] * d, table + (ids[i] + 1) * d, scalar_t(0));
}

at::Tensor bpr_adam_step_cpu(at::Tensor& user_emb, at::Tensor& item_emb, at::Tensor& user_exp_avg,
                             at::Tensor& user_exp_avg_sq, at::Tensor& item_exp_avg, at::Tensor& item_exp_avg_sq,
                             at::Tensor& user_step, at::Tensor& item_step, const at::Tensor& users, const at::Tensor& pos,
                             const at::Tensor& neg, const c10::optional<at::Tensor>& weight, double reg_weight,
                             bool sigmoid_scores, double lr, double beta1, double beta2, double eps, double weight_decay) {
  check_bpr_adam_inputs(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq, user_step,
                        item_step, users, pos, neg, weight);
  at::AutoDispatchBelowADInplaceOrView guard;  // an optimizer step: no autograd history on the tables
  const int64_t S = users.size(0);
  const auto users_c = users.contiguous(), pos_c = pos.contiguous(), neg_c = neg.contiguous();
  check_bpr_ids_cpu(users_c, pos_c, neg_c, user_emb, item_emb);  // all batches, before any update
  auto losses = at::empty({S}, user_emb.options().dtype(at::kDouble));
  BprAdamScratch scratch(user_emb, item_emb);
  double* loss_out = losses.data_ptr<double>();
  for (int64_t s = 0; s < S; ++s) {
    loss_out[s] = bpr_adam_batch_cpu(user_emb, item_emb, user_exp_avg, user_exp_avg_sq, item_exp_avg, item_exp_avg_sq,
                                     user_step, item_step, users_c[s], pos_c[s], neg_c[s],
                                     weight.has_value() ? (*weight)[s] : at::Tensor(), reg_weight, sigmoid_scores, lr,
                                     beta1, beta2, eps, weight_decay, scratch);
  }
  return losses;
}

}  // namespace

void check_bpr_ids_cpu(const at::Tensor& users, const at::Tensor& pos, const at::Tensor& neg,
                       const at::Tensor& user_emb, const at::Tensor& item_emb) {
  check_ids(users.data_ptr<int64_t>(), users.numel(), user_emb.size(0), "users", "user_emb");
  check_ids(pos.data_ptr<int64_t>(), pos.numel(), item_emb.size(0), "pos", "item_emb");
  check_ids(neg.data_ptr<int64_t>(), neg.numel(), item_emb.size(0), "neg", "item_emb");
}

BprAdamScratch::BprAdamScratch(const at::Tensor& user_emb, const at::Tensor& item_emb)
    : grad_user(at::zeros_like(user_emb)), grad_item(at::zeros_like(item_emb)) {}

double bpr_adam_batch_cpu(at::Tensor& user_emb, at::Tensor& item_emb, at::Tensor& user_exp_avg,
                          at::Tensor& user_exp_avg_sq, at::Tensor& item_exp_avg, at::Tensor& item_exp_avg_sq,
                          at::Tensor& user_step, at::Tensor& item_step, const at::Tensor& users, const at::Tensor& pos,
                          const at::Tensor& neg, const at::Tensor& weight, double reg_weight, bool sigmoid_scores,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          BprAdamScratch& scratch) {
  const int64_t B = users.size(0), M = neg.size(1), d = user_emb.size(1);
  const auto users_c = users.contiguous(), pos_c = pos.contiguous(), neg_c = neg.contiguous();
  const int64_t* u = users_c.data_ptr<int64_t>();
  const int64_t* p = pos_c.data_ptr<int64_t>();
  const int64_t* n = neg_c.data_ptr<int64_t>();
  const at::Tensor weight_c = weight.defined() ? weight.contiguous() : at::Tensor();
  double loss = 0.0;
  AT_DISPATCH_FLOATING_TYPES(user_emb.scalar_type(), "bpr_adam_step_cpu", [&] {
    scalar_t* grad_user = scratch.grad_user.data_ptr<scalar_t>();
    scalar_t* grad_item = scratch.grad_item.data_ptr<scalar_t>();
    loss = batch_gradient<scalar_t>(user_emb.data_ptr<scalar_t>(), item_emb.data_ptr<scalar_t>(), u, p, n,
                                    weight.defined() ? weight_c.data_ptr<scalar_t>() : nullptr, B, M, d, reg_weight,
                                    sigmoid_scores, grad_user, grad_item);
    user_step.add_(1);
    item_step.add_(1);
    at::_fused_adam_({user_emb, item_emb}, {scratch.grad_user, scratch.grad_item}, {user_exp_avg, item_exp_avg},
                     {user_exp_avg_sq, item_exp_avg_sq}, {}, {user_step, item_step}, lr, beta1, beta2, weight_decay,
                     eps, /*amsgrad=*/false, /*maximize=*/false);
    // Fused Adam only reads the gradients (no grad_scale is passed): the batch's rows are all it left non-zero.
    zero_rows(grad_user, u, B, d);
    zero_rows(grad_item, p, B, d);
    zero_rows(grad_item, n, B * M, d);
  });
  return loss;
}

TORCH_LIBRARY_IMPL(fairlit, CPU, m) { m.impl("bpr_adam_step", &bpr_adam_step_cpu); }

}  // namespace fairlit
