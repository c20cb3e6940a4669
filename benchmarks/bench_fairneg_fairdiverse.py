"""FairDiverse's FairNeg vs fairlit's `FairNeg` on identical ML-100K files, in one run (CPU seconds per epoch).

    python benchmarks/bench_fairneg_fairdiverse.py --fd-venv /tmp/fd-venv --epochs 6 --seeds 0 1 2 \
        --out docs/benchmarks.md

FairDiverse runs in its own venv (created here if missing, see ``shared/peers/fairdiverse/README.md``) and is
never imported by fairlit. FairDiverse processes ML-100K as in `bench_fairdual_fairdiverse.py` (whose venv,
data and helpers are reused) and trains its FairNeg; fairlit's FairNeg then trains on FairDiverse's processed
split (same ids, rows and groups) and both are tested on FairDiverse's candidate lists by fairlit's metric
code (FairDiverse's from its stored test scores; its own evaluator reports no group recall). Settings:
BPR-MF d 32, Adam 1e-3, one negative per positive, FairDiverse's FairNeg properties (α 0.2, γ 0.1, τ 0.1,
mix 0.3). The algorithms are not the same: FairDiverse's FairNeg draws each batch's negatives from 300
random candidates and updates its group distribution from training BPR losses; fairlit's follows the paper
(all non-interacted items, G-BCE over all positives, Eqs. 3-8). Timings: seconds per training epoch
(evaluation excluded) and per test pass.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fairdual_fairdiverse import (  # noqa: E402
    ensure_venv,
    fairdiverse_rescored,
    fairdiverse_split,
    fit_on_fairdiverse_split,
    run_fairdiverse,
    seed_tables,
    write_fairdiverse_data,
)
from harness import write_section  # noqa: E402

METRICS = ["ndcg@5", "ndcg@10", "ndcg@20", "mrr@20", "recall_disp@20", "recall_min@20"]

# README fact 6: FairNeg's sample() asks for 300 candidates from a pool that can be smaller; cap the draw.
PATCH = r'''
import random as _random, sys as _sys, types as _types
_sys.modules["gurobipy"] = _types.ModuleType("gurobipy")
for _n in ("Model", "GRB", "quicksum"):
    setattr(_sys.modules["gurobipy"], _n, None)
import fairdiverse.recommendation.rank_model.FairNeg
_fairneg = _sys.modules["fairdiverse.recommendation.rank_model.FairNeg"]   # the package re-exports the class
_fairneg.random = _types.SimpleNamespace(sample=lambda pop, k: _random.sample(pop, min(k, len(pop))),
                                         choices=_random.choices)
'''


def fairneg(dm, _num_train_rows: int, seed: int, fused_step: bool = False):
    """fairlit's FairNeg with FairDiverse's FairNeg properties (its N is not used by FairNeg)."""
    from fairlit.methods import FairNeg
    from fairlit.models import MF

    return FairNeg(lambda u, i: MF(u, i, dim=32, init_std=0.01), num_users=dm.num_users, num_items=dm.num_items,
                   num_item_groups=dm.num_item_groups, ks=[5, 10, 20], lr=1e-3, w_fair=0.3, tau=0.1, alpha=0.2,
                   gamma=0.1, sample_seed=seed, fused_step=fused_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fd-venv", type=Path, default=Path("/tmp/fd-venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fd-bench-fairneg"))
    parser.add_argument("--epochs", type=int, default=6, help="FairDiverse validates at epoch 0 and 5: use 6")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fairlit-batch", nargs="+", default=["64", "64x16", "64x16f", "1024"],
                        help="fairlit batch sizes to time (64 = FairDiverse's); BxC: batch B, C batches per "
                             "Lightning step (data.batches_per_step; the same training); a trailing f: "
                             "model.fused_step (ops.bpr_adam_step; the same training up to float rounding)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table into this file (a marked section)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    python = ensure_venv(args.fd_venv)
    write_fairdiverse_data(args.work)
    rows, results = [], {}
    for seed in args.seeds:
        runs = []
        try:
            res = run_fairdiverse(python, args.work, args.epochs, seed, "FairNeg", PATCH)
        except RuntimeError as err:   # its unguarded p normalisation (v / sum v) can give NaN sampling weights
            print(f"seed {seed}: FairDiverse's FairNeg failed: {str(err).strip().splitlines()[-1]}", flush=True)
            rows.append(["FairDiverse 1.0.0 FairNeg", 64, seed, "failed"] + [""] * (len(METRICS) + 1))
            res = None
        split = fairdiverse_split(args.work)    # the files of the FairDiverse run just before (processed first)
        if res is not None:
            res["test"] = fairdiverse_rescored(res, split)
            runs.append(("FairDiverse 1.0.0 FairNeg", 64, res))
        for spec in args.fairlit_batch:
            fused = spec.endswith("f")
            b, c = (int(x) for x in (spec.rstrip("f").split("x") + ["1"])[:2])
            name = "fairlit FairNeg" + (f", batches_per_step {c}" if c > 1 else "") + (", fused_step" if fused else "")
            runs.append((name, b, fit_on_fairdiverse_split(lambda dm, n, s=seed, f=fused: fairneg(dm, n, s, f), split,
                                                           args.epochs, seed, b, c)))
        for name, batch, res in runs:
            values = [res["epoch_s"], res["eval_s"]] + [100 * res["test"][m] for m in METRICS]
            results.setdefault(f"{name}, batch {batch}", []).append(values)
            rows.append([name, batch, seed] + [f"{v:.2f}" for v in values])
            print(rows[-1], flush=True)
    table = seed_tables(results, rows, ["implementation", "batch", "seed", "s / epoch", "eval s"]
                        + [f"{m} (%)" for m in METRICS])
    print(table)
    if args.out:
        write_section(args.out, "bench_fairneg_fairdiverse", table)


if __name__ == "__main__":
    main()
