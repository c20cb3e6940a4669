// The CPU BPR-MF step of bpr_adam_step, for the composite fairdual_bpr_adam_step (csrc/composite/train_step.cpp),
// which runs it between other kernels batch by batch and keeps one pair of gradient buffers for all its batches.
#pragma once
#include <ATen/ATen.h>

namespace fairlit {

// Dense gradient buffers shaped like the two tables; zero between steps (each step zeroes the rows it wrote).
struct BprAdamScratch {
  BprAdamScratch(const at::Tensor& user_emb, const at::Tensor& item_emb);
  at::Tensor grad_user, grad_item;
};

// Every id of the contiguous int64 batches users / pos / neg (any shape) against the rows of the tables; raises
// naming the argument.
void check_bpr_ids_cpu(const at::Tensor& users, const at::Tensor& pos, const at::Tensor& neg,
                       const at::Tensor& user_emb, const at::Tensor& item_emb);

// One weighted BPR step of the batch users / pos [B], neg [B, M] (int64; weight [B] in the tables' dtype, or
// undefined for 1) and its fused-Adam update of both tables, in place; returns the batch loss. The caller has
// checked dtypes, shapes and devices (check_bpr_adam_inputs) and the ids (check_bpr_ids_cpu).
double bpr_adam_batch_cpu(at::Tensor& user_emb, at::Tensor& item_emb, at::Tensor& user_exp_avg,
                          at::Tensor& user_exp_avg_sq, at::Tensor& item_exp_avg, at::Tensor& item_exp_avg_sq,
                          at::Tensor& user_step, at::Tensor& item_step, const at::Tensor& users, const at::Tensor& pos,
                          const at::Tensor& neg, const at::Tensor& weight, double reg_weight, bool sigmoid_scores,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          BprAdamScratch& scratch);

}  // namespace fairlit
