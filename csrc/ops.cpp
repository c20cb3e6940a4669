// Every schema of the `fairlit` operator library: this file is the index of the public op API.
// Implementations live in csrc/cpu/<family>.cpp and csrc/cuda/<family>.cu (TORCH_LIBRARY_IMPL), and for ops
// that loop over other fairlit ops in csrc/composite/<family>.cpp (one kernel for both devices);
// fake kernels and autograd formulas are registered from Python (fairlit/ops/<family>.py), except the
// autograd of the per-step BPR ops score_candidates and group_bpr_loss (csrc/autograd.cpp).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty `fairlit._C` module: importing it loads this shared library, which runs the registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fairlit, m) {
  // group_segment family
  m.def("group_sum(Tensor values, Tensor groups, int num_groups) -> Tensor");
  m.def("group_mean(Tensor values, Tensor groups, int num_groups) -> (Tensor, Tensor)");
  m.def("group_bpr_loss(Tensor pos, Tensor neg, Tensor groups, int num_groups, Tensor? weight) -> (Tensor, Tensor)");
  m.def("group_bpr_loss_backward(Tensor grad_loss, Tensor pos, Tensor neg, Tensor groups, Tensor? weight) -> (Tensor, Tensor)");
  // ranking family
  m.def("score_candidates(Tensor user_emb, Tensor item_emb, Tensor candidates) -> Tensor");
  m.def("score_candidates_backward(Tensor grad, Tensor user_emb, Tensor item_emb, Tensor candidates) -> (Tensor, Tensor)");
  m.def("topk_scores(Tensor user_emb, Tensor item_emb, int k, Tensor? candidates, Tensor? exclude_indptr, Tensor? exclude_indices) -> (Tensor, Tensor)");
  // FairDual's dual signal (spec fairdual §7 K1): top-k of shared sampled items per row, and the group share
  // of those slots -> (values [B, k], items [B, k], consumed [G] f64, row_consumed [B, G] f64 or [0, G]).
  m.def("sampled_topk_group_stats(Tensor user_emb, Tensor item_emb, Tensor sampled, int k, Tensor group_ids, Tensor group_weights, int num_groups, bool sigmoid_utility, bool per_row) -> (Tensor, Tensor, Tensor, Tensor)");
  // projection family (spec fairdual §2.5 / §7 K3): rows of mu [R, G] onto M = {x : sum_g mhat_g min(x_g, 0) >= -lam_r}.
  m.def("dual_projection(Tensor mu, Tensor mhat, Tensor lam, bool weighted) -> Tensor");
  m.def("dual_projection_backward(Tensor grad, Tensor mu, Tensor mhat, Tensor lam, bool weighted) -> (Tensor, Tensor)");
  // FairDual's momentum mirror step on its [G] state, in place (Alg. 1 lines 12-14): gamma -= f * d (remaining
  // budget), g = alpha * (gamma - d or rho - d) + (1 - alpha) * g, mu = Proj_M(mu - eta * g / mhat^2 (or g)).
  m.def("dual_mirror_step(Tensor(a!) mu, Tensor(b!) gmom, Tensor(c!) gamma, Tensor share, Tensor batch_fraction, Tensor rho, Tensor mhat, float lam, float eta, float alpha, bool weighted, bool remaining) -> ()");
  // soft_sort family: neuralsort -> P [B, k, N]; soft_rank_gain -> (out [B], lse [B, k], dots [B, k]), where
  // lse/dots are the per-row softmax statistics the backward reuses (flash-attention style recompute).
  m.def("neuralsort(Tensor scores, float tau, int k) -> Tensor");
  m.def("neuralsort_backward(Tensor grad, Tensor P, Tensor scores, float tau) -> Tensor");
  m.def("soft_rank_gain(Tensor scores, Tensor gains, float tau, int k, Tensor discounts) -> (Tensor, Tensor, Tensor)");
  m.def("soft_rank_gain_backward(Tensor grad, Tensor scores, Tensor gains, float tau, int k, Tensor discounts, Tensor lse, Tensor dots) -> (Tensor, Tensor)");
  // sparse family: A @ x for A in CSR; the transpose CSR (t_*) is an input so that the registered backward
  // (grad_x = A^T @ grad, the same op with the roles swapped) needs no sort. A is a constant (no grad).
  m.def("csr_matmul(Tensor indptr, Tensor indices, Tensor values, Tensor x, Tensor t_indptr, Tensor t_indices, Tensor t_values) -> Tensor");
  // train_step family: S consecutive BPR steps of an MF model (tables P [m, d], Q [n, d]), each a gradient and
  // one torch fused-Adam update of both tables and their Adam state, in place; returns each batch's loss [S] f64.
  m.def("bpr_adam_step(Tensor(a!) user_emb, Tensor(b!) item_emb, Tensor(c!) user_exp_avg, Tensor(d!) user_exp_avg_sq, Tensor(e!) item_exp_avg, Tensor(f!) item_exp_avg_sq, Tensor(g!) user_step, Tensor(h!) item_step, Tensor users, Tensor pos, Tensor neg, Tensor? weight, float reg_weight, bool sigmoid_scores, float lr, float beta1, float beta2, float eps, float weight_decay) -> Tensor");
  // FairDual's training loop over S batches of BPR-MF (csrc/composite/train_step.cpp): per batch the dual signal,
  // the sample weights, dual_mirror_step and bpr_adam_step -> (losses [S] f64, weights [S, B]).
  m.def("fairdual_bpr_adam_step(Tensor(a!) user_emb, Tensor(b!) item_emb, Tensor(c!) user_exp_avg, Tensor(d!) user_exp_avg_sq, Tensor(e!) item_exp_avg, Tensor(f!) item_exp_avg_sq, Tensor(g!) user_step, Tensor(h!) item_step, Tensor users, Tensor pos, Tensor neg, Tensor(i!) mu, Tensor(j!) gmom, Tensor(k!) gamma, Tensor sampled, Tensor? signal_items, Tensor group_ids, Tensor group_weights, Tensor rho, Tensor mhat, int topk, bool sigmoid_utility, bool topk_exposure_weights, float s_min, float batch_fraction, float lam, float eta, float alpha, bool weighted, bool remaining, float reg_weight, bool sigmoid_scores, float lr, float beta1, float beta2, float eps, float weight_decay) -> (Tensor, Tensor)");
}
