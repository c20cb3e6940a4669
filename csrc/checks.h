// Input checks shared by the CPU and CUDA kernels. The Python wrappers validate values (id ranges, NaN)
// with friendlier messages; these checks keep a kernel called directly (or with validate=False) from
// reading out of bounds or misinterpreting a layout.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <utility>

namespace fairlit {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fairlit: `", name, "` must be a floating tensor, got ",
              t.scalar_type());
}

inline void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "fairlit: `", name, "` must be int64, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK(a.device() == b.device(), "fairlit: `", na, "` is on ", a.device(), " but `", nb, "` is on ",
              b.device());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, "fairlit: `", name, "` must have ", dim, " dimensions, got shape ", t.sizes());
}

// Numerically stable softplus and sigmoid in the accumulation type.
template <typename acc_t>
inline C10_HOST_DEVICE acc_t stable_softplus(acc_t x) {
  return x > acc_t(0) ? x + ::log1p(::exp(-x)) : ::log1p(::exp(x));
}

template <typename acc_t>
inline C10_HOST_DEVICE acc_t stable_sigmoid(acc_t x) {
  if (x >= acc_t(0)) {
    return acc_t(1) / (acc_t(1) + ::exp(-x));
  }
  acc_t e = ::exp(x);
  return e / (acc_t(1) + e);
}

// One (positive, negative) pair of the BPR loss softplus(f(s_neg) - f(s_pos)), f the identity or the sigmoid
// (train_step kernels, both devices): the softplus argument and the loss's derivatives w.r.t. the raw scores.
template <typename scalar_t>
struct BprPairTerms {
  scalar_t diff, d_neg, d_pos;
};

template <typename scalar_t>
inline C10_HOST_DEVICE BprPairTerms<scalar_t> bpr_pair_terms(scalar_t s_pos, scalar_t s_neg, bool sigmoid_scores) {
  if (!sigmoid_scores) {
    const scalar_t g = stable_sigmoid(s_neg - s_pos);
    return {s_neg - s_pos, g, -g};
  }
  const scalar_t sp = stable_sigmoid(s_pos), sn = stable_sigmoid(s_neg);
  const scalar_t g = stable_sigmoid(sn - sp);
  return {sn - sp, g * sn * (scalar_t(1) - sn), -g * sp * (scalar_t(1) - sp)};
}

// Validation shared by the group_segment kernels (both devices).
inline void check_group_inputs(const at::Tensor& values, const at::Tensor& groups, int64_t num_groups,
                               const char* values_name) {
  check_float(values, values_name);
  check_index(groups, "groups");
  check_dim(groups, 1, "groups");
  check_same_device(values, groups, values_name, "groups");
  TORCH_CHECK(num_groups >= 1, "fairlit: `num_groups` must be >= 1, got ", num_groups);
  TORCH_CHECK(values.dim() >= 1 && values.size(0) == groups.size(0), "fairlit: `", values_name,
              "` has ", (values.dim() >= 1 ? values.size(0) : 0), " rows but `groups` has ", groups.size(0));
}

inline void check_bpr_inputs(const at::Tensor& pos, const at::Tensor& neg, const at::Tensor& groups,
                             const c10::optional<at::Tensor>& weight) {
  check_float(pos, "pos");
  check_float(neg, "neg");
  check_dim(pos, 1, "pos");
  TORCH_CHECK(neg.dim() == 1 || neg.dim() == 2, "fairlit: `neg` must be [N] or [N, M], got ", neg.sizes());
  TORCH_CHECK(neg.size(0) == pos.size(0), "fairlit: `neg` has ", neg.size(0), " rows but `pos` has ",
              pos.size(0));
  TORCH_CHECK(pos.scalar_type() == neg.scalar_type(), "fairlit: `pos` and `neg` dtypes differ");
  check_index(groups, "groups");
  TORCH_CHECK(groups.dim() == 1 && groups.size(0) == pos.size(0), "fairlit: `groups` must be [N] with N = ",
              pos.size(0));
  check_same_device(pos, neg, "pos", "neg");
  check_same_device(pos, groups, "pos", "groups");
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == pos.size(0), "fairlit: `weight` must be [N]");
    TORCH_CHECK(weight->scalar_type() == pos.scalar_type(), "fairlit: `weight` dtype must match `pos`");
    check_same_device(pos, *weight, "pos", "weight");
  }
}

