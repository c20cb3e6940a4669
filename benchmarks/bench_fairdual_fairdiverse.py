"""FairDiverse's FairDual vs fairlit's ``FairDual(preset="fairdiverse")`` on ML-100K, in one run.

    python benchmarks/bench_fairdual_fairdiverse.py --fd-venv /tmp/fd-venv --epochs 6 \
        --out docs/benchmarks.md

FairDiverse runs in its own venv (created here if missing; see ``shared/peers/fairdiverse/README.md``), never
imported by fairlit. Both sides get the same raw ML-100K (RecBole's files, read through fairlit), the same
rules (rating >= 4, 5-core, first genre, groups < 10 items merged, history 5, global 80/10/10 by time,
200 sampled candidates) and FairDual's code settings (BPR d 32, batch 64, Adam 1e-3, Q 700, K_f 10, η 0.01,
λ 2, α 0.2). The processed splits are each side's own: FairDiverse additionally drops rows with fewer than
5 history items and keeps label-0 rows in N, so the metrics are compared as two runs of one protocol, not
on identical files. Timings: seconds per training epoch (evaluation excluded) and per validation pass.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py
from harness import markdown_table, time_ms, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peers" / "fairdiverse"
METRICS = ["ndcg@5", "ndcg@10", "ndcg@20", "mrr@20", "mmf@20"]

# Run inside the FairDiverse venv: times train epochs and evaluations of RecTrainer.train().
DRIVER = r'''
import json, os, random, sys, time, types
sys.modules["gurobipy"] = types.ModuleType("gurobipy")         # README fact 3: only the re-rankers use it
for name in ("Model", "GRB", "quicksum"):
    setattr(sys.modules["gurobipy"], name, None)
import numpy as np, pandas as pd, torch
seed = int(sys.argv[2]); random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
from fairdiverse.recommendation import trainer as T, process_dataset as P, evaluator as E
cfg = json.loads(sys.argv[1])
P.Process(cfg["dataset"], cfg)
root = os.path.join("recommendation", "processed_dataset", cfg["dataset"])
for part in ("valid", "test"):                                  # README fact 5: drop users with > 200 positives
    path = os.path.join(root, f"{cfg['dataset']}.{part}.ranking")
    df = pd.read_csv(path, sep="\t")
    df[df["items"].map(lambda s: len(eval(s))) == cfg["sample_num"]].to_csv(path, sep="\t", index=False)
cfg["reprocess"] = False                                        # train() must reuse the filtered files
evals = []
orig_eval = E.Ranking_Evaluator.eval
def timed_eval(self, *a, **k):
    t = time.perf_counter(); out = orig_eval(self, *a, **k); evals.append(time.perf_counter() - t); return out
E.Ranking_Evaluator.eval = timed_eval
result = {}
orig_dump = T.json.dump
def grab(obj, f, *a, **k):
    result.update(obj); return orig_dump(obj, f, *a, **k)
T.json.dump = grab
t0 = time.perf_counter()
T.RecTrainer(cfg).train()
total = time.perf_counter() - t0
print("RESULT" + json.dumps({"total": total, "evals": evals, "test": result}))
'''


# FairDiverse's projection (FairDual.compute_next_dual: sort + cvxpy with G prefix constraints), timed.
CVXPY = r'''
import json, sys, time, types
sys.modules["gurobipy"] = types.ModuleType("gurobipy")
for name in ("Model", "GRB", "quicksum"):
    setattr(sys.modules["gurobipy"], name, None)
import numpy as np
from fairdiverse.recommendation.rank_model.FairDual import FairDual
out = {}
for g in json.loads(sys.argv[1]):
    rng = np.random.default_rng(0)
    fd = FairDual.__new__(FairDual)
    reps, t = 0, time.perf_counter()
    while reps < 3 or (time.perf_counter() - t < 2 and reps < 50):
        fd.compute_next_dual(0.01, np.ones(g), rng.normal(size=g), rng.normal(size=g), 2.0)
        reps += 1
    out[g] = (time.perf_counter() - t) / reps
print("RESULT" + json.dumps(out))
'''


def projection_table(python: Path, sizes=(2, 18, 1000)) -> str:
    """Per-call time of FairDiverse's cvxpy projection vs `project_dual` (CPU, and CUDA when present)."""
    import torch

    from fairlit.methods._fairdual_projection import project_dual

    proc = subprocess.run([str(python), "-c", CVXPY, json.dumps(list(sizes))], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    cvx = json.loads(line[0][6:]) if line else {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for g in sizes:
        row = [g, f"{1e3 * cvx[str(g)]:.2f}" if str(g) in cvx else "n/a"]
        for dev in devices:
            mu = torch.randn(g, device=dev)
            mhat = torch.ones(g, device=dev)
            row.append(f"{1e3 * time_ms(lambda mu=mu, mhat=mhat: project_dual(mu, mhat, 2.0)):.1f}")
        rows.append(row)
    header = ["G", "cvxpy (FairDiverse) ms"] + [f"project_dual {d} µs" for d in devices]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def ensure_venv(venv: Path) -> Path:
    """The FairDiverse venv's python; create the venv (pins + fairdiverse --no-deps) if it is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-r", str(PEER / "requirements.lock.txt")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "fairdiverse==1.0.0"], check=True)
    return python


def write_fairdiverse_data(work: Path) -> None:
    """FairDiverse's working tree: upstream properties + ML-100K atomic files (first genre, RecBole ids)."""
    from fairlit.data import load_dataset

    rec = work / "recommendation"
    shutil.copytree(PEER / "properties", rec / "properties", dirs_exist_ok=True)
    data = load_dataset("ml-100k")
    folder = rec / "dataset" / "ml100k"
    folder.mkdir(parents=True, exist_ok=True)
    inter = data.inter[["user_id", "item_id", "rating", "timestamp"]]
    inter.to_csv(folder / "ml100k.inter", sep="\t", index=False,
                 header=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    item = data.item.assign(genre=[g[0] for g in data.item["genre"]],                 # token_seq -> tuple
                            movie_title=[" ".join(t) for t in data.item["movie_title"]])
    item[["item_id", "genre", "movie_title"]].to_csv(folder / "ml100k.item", sep="\t", index=False,
                                                     header=["item_id:token", "genre:token", "movie_title:token"])


def run_fairdiverse(python: Path, work: Path, epochs: int, seed: int, rank_model: str = "FairDual",
                    prelude: str = "") -> dict:
    """Train FairDiverse's ``rank_model`` on BPR-MF (ML-100K protocol above) and time it; ``prelude`` is Python
    run before the driver (e.g. a patch of the peer)."""
    cfg = {"dataset": "ml100k", "model": "BPR", "data_type": "pair", "fair-rank": True, "rank_model": rank_model,
           "epoch": epochs, "eval_step": 5, "device": "cpu", "batch_size": 64, "learning_rate": 1e-3,
           "topk": [5, 10, 20], "log_name": f"bench_{rank_model.lower()}", "watch_metric": "ndcg@5",
           "fairness_type": "Exposure", "mmf_eval_ratio": 0.2, "sample_num": 200, "store_scores": False,
           "reprocess": True, "use_llm": False, "eval_type": "ranking"}
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")   # README fact 4
    proc = subprocess.run([str(python), "-c", prelude + DRIVER, json.dumps(cfg), str(seed)], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    if proc.returncode or not line:
        raise RuntimeError(f"FairDiverse failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(line[0][6:])
    # Epoch time = (train() wall time − evaluations) / epochs; its preprocessing is cached before train().
    out["epoch_s"] = (out["total"] - sum(out["evals"])) / epochs
    out["eval_s"] = out["evals"][0] if out["evals"] else float("nan")
    return out


def run_fairlit(epochs: int, seed: int, batches_per_step: int = 1) -> dict:
    import lightning as L
    import torch

    from fairlit.data import RecDataModule
    from fairlit.methods import FairDual
    from fairlit.models import MF

    class Clock(L.Callback):
        def __init__(self):
            self.train, self.val = [], []

        def on_train_epoch_start(self, *_):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, *_):
            self.train.append(time.perf_counter() - self.t)

        def on_validation_epoch_start(self, *_):
            self.v = time.perf_counter()

        def on_validation_epoch_end(self, *_):
            self.val.append(time.perf_counter() - self.v)

    torch.manual_seed(seed)
    dm = RecDataModule(dataset="ml-100k", rating_threshold=4, k_core=5, split="chrono", item_group="genre_first",
                       item_group_min_size=10, batch_size=64, batches_per_step=batches_per_step, eval_batch_size=128,
                       eval_protocol="uni200", seed=seed)
    model = FairDual(lambda u, i: MF(u, i, dim=32, init_std=0.01), num_users=dm.num_users, num_items=dm.num_items,
                     num_item_groups=dm.num_item_groups, ks=[5, 10, 20], preset="fairdiverse", bpr_on_sigmoid=True,
                     num_samples=700, topk=10, eta=0.01, lam=2.0, alpha=0.2)
    clock = Clock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                        check_val_every_n_epoch=epochs, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    t = time.perf_counter()
    test = sampled_test(model, dm)
    return {"epoch_s": sum(clock.train) / len(clock.train), "eval_s": time.perf_counter() - t, "test": test}


def sampled_test(model, dm, num_candidates: int = 200) -> dict[str, float]:
    """FairDiverse's test protocol: rank each test user's positives + (200 − |P_u|) of its sampled negatives.

    (fairlit's ``uniN`` batches carry only the N negatives, so the targets are added here; users with more
    than 200 positives are dropped, as on the FairDiverse side.)
    """
    import torch

    from fairlit.metrics import ItemGroupFairness, RankingMetrics

    ks = [5, 10, 20]
    ranking = RankingMetrics(ks, metrics=("ndcg", "mrr", "hr"))
    fair = ItemGroupFairness(dm.item_group, num_groups=dm.num_item_groups, ks=ks)
    model.eval()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            users, items = model.encode(batch)
            ptr, idx = batch["target_indptr"], batch["target_indices"]
            for row in range(len(users)):
                targets = idx[ptr[row]:ptr[row + 1]]
                if len(targets) > num_candidates:
                    continue
                cand = torch.cat([targets, batch["candidates"][row, : num_candidates - len(targets)]])
                values, order = (items[cand] @ users[row]).topk(max(ks))
                top = cand[order]
                ranking.update(torch.isin(top, targets)[None], torch.tensor([len(targets)]))
                fair.update(top[None], values[None])
    out = ranking.compute() | fair.compute()
    return {k.replace("mmf_exposure", "mmf"): float(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fd-venv", type=Path, default=Path("/tmp/fd-venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fd-bench-work"))
    parser.add_argument("--epochs", type=int, default=6, help="FairDiverse validates at epoch 0 and 5: use 6")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table into this file (a marked section)")
    parser.add_argument("--projection-only", action="store_true", help="only time the projection")
    parser.add_argument("--sides", nargs="+", default=["fairdiverse", "fairlit"])
    parser.add_argument("--batches-per-step", type=int, nargs="+", default=[1, 16],
                        help="fairlit runs: batches of 64 per Lightning step (data.batches_per_step; same training)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    python = ensure_venv(args.fd_venv)
    if "fairdiverse" in args.sides or args.projection_only:
        projection = projection_table(python)
        print(projection)
        if args.out:
            with open(args.out, "a") as f:
                f.write(f"\n{projection}\n")
    if args.projection_only:
        return
    write_fairdiverse_data(args.work)
    rows = []
    for seed in args.seeds:
        runs = [("FairDiverse 1.0.0", "fairdiverse", lambda s=seed: run_fairdiverse(python, args.work, args.epochs, s))]
        runs += [(f"fairlit, batches_per_step {c}", "fairlit", lambda s=seed, c=c: run_fairlit(args.epochs, s, c))
                 for c in args.batches_per_step]
        for name, side, fn in runs:
            if side not in args.sides:
                continue
            res = fn()
            rows.append([name, seed, f"{res['epoch_s']:.2f}", f"{res['eval_s']:.2f}"]
                        + [f"{100 * float(res['test'].get(m, float('nan'))):.2f}" for m in METRICS])
            print(rows[-1], flush=True)
    header = ["implementation", "seed", "s / epoch", "eval s"] + [f"{m} (%)" for m in METRICS]
    table = markdown_table(header, rows)
    print(table)
    if args.out:
        write_section(args.out, "bench_fairdual_fairdiverse", table)


if __name__ == "__main__":
    main()
