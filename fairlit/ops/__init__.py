"""fairlit.ops: the stable public op API (fused C++/CUDA kernels registered with `torch.library`).

| op | family file |
|---|---|
| group_sum, group_mean, group_bpr_loss | group_segment.py |
| score_candidates, topk_scores, sampled_topk_group_stats | ranking.py |
| neuralsort, soft_rank_gain (+ helpers soft_ndcg, soft_hit) | soft_sort.py |
| csr_matmul (+ helper csr_transpose) | sparse.py |
| dual_projection, dual_mirror_step (FairDual's whole dual update, in place) | projection.py |
| bpr_adam_step (BPR-MF training steps with Adam), fairdual_bpr_adam_step (FairDual's); in place | train_step.py |

Each op has a pure-PyTorch twin with the same signature in `fairlit.ops.reference`, used when the
compiled library is unavailable (one warning says why) and as the test oracle. `backend(name)` says
which implementation runs.
"""
from ._library import HAS_EXT, backend
from .group_segment import group_bpr_loss, group_mean, group_sum
from .projection import dual_mirror_step, dual_projection
from .ranking import sampled_topk_group_stats, score_candidates, topk_scores
from .soft_sort import neuralsort, soft_hit, soft_ndcg, soft_rank_gain
from .sparse import csr_matmul, csr_transpose
from .train_step import bpr_adam_step, fairdual_bpr_adam_step

OPS = ("group_sum", "group_mean", "group_bpr_loss", "score_candidates", "topk_scores", "sampled_topk_group_stats",
       "neuralsort", "soft_rank_gain", "csr_matmul", "dual_projection", "dual_mirror_step", "bpr_adam_step",
       "fairdual_bpr_adam_step")

__all__ = ["HAS_EXT", "OPS", "backend", "group_bpr_loss", "group_mean", "group_sum", "score_candidates",
           "topk_scores", "sampled_topk_group_stats", "neuralsort", "soft_hit", "soft_ndcg", "soft_rank_gain",
           "csr_matmul", "csr_transpose", "dual_projection", "dual_mirror_step", "bpr_adam_step",
           "fairdual_bpr_adam_step"]