inline void check_embedding_inputs(const at::Tensor& user_emb, const at::Tensor& item_emb) {
  check_float(user_emb, "user_emb");
  check_float(item_emb, "item_emb");
  check_dim(user_emb, 2, "user_emb");
  check_dim(item_emb, 2, "item_emb");
  TORCH_CHECK(user_emb.size(1) == item_emb.size(1), "fairlit: `user_emb` has dim ", user_emb.size(1),
              " but `item_emb` has dim ", item_emb.size(1));
  TORCH_CHECK(user_emb.scalar_type() == item_emb.scalar_type(), "fairlit: `user_emb` and `item_emb` dtypes differ");
  check_same_device(user_emb, item_emb, "user_emb", "item_emb");
}

inline void check_candidates(const at::Tensor& candidates, int64_t batch) {
  check_index(candidates, "candidates");
  TORCH_CHECK(candidates.dim() == 1 || (candidates.dim() == 2 && candidates.size(0) == batch),
              "fairlit: `candidates` must be [C] or [B, C] with B = ", batch, ", got ", candidates.sizes());
}

// Validation shared by the sampled_topk_group_stats kernels (both devices); ids are checked as they are read.
inline void check_sampled_group_inputs(const at::Tensor& user_emb, const at::Tensor& item_emb, const at::Tensor& sampled,
                                       int64_t k, const at::Tensor& group_ids, const at::Tensor& group_weights,
                                       int64_t num_groups) {
  check_embedding_inputs(user_emb, item_emb);
  check_index(sampled, "sampled");
  check_dim(sampled, 1, "sampled");
  check_same_device(user_emb, sampled, "user_emb", "sampled");
  TORCH_CHECK(k >= 1 && k <= sampled.size(0), "fairlit: `k` must lie in [1, Q] with Q = ", sampled.size(0),
              " sampled items, got ", k);
  check_index(group_ids, "group_ids");
  check_float(group_weights, "group_weights");
  check_dim(group_ids, 2, "group_ids");
  TORCH_CHECK(group_ids.size(0) == item_emb.size(0), "fairlit: `group_ids` must be [I, P] with I = ",
              item_emb.size(0), " items, got ", group_ids.sizes());
  TORCH_CHECK(group_weights.sizes() == group_ids.sizes(), "fairlit: `group_weights` must have the shape of `group_ids` ",
              group_ids.sizes(), ", got ", group_weights.sizes());
  check_same_device(user_emb, group_ids, "user_emb", "group_ids");
  check_same_device(user_emb, group_weights, "user_emb", "group_weights");
  TORCH_CHECK(num_groups >= 1, "fairlit: `num_groups` must be >= 1, got ", num_groups);
}

// Validation shared by the soft_sort kernels (both devices).
inline void check_scores(const at::Tensor& scores, double tau, int64_t k) {
  check_float(scores, "scores");
  check_dim(scores, 2, "scores");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "fairlit: `tau` must be a finite number > 0, got ", tau);
  TORCH_CHECK(k >= 1 && k <= scores.size(1), "fairlit: `k` must be in [1, N] with N = ", scores.size(1), ", got ",
              k);
  TORCH_CHECK(scores.size(1) < (int64_t(1) << 30), "fairlit: N must be < 2^30");
}

inline void check_gain_inputs(const at::Tensor& scores, const at::Tensor& gains, int64_t k, const at::Tensor& discounts) {
  TORCH_CHECK(gains.sizes() == scores.sizes(), "fairlit: `gains` must have the shape of `scores` ", scores.sizes(),
              ", got ", gains.sizes());
  TORCH_CHECK(gains.scalar_type() == scores.scalar_type(), "fairlit: `gains` and `scores` dtypes differ");
  check_same_device(scores, gains, "scores", "gains");
  check_float(discounts, "discounts");
  check_same_device(scores, discounts, "scores", "discounts");
  TORCH_CHECK(discounts.dim() == 1 && discounts.size(0) == k, "fairlit: `discounts` must be [k] with k = ", k,
              ", got ", discounts.sizes());
}

