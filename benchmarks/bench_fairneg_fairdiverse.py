"""FairDiverse's FairNeg vs fairlit's `FairNeg` on identical ML-100K files, in one run (CPU seconds per epoch).

    python benchmarks/bench_fairneg_fairdiverse.py --fd-venv /tmp/fd-venv --epochs 6 --seeds 0 1 2 3 4 \
        --out docs/benchmarks.md

FairDiverse runs in its own venv (created here if missing, see ``shared/peers/fairdiverse/README.md``) and is
never imported by fairlit. FairDiverse processes ML-100K as in `bench_fairdual_fairdiverse.py` (whose venv,
data and helpers are reused) and trains its FairNeg; fairlit's FairNeg then trains on FairDiverse's processed
split (same ids, rows and groups) and both are tested on FairDiverse's candidate lists by fairlit's metric
code (FairDiverse's from its stored test scores; its own evaluator reports no group recall).

Settings as FairDiverse computes them: BPR-MF d 32, Adam 1e-3, batch 64, one negative per positive, BPR on σ(ŷ)
(FairDiverse's BPR model returns σ of the dot product and its loss takes the difference of those), FairNeg's
properties (α 0.2, γ 0.1, mix 0.3 as the fairness weight) with the importance part a softmax of raw scores / τ
(τ 0.1; fairlit's ``imp_score="logit"``). The algorithms are not the same: FairDiverse's FairNeg draws each
batch's negatives from 300 random candidates and updates its group distribution from training BPR losses;
fairlit's follows the paper (all non-interacted items, G-BCE over all positives, Eqs. 3-8).

Also run: each side's plain BPR (``--no-uns`` skips it; FairDiverse's with uniform negatives, the pair-sampler
patch of `bench_fairdual_fairdiverse.py`), and a record of FairDiverse's FairNeg sampler per epoch (largest
|p| entry, share of the drawn negatives on the 10 most drawn items) as a second table. Timings: seconds per
training epoch (evaluation excluded) and per test pass.
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fairdual_fairdiverse import (  # noqa: E402
    UNIFORM_NEGATIVES,
    ensure_venv,
    fairdiverse_rescored,
    fairdiverse_split,
    fit_on_fairdiverse_split,
    run_fairdiverse,
    seed_tables,
    write_fairdiverse_data,
)
from harness import markdown_table, write_section  # noqa: E402

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

# A record of FairDiverse's sampler, one JSON line per epoch in <work>/fairneg_sampler.jsonl: the largest |p| entry
# of the group distribution its draws used and how concentrated the drawn negatives were. Its reset_parameters
# (start of every epoch) divides by sums that are zero up to rounding (the gradient's and then v's).
SAMPLER_RECORD = r'''
import atexit as _atexit, collections as _collections, json as _json, numpy as _np
_drawn, _sampler = _collections.Counter(), []
_sample, _reset = _fairneg.FairNeg.sample, _fairneg.FairNeg.reset_parameters
def _record():
    if _drawn:
        total, top = sum(_drawn.values()), _drawn.most_common(10)
        with open("fairneg_sampler.jsonl", "a") as f:
            f.write(_json.dumps({"max_abs_p": float(_np.abs(_sampler[0].sample_probality).max()), "draws": total,
                                 "distinct": len(_drawn), "top10_share": sum(c for _, c in top) / total}) + "\n")
        _drawn.clear()
def _sample_recorded(self, interaction, model):
    _sampler[:] = [self]
    neg, adj = _sample(self, interaction, model)
    _drawn.update(neg.tolist())
    return neg, adj
def _reset_recorded(self):
    _record()
    _reset(self)
_fairneg.FairNeg.sample, _fairneg.FairNeg.reset_parameters = _sample_recorded, _reset_recorded
_atexit.register(_record)
'''


def fairneg(dm, _num_train_rows: int, seed: int, fused_step: bool = False, w_fair: float = 0.3):
    """fairlit's FairNeg computing what FairDiverse's does (module docstring; its N is not used by FairNeg);
    ``w_fair`` 0.3 is FairDiverse's mix."""
    from fairlit.methods import FairNeg
    from fairlit.models import MF

    return FairNeg(lambda u, i: MF(u, i, dim=32, init_std=0.01), num_users=dm.num_users, num_items=dm.num_items,
                   num_item_groups=dm.num_item_groups, ks=[5, 10, 20], lr=1e-3, w_fair=w_fair, tau=0.1, alpha=0.2,
                   gamma=0.1, imp_score="logit", bpr_on_sigmoid=True, sample_seed=seed, fused_step=fused_step)


def uns(dm, _num_train_rows: int, _seed: int, fused_step: bool = False):
    """fairlit's plain BPR (uniform negatives) with the same model and loss."""
    from fairlit.methods import BPR
    from fairlit.models import MF

    return BPR(lambda u, i: MF(u, i, dim=32, init_std=0.01), num_users=dm.num_users, num_items=dm.num_items,
               num_item_groups=dm.num_item_groups, ks=[5, 10, 20], lr=1e-3, bpr_on_sigmoid=True,
               fused_step=fused_step)


