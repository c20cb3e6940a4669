"""FairDiverse's FairNeg vs fairlit's `FairNeg` on ML-100K, in one run (CPU seconds per epoch, evaluation).

    python benchmarks/bench_fairneg_fairdiverse.py --fd-venv /tmp/fd-venv --epochs 6 \
        --out docs/benchmarks.md

FairDiverse runs in its own venv (created here if missing, see ``shared/peers/fairdiverse/README.md``) and is
never imported by fairlit. Both sides use the FairDual benchmark's ML-100K protocol (rating >= 4, 5-core,
first genre, groups < 10 items merged, global 80/10/10 by time, 200 sampled test candidates; see
`bench_fairdual_fairdiverse.py`, whose venv, data and sampled-test helpers are reused) and the same
training settings: BPR-MF d 32, batch 64, Adam 1e-3, one negative per positive, FairDiverse's FairNeg
properties (α 0.2, γ 0.1, τ 0.1, mix 0.3). The algorithms are not the same: FairDiverse's FairNeg draws
each batch's negatives from 300 random candidates and updates its group distribution from training BPR
losses; fairlit's follows the paper (all non-interacted items, G-BCE over all positives, Eqs. 3-8). Timings:
seconds per training epoch (evaluation excluded) and per evaluation pass.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fairdual_fairdiverse import ensure_venv, run_fairdiverse, sampled_test, write_fairdiverse_data  # noqa: E402
from harness import markdown_table, write_section  # noqa: E402

METRICS = ["ndcg@5", "ndcg@10", "ndcg@20", "mrr@20"]

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


def run_fairlit(epochs: int, seed: int, batch_size: int, batches_per_step: int = 1) -> dict:
    import lightning as L
    import torch

    from fairlit.data import RecDataModule
    from fairlit.methods import FairNeg
    from fairlit.models import MF

    class Clock(L.Callback):
        def __init__(self):
            self.train = []

        def on_train_epoch_start(self, *_):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, *_):
            self.train.append(time.perf_counter() - self.t)

    torch.manual_seed(seed)
    dm = RecDataModule(dataset="ml-100k", rating_threshold=4, k_core=5, split="chrono",
                       item_group="genre_first", item_group_min_size=10, batch_size=batch_size,
                       batches_per_step=batches_per_step, eval_batch_size=128, eval_protocol="uni200", seed=seed)
    model = FairNeg(lambda u, i: MF(u, i, dim=32, init_std=0.01), num_users=dm.num_users,
                    num_items=dm.num_items, num_item_groups=dm.num_item_groups, ks=[5, 10, 20], lr=1e-3,
                    w_fair=0.3, tau=0.1, alpha=0.2, gamma=0.1, sample_seed=seed)
    clock = Clock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock],
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    t = time.perf_counter()
    test = sampled_test(model, dm)
    return {"epoch_s": sum(clock.train) / len(clock.train), "eval_s": time.perf_counter() - t, "test": test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fd-venv", type=Path, default=Path("/tmp/fd-venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fd-bench-fairneg"))
    parser.add_argument("--epochs", type=int, default=6, help="FairDiverse validates at epoch 0 and 5: use 6")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fairlit-batch", nargs="+", default=["64", "64x16", "1024"],
                        help="fairlit batch sizes to time (64 = FairDiverse's); BxC: batch B, C batches per "
                             "Lightning step (data.batches_per_step; the same training)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table into this file (a marked section)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    python = ensure_venv(args.fd_venv)
    write_fairdiverse_data(args.work)
    rows = []
    for seed in args.seeds:
        runs = [("FairDiverse 1.0.0 FairNeg", 64,
                 lambda: run_fairdiverse(python, args.work, args.epochs, seed, "FairNeg", PATCH))]
        for spec in args.fairlit_batch:
            b, c = (int(x) for x in (spec.split("x") + ["1"])[:2])
            runs.append(("fairlit FairNeg" + (f", batches_per_step {c}" if c > 1 else ""), b,
                         lambda b=b, c=c: run_fairlit(args.epochs, seed, b, c)))
        for name, batch, fn in runs:
            res = fn()
            rows.append([name, batch, seed, f"{res['epoch_s']:.2f}", f"{res['eval_s']:.2f}"]
                        + [f"{100 * float(res['test'].get(m, float('nan'))):.2f}" for m in METRICS])
            print(rows[-1], flush=True)
    header = ["implementation", "batch", "seed", "s / epoch", "eval s"] + [f"{m} (%)" for m in METRICS]
    table = markdown_table(header, rows)
    print(table)
    if args.out:
        write_section(args.out, "bench_fairneg_fairdiverse", table)


if __name__ == "__main__":
    main()