// The backward ops' saved tensors: P [B, k, N] and grad of P's shape for neuralsort, grad [B] and (lse, dots) [B, k]
// for soft_rank_gain, all on the device of `scores` (a mixed-device call dispatches to the CUDA kernel, where a CPU
// tensor's pointer would fault).
inline void check_neuralsort_backward_inputs(const at::Tensor& grad, const at::Tensor& P, const at::Tensor& scores,
                                             double tau) {
  check_float(scores, "scores");
  check_dim(scores, 2, "scores");
  TORCH_CHECK(P.dim() == 3 && P.size(0) == scores.size(0) && P.size(2) == scores.size(1) &&
                  grad.sizes() == P.sizes() && P.scalar_type() == scores.scalar_type() &&
                  grad.scalar_type() == scores.scalar_type(),
              "fairlit: neuralsort_backward expects grad and P of shape [B, k, N] and the dtype of scores");
  check_scores(scores, tau, P.size(1));
  check_same_device(scores, P, "scores", "P");
  check_same_device(scores, grad, "scores", "grad");
}

inline void check_soft_rank_gain_backward_inputs(const at::Tensor& grad, const at::Tensor& scores,
                                                 const at::Tensor& gains, double tau, int64_t k,
                                                 const at::Tensor& discounts, const at::Tensor& lse,
                                                 const at::Tensor& dots) {
  check_scores(scores, tau, k);
  check_gain_inputs(scores, gains, k, discounts);
  const int64_t rows = scores.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == rows, "fairlit: `grad` must be [B] with B = ", rows);
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == rows && lse.size(1) == k && dots.sizes() == lse.sizes(),
              "fairlit: `lse` and `dots` must be [B, k]");
  check_same_device(scores, grad, "scores", "grad");
  check_same_device(scores, lse, "scores", "lse");
  check_same_device(scores, dots, "scores", "dots");
}

// Validation shared by the sparse kernels (both devices): A [M, N] in CSR (indptr [M + 1], indices [nnz],
// values [nnz]) times x [N, D]; the transpose CSR (only read by the backward) must describe an [N, M] matrix
// with the same nnz. Value checks (indptr order, column range) are done by the CPU kernel as it reads them
// and by the Python wrapper; the CUDA kernel clamps instead, so malformed input cannot fault the device.
inline void check_csr_matmul_inputs(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                                    const at::Tensor& x, const at::Tensor& t_indptr, const at::Tensor& t_indices,
                                    const at::Tensor& t_values) {
  check_index(indptr, "indptr");
  check_index(indices, "indices");
  check_float(values, "values");
  check_float(x, "x");
  check_dim(indptr, 1, "indptr");
  check_dim(indices, 1, "indices");
  check_dim(values, 1, "values");
  check_dim(x, 2, "x");
  TORCH_CHECK(indptr.size(0) >= 1, "fairlit: `indptr` must be [M + 1] (at least one entry)");
  TORCH_CHECK(values.size(0) == indices.size(0), "fairlit: `values` has ", values.size(0), " entries but `indices` has ",
              indices.size(0));
  TORCH_CHECK(values.scalar_type() == x.scalar_type(), "fairlit: `values` and `x` dtypes differ");
  check_same_device(x, indptr, "x", "indptr");
  check_same_device(x, indices, "x", "indices");
  check_same_device(x, values, "x", "values");
  check_index(t_indptr, "t_indptr");
  check_index(t_indices, "t_indices");
  check_dim(t_indptr, 1, "t_indptr");
  TORCH_CHECK(t_indptr.size(0) == x.size(0) + 1, "fairlit: `t_indptr` must be [N + 1] with N = ", x.size(0),
              " (rows of x), got ", t_indptr.sizes());
  TORCH_CHECK(t_indices.dim() == 1 && t_values.dim() == 1 && t_indices.size(0) == indices.size(0) &&
                  t_values.size(0) == indices.size(0),
              "fairlit: the transpose must have the same nnz (", indices.size(0), ") as the matrix");
  TORCH_CHECK(t_values.scalar_type() == x.scalar_type(), "fairlit: `t_values` and `x` dtypes differ");
  check_same_device(x, t_indptr, "x", "t_indptr");
  check_same_device(x, t_indices, "x", "t_indices");
  check_same_device(x, t_values, "x", "t_values");
}