def fit_fairlit(make_model, name: str, spec: str, split, epochs: int, seed: int) -> tuple[str, int, dict]:
    """One fairlit row: ``spec`` is B or BxC, optionally with a trailing f (see --fairlit-batch)."""
    fused = spec.endswith("f")
    b, c = (int(x) for x in (spec.rstrip("f").split("x") + ["1"])[:2])
    name += (f", batches_per_step {c}" if c > 1 else "") + (", fused_step" if fused else "")
    return name, b, fit_on_fairdiverse_split(lambda dm, n: make_model(dm, n, seed, fused), split, epochs, seed, b, c)


def sampler_row(seed: int, record: list[dict]) -> list:
    """Epoch 1 (before FairDiverse's first update of p) against the later epochs' worst / mean."""
    later = record[1:]
    return [seed, f"{record[0]['max_abs_p']:.3g}", f"{max(r['max_abs_p'] for r in later):.3g}",
            record[0]["distinct"], f"{statistics.mean(r['distinct'] for r in later):.0f}",
            f"{100 * record[0]['top10_share']:.1f}", f"{100 * statistics.mean(r['top10_share'] for r in later):.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fd-venv", type=Path, default=Path("/tmp/fd-venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fd-bench-fairneg"))
    parser.add_argument("--epochs", type=int, default=6, help="FairDiverse validates at epoch 0 and 5: use 6")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--fairlit-batch", nargs="+", default=["64", "64x16", "64x16f", "1024"],
                        help="fairlit batch sizes to time (64 = FairDiverse's); BxC: batch B, C batches per "
                             "Lightning step (data.batches_per_step; the same training); a trailing f: "
                             "model.fused_step (ops.bpr_adam_step; the same training up to float rounding)")
    parser.add_argument("--no-uns", action="store_true", help="skip the plain-BPR rows of both sides")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the markdown tables into this file (marked sections)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    python = ensure_venv(args.fd_venv)
    write_fairdiverse_data(args.work)
    record_file = args.work / "fairneg_sampler.jsonl"
    rows, results, sampler_rows = [], {}, []
    for seed in args.seeds:
        runs = []
        record_file.unlink(missing_ok=True)
        try:
            res = run_fairdiverse(python, args.work, args.epochs, seed, "FairNeg", PATCH + SAMPLER_RECORD)
        except RuntimeError as err:   # its unguarded p normalisation (v / sum v) can give NaN sampling weights
            print(f"seed {seed}: FairDiverse's FairNeg failed: {str(err).strip().splitlines()[-1]}", flush=True)
            rows.append(["FairDiverse 1.0.0 FairNeg", 64, seed, "failed"] + [""] * (len(METRICS) + 1))
            res = None
        if record_file.exists():
            sampler_rows.append(sampler_row(seed, [json.loads(x) for x in record_file.read_text().splitlines()]))
        split = fairdiverse_split(args.work)    # the files of the FairDiverse run just before (processed first)
        if res is not None:
            res["test"] = fairdiverse_rescored(res, split)
            runs.append(("FairDiverse 1.0.0 FairNeg", 64, res))
        runs += [fit_fairlit(fairneg, "fairlit FairNeg", spec, split, args.epochs, seed) for spec in args.fairlit_batch]
        if not args.no_uns:
            res = run_fairdiverse(python, args.work, args.epochs, seed, None, UNIFORM_NEGATIVES)
            if not torch.equal(fairdiverse_split(args.work).candidates, split.candidates):
                raise RuntimeError(f"seed {seed}: FairDiverse's BPR run processed other test lists")
            res["test"] = fairdiverse_rescored(res, split)
            runs += [("FairDiverse 1.0.0 BPR (uniform negatives)", 64, res),
                     fit_fairlit(uns, "fairlit BPR (UNS)", "64x16f", split, args.epochs, seed)]
        for name, batch, res in runs:
            values = [res["epoch_s"], res["eval_s"]] + [100 * res["test"][m] for m in METRICS]
            results.setdefault(f"{name}, batch {batch}", []).append(values)
            rows.append([name, batch, seed] + [f"{v:.2f}" for v in values])
            print(rows[-1], flush=True)
    table = seed_tables(results, rows, ["implementation", "batch", "seed", "s / epoch", "eval s"]
                        + [f"{m} (%)" for m in METRICS])
    sampler = markdown_table(["seed", "max abs(p), epoch 1", "max abs(p), epochs 2+", "distinct negatives, epoch 1",
                              "distinct negatives, epochs 2+ (mean)", "top-10 items' share of negatives, epoch 1 (%)",
                              "top-10 share, epochs 2+ (mean, %)"], sampler_rows)
    print(table + "\n\n" + sampler)
    if args.out:
        write_section(args.out, "bench_fairneg_fairdiverse", table)
        write_section(args.out, "bench_fairneg_fairdiverse_sampler", sampler)


if __name__ == "__main__":
    main()
