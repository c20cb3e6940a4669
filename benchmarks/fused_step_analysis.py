"""The measurements behind the `fused_step` prose of docs/benchmarks.md, on FairDiverse's processed ML-100K.

    python benchmarks/fused_step_analysis.py profile     # FairNeg, fused: epoch time, and the op's share of it
    python benchmarks/fused_step_analysis.py horizon     # Recall-Disp@20 of BPR (UNS) vs FairNeg after 6 and 20 epochs
    python benchmarks/fused_step_analysis.py w_fair      # FairNeg after 6 epochs vs its fairness weight

They read the split `bench_fairneg_fairdiverse.py` left in its work folder (run it first; the files of its last
seed). Settings as there: BPR-MF d 32, batch 64, 16 batches per Lightning step, `fused_step=True`, 1 thread.
Nothing is written to docs.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fairdual_fairdiverse import fairdiverse_split, fit_on_fairdiverse_split  # noqa: E402
from bench_fairneg_fairdiverse import fairneg, uns  # noqa: E402

SEEDS = (0, 1, 2)


def profile(work: Path) -> None:
    """Seconds per fused FairNeg epoch and the time spent inside `ops.bpr_adam_step` (wrapper included)."""
    from fairlit.methods import base

    split = fairdiverse_split(work)
    spent, calls, original = [0.0], [0], base.ops.bpr_adam_step

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        calls[0] += 1
        return out

    base.ops.bpr_adam_step = timed
    try:
        res = fit_on_fairdiverse_split(lambda dm, n: fairneg(dm, n, 0, True), split, 6, 0, 64, 16)
    finally:
        base.ops.bpr_adam_step = original
    batches = calls[0] * 16 / 6
    print(f"FairNeg fused: {res['epoch_s']:.3f} s per epoch; bpr_adam_step {spent[0] / 6:.3f} s per epoch "
          f"({spent[0] / 6 / batches * 1e3:.3f} ms per batch, {calls[0]} calls of up to 16 batches)")


def report(label: str, make, split, epochs: int) -> None:
    """Train ``make(dm, N, seed)`` for each seed of SEEDS; print the mean NDCG@20 and Recall-Disp@20 (%)."""
    runs = [fit_on_fairdiverse_split(lambda dm, n, s=seed: make(dm, n, s), split, epochs, seed, 64, 16)["test"]
            for seed in SEEDS]
    ndcg, disp = ([100 * r[m] for r in runs] for m in ("ndcg@20", "recall_disp@20"))
    print(f"{label}: NDCG@20 {statistics.mean(ndcg):.1f}, Recall-Disp@20 "
          f"{statistics.mean(disp):.1f} ({' / '.join(f'{d:.1f}' for d in disp)})", flush=True)


def horizon(work: Path) -> None:
    """NDCG@20 / Recall-Disp@20 (%) of plain BPR and FairNeg after 6 and 20 epochs, seeds 0-2, one split."""
    split = fairdiverse_split(work)
    for epochs in (6, 20):
        report(f"{epochs} epochs UNS", lambda dm, n, s: uns(dm, n, s, True), split, epochs)
        report(f"{epochs} epochs FairNeg", lambda dm, n, s: fairneg(dm, n, s, True), split, epochs)


def w_fair(work: Path) -> None:
    """FairNeg after 6 epochs with the fairness weight of its negative distribution from FairDiverse's 0.3 to 1
    (pure group distribution, no hardness part), seeds 0-2, one split."""
    split = fairdiverse_split(work)
    for weight in (0.3, 0.6, 0.9, 1.0):
        report(f"w_fair {weight}", lambda dm, n, s, w=weight: fairneg(dm, n, s, True, w_fair=w), split, 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["profile", "horizon", "w_fair"])
    parser.add_argument("--fairneg-work", type=Path, default=Path("/tmp/fd-bench-fairneg"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    {"profile": profile, "horizon": horizon, "w_fair": w_fair}[args.what](args.fairneg_work)


if __name__ == "__main__":
    main()