// Validation shared by the projection kernels (both devices): mu [R, G], mhat [G], lam [R] (and the
// backward's grad [R, G]), one floating dtype, one device. Values (mhat > 0, lam >= 0) are the wrapper's job
// (the CPU kernel also checks mhat > 0; the CUDA kernel stays in bounds for any value).
inline void check_projection_inputs(const at::Tensor& mu, const at::Tensor& mhat, const at::Tensor& lam) {
  check_float(mu, "mu");
  check_dim(mu, 2, "mu");
  check_dim(mhat, 1, "mhat");
  check_dim(lam, 1, "lam");
  TORCH_CHECK(mhat.size(0) == mu.size(1), "fairlit: `mhat` must be [G] with G = ", mu.size(1), ", got ",
              mhat.sizes());
  TORCH_CHECK(lam.size(0) == mu.size(0), "fairlit: `lam` must be [R] with R = ", mu.size(0), ", got ", lam.sizes());
  TORCH_CHECK(mhat.scalar_type() == mu.scalar_type(), "fairlit: `mhat` and `mu` dtypes differ");
  TORCH_CHECK(lam.scalar_type() == mu.scalar_type(), "fairlit: `lam` and `mu` dtypes differ");
  check_same_device(mu, mhat, "mu", "mhat");
  check_same_device(mu, lam, "mu", "lam");
}

inline void check_projection_grad(const at::Tensor& grad, const at::Tensor& mu) {
  TORCH_CHECK(grad.sizes() == mu.sizes(), "fairlit: `grad` must have the shape of `mu` ", mu.sizes(), ", got ",
              grad.sizes());
  TORCH_CHECK(grad.scalar_type() == mu.scalar_type(), "fairlit: `grad` and `mu` dtypes differ");
  check_same_device(mu, grad, "mu", "grad");
}

// Validation shared by the dual_mirror_step kernels (both devices): the state mu, gmom, gamma (contiguous, updated
// in place) and share, rho, mhat all [G] of one float32/float64 dtype and device, batch_fraction one element.
// Values (mhat > 0, lam >= 0, eta > 0, alpha in (0, 1]) are the wrapper's job; the CPU kernel checks mhat > 0.
inline void check_dual_mirror_inputs(const at::Tensor& mu, const at::Tensor& gmom, const at::Tensor& gamma,
                                     const at::Tensor& share, const at::Tensor& batch_fraction, const at::Tensor& rho,
                                     const at::Tensor& mhat) {
  check_float(mu, "mu");
  TORCH_CHECK(mu.scalar_type() == at::kFloat || mu.scalar_type() == at::kDouble,
              "fairlit: dual_mirror_step needs float32 or float64 state, got ", mu.scalar_type());
  check_dim(mu, 1, "mu");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{gmom, "gmom"}, {gamma, "gamma"},
                                {share, "share"}, {rho, "rho"}, {mhat, "mhat"}}) {
    TORCH_CHECK(t.sizes() == mu.sizes() && t.scalar_type() == mu.scalar_type(), "fairlit: `", name,
                "` must be a ", mu.scalar_type(), " tensor shaped like `mu` ", mu.sizes(), ", got ", t.scalar_type(),
                " ", t.sizes());
    check_same_device(mu, t, "mu", name);
  }
  TORCH_CHECK(mu.is_contiguous() && gmom.is_contiguous() && gamma.is_contiguous(),
              "fairlit: `mu`, `gmom` and `gamma` (updated in place) must be contiguous");
  TORCH_CHECK(batch_fraction.numel() == 1 && batch_fraction.scalar_type() == mu.scalar_type(),
              "fairlit: `batch_fraction` must be one ", mu.scalar_type(), " element, got ",
              batch_fraction.scalar_type(), " ", batch_fraction.sizes());
  check_same_device(mu, batch_fraction, "mu", "batch_fraction");
}

// Validation shared by the train_step kernels (both devices): the two tables [m, d] / [n, d] (float32 or
// float64, contiguous) with Adam's moments of the same shape and step counters (one element each), batches
// users / pos [S, B] and neg [S, B, M] (int64), optional weight [S, B]; one device. Ids are checked by the
// CPU kernel as it reads them and by the Python wrapper.
inline void check_table_state(const at::Tensor& table, const at::Tensor& state, const char* table_name,
                              const char* state_name) {
  TORCH_CHECK(state.sizes() == table.sizes() && state.scalar_type() == table.scalar_type() && state.is_contiguous(),
              "fairlit: `", state_name, "` must be a contiguous ", table.scalar_type(), " tensor shaped like `",
              table_name, "` ", table.sizes(), ", got ", state.scalar_type(), " ", state.sizes());
  check_same_device(table, state, table_name, state_name);
}

inline void check_bpr_adam_inputs(const at::Tensor& user_emb, const at::Tensor& item_emb, const at::Tensor& user_exp_avg,
                                  const at::Tensor& user_exp_avg_sq, const at::Tensor& item_exp_avg,
                                  const at::Tensor& item_exp_avg_sq, const at::Tensor& user_step,
                                  const at::Tensor& item_step, const at::Tensor& users, const at::Tensor& pos,
                                  const at::Tensor& neg, const c10::optional<at::Tensor>& weight) {
  check_embedding_inputs(user_emb, item_emb);
  TORCH_CHECK(user_emb.scalar_type() == at::kFloat || user_emb.scalar_type() == at::kDouble,
              "fairlit: bpr_adam_step needs float32 or float64 tables, got ", user_emb.scalar_type());
  TORCH_CHECK(user_emb.is_contiguous() && item_emb.is_contiguous(), "fairlit: `user_emb` and `item_emb` must be contiguous");
  check_table_state(user_emb, user_exp_avg, "user_emb", "user_exp_avg");
  check_table_state(user_emb, user_exp_avg_sq, "user_emb", "user_exp_avg_sq");
  check_table_state(item_emb, item_exp_avg, "item_emb", "item_exp_avg");
  check_table_state(item_emb, item_exp_avg_sq, "item_emb", "item_exp_avg_sq");
  for (const auto& [step, name] : {std::pair<const at::Tensor&, const char*>{user_step, "user_step"},
                                   std::pair<const at::Tensor&, const char*>{item_step, "item_step"}}) {
    TORCH_CHECK(step.numel() == 1, "fairlit: `", name, "` must hold one element (Adam's step count), got shape ",
                step.sizes());
    // float32 as torch.optim.Adam(fused=True) keeps them: the CUDA fused Adam reads them as float32 unchecked.
    TORCH_CHECK(step.scalar_type() == at::kFloat, "fairlit: `", name, "` (Adam's step count) must be float32, got ",
                step.scalar_type());
    check_same_device(user_emb, step, "user_emb", name);
  }
  check_index(users, "users");
  check_index(pos, "pos");
  check_index(neg, "neg");
  check_dim(users, 2, "users");
  check_dim(neg, 3, "neg");
  TORCH_CHECK(users.size(1) >= 1, "fairlit: batches must hold at least one row, got `users` ", users.sizes());
  TORCH_CHECK(pos.sizes() == users.sizes(), "fairlit: `pos` must be [S, B] like `users` ", users.sizes(), ", got ",
              pos.sizes());
  TORCH_CHECK(neg.size(0) == users.size(0) && neg.size(1) == users.size(1) && neg.size(2) >= 1,
              "fairlit: `neg` must be [S, B, M] with [S, B] = ", users.sizes(), " and M >= 1, got ", neg.sizes());
  check_same_device(user_emb, users, "user_emb", "users");
  check_same_device(user_emb, pos, "user_emb", "pos");
  check_same_device(user_emb, neg, "user_emb", "neg");
  if (weight.has_value()) {
    TORCH_CHECK(weight->sizes() == users.sizes(), "fairlit: `weight` must be [S, B] like `users` ", users.sizes(),
                ", got ", weight->sizes());
    TORCH_CHECK(weight->scalar_type() == user_emb.scalar_type(), "fairlit: `weight` dtype must match the tables (",
                user_emb.scalar_type(), "), got ", weight->scalar_type());
    check_same_device(user_emb, *weight, "user_emb", "weight");
  }
}

// Loss sums are accumulated and returned in float32 for half inputs: a sum of 1e5 per-sample losses
// overflows float16.
inline at::ScalarType loss_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

}  // namespace fairlit
