"""FairDiverse's FairDual vs fairlit's ``FairDual(preset="fairdiverse")`` on identical ML-100K files, in one run.

    python benchmarks/bench_fairdual_fairdiverse.py --fd-venv /tmp/fd-venv --epochs 6 --seeds 0 1 2 \
        --out docs/benchmarks.md

FairDiverse runs in its own venv (created here if missing; see ``shared/peers/fairdiverse/README.md``), never
imported by fairlit. FairDiverse processes RecBole's raw ML-100K with its own rules (rating >= 4 is label 1,
5-core, first genre, genres < 10 items merged, 5 history items, global 80/10/10 by time, 200 sampled test
candidates) and trains with FairDual's code settings (BPR d 32, batch 64, Adam 1e-3, Q 700, K_f 10, η 0.01,
λ 2, α 0.2). fairlit then trains on *those* processed files (same ids, same label-1 training rows, same groups,
FairDiverse's N; ``RecDataModule.from_prepared``) and is tested on FairDiverse's own candidate lists, so the
metric columns compare the two implementations, not two data pipelines. Timings: seconds per training epoch
(evaluation excluded) and per test pass.
"""
import argparse
import ast
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py
import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from harness import EpochClock, markdown_table, time_ms, write_section  # noqa: E402

from fairlit.data import Prepared, RecDataModule  # noqa: E402

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
# The test pass's scores (store_scores): row r holds the scores of test-list row r, in list order.
import glob, scipy.sparse as sp
path = max(glob.glob(os.path.join("recommendation", "log", "*_" + cfg["log_name"], "ranking_scores.npz")),
           key=os.path.getmtime)
coo = sp.load_npz(path)
rows = coo.shape[0]
assert (coo.row == np.repeat(np.arange(rows), cfg["sample_num"])).all()
print("RESULT" + json.dumps({"total": total, "evals": evals, "test": result,
                             "scores": coo.data.reshape(rows, -1).tolist(),
                             "items": coo.col.reshape(rows, -1).tolist()}))
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


# FairDiverse 1.0.0's pair sampler starts from ``neg_item = 0`` and only draws while that is a positive: every
# user without item 0 among its positives gets item 0 as the negative (39,883 of 40,115 ML-100K training rows).
# ``--uniform-negatives`` runs FairDiverse with this patch: the first candidate is drawn too.
UNIFORM_NEGATIVES = r'''
import random as _random, sys as _sys, types as _types
_sys.modules["gurobipy"] = _types.ModuleType("gurobipy")
for _n in ("Model", "GRB", "quicksum"):
    setattr(_sys.modules["gurobipy"], _n, None)
import torch as _torch
from fairdiverse.recommendation import sampler as _sampler
def _pair_item(self, idx):
    user_id = int(self.user_ids[idx].numpy())
    neg_item = _random.randint(0, self.config["item_num"] - 1)
    while neg_item in self.user2pos[user_id]:
        neg_item = _random.randint(0, self.config["item_num"] - 1)
    neg_group = _torch.tensor(self.iid2pid[neg_item], dtype=_torch.long)
    return (self.user_ids[idx], self.history_ids[idx], self.item_ids[idx], _torch.tensor(neg_item, dtype=_torch.long),
            self.group_id[idx], neg_group)
_sampler.PairWiseDataset.__getitem__ = _pair_item
'''


def projection_table(python: Path, sizes=(2, 18, 1000)) -> str:
    """Per-call time of FairDiverse's cvxpy projection vs `project_dual` (CPU, and CUDA when present)."""
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


def run_fairdiverse(python: Path, work: Path, epochs: int, seed: int, rank_model: str | None = "FairDual",
                    prelude: str = "") -> dict:
    """Train FairDiverse's ``rank_model`` (``None``: plain BPR) on BPR-MF (ML-100K protocol above) and time it;
    ``prelude`` is Python run before the driver (e.g. a patch of the peer)."""
    cfg = {"dataset": "ml100k", "model": "BPR", "data_type": "pair", "fair-rank": rank_model is not None,
           "rank_model": rank_model, "epoch": epochs, "eval_step": 5, "device": "cpu", "batch_size": 64,
           "learning_rate": 1e-3, "topk": [5, 10, 20], "log_name": f"bench_{(rank_model or 'bpr').lower()}",
           "watch_metric": "ndcg@5",
           "fairness_type": "Exposure", "mmf_eval_ratio": 0.2, "sample_num": 200, "store_scores": True,
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


@dataclass
class FairDiverseSplit:
    """FairDiverse's processed ML-100K of its last run, read once.

    ``prep`` keeps FairDiverse's user/item ids, its label-1 rows of each split (the rows its pair loader trains
    on and its ranking files test) and its item groups (``iid2pid.json``). ``num_train_rows`` (N) is the length
    of its training file, label-0 rows included: FairDiverse's FairDual divides the budget by it. The test lists
    are ``<name>.test.ranking`` after the driver's filter: ``users [U]``, ``candidates [U, 200]`` (positives
    first) and ``num_pos [U]``.
    """

    prep: Prepared
    num_train_rows: int
    users: torch.Tensor
    candidates: torch.Tensor
    num_pos: torch.Tensor


def fairdiverse_split(work: Path) -> FairDiverseSplit:
    """Read the processed files of FairDiverse's last run under ``work`` (see `FairDiverseSplit`)."""
    import pandas as pd
    import yaml

    root = work / "recommendation" / "processed_dataset" / "ml100k"
    if not (root / "ml100k.test.ranking").exists():
        raise FileNotFoundError(f"{root}: no FairDiverse processed split; run with --sides fairdiverse first")
    cfg = yaml.safe_load((root / "process_config.yaml").read_text())
    frames = [pd.read_csv(root / f"ml100k.{part}", sep="\t") for part in ("train", "valid.CTR", "test.CTR")]
    positives = [f[f["label:float"] == 1] for f in frames]
    bounds = np.cumsum([0] + [len(f) for f in positives])
    iid2pid = json.loads((root / "iid2pid.json").read_text())
    prep = Prepared(user=np.concatenate([f["user_id:token"].to_numpy(np.int64) for f in positives]),
                    item=np.concatenate([f["item_id:token"].to_numpy(np.int64) for f in positives]),
                    time=np.concatenate([f["timestamp:float"].to_numpy(np.float64) for f in positives]),
                    user_tokens=np.arange(cfg["user_num"]), item_tokens=np.arange(cfg["item_num"]),
                    parts=[np.arange(bounds[k], bounds[k + 1]) for k in range(3)],
                    item_group=np.array([int(iid2pid[str(i)]) for i in range(cfg["item_num"])]),
                    item_group_names=[str(g) for g in range(cfg["group_num"])])
    lists = pd.read_csv(root / "ml100k.test.ranking", sep="\t")
    return FairDiverseSplit(
        prep, len(frames[0]), torch.tensor(lists["user_id"].to_numpy(np.int64)),
        torch.as_tensor(np.stack([ast.literal_eval(x) for x in lists["items"]]).astype(np.int64)),
        torch.tensor(lists["pos_length"].to_numpy(np.int64)))


def fit_on_fairdiverse_split(make_model, split: FairDiverseSplit, epochs: int, seed: int, batch_size: int = 64,
                             batches_per_step: int = 1) -> dict:
    """Train ``make_model(dm, N)`` on FairDiverse's processed split for ``epochs`` epochs (timed), then test it
    on FairDiverse's candidate lists. Returns ``epoch_s``, ``eval_s`` and the test metrics."""
    torch.manual_seed(seed)
    dm = RecDataModule.from_prepared(split.prep, batch_size=batch_size, batches_per_step=batches_per_step,
                                     seed=seed)
    model = make_model(dm, split.num_train_rows)
    clock = EpochClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    t = time.perf_counter()
    model.eval()
    with torch.no_grad():
        user_vecs, item_vecs = model.encode({"user": split.users})
        scores = torch.einsum("bd,bcd->bc", user_vecs, item_vecs[split.candidates])    # [U, 200]
    test = list_metrics(scores, split)
    return {"epoch_s": sum(clock.seconds) / len(clock.seconds), "eval_s": time.perf_counter() - t, "test": test}


def list_metrics(scores: torch.Tensor, split: FairDiverseSplit) -> dict[str, float]:
    """FairDiverse's ranking test by fairlit's metric classes: row u ranks its candidates ``[U, C]`` by
    ``scores [U, C]``; its first ``num_pos`` candidates are the positives (the rest sampled negatives,
    repeats included). NDCG/MRR/HR and exposure MMF (ratio 0.2), plus FairNeg's pooled group recall."""
    from fairlit.metrics import GroupRecall, ItemGroupFairness, RankingMetrics

    ks = [5, 10, 20]
    candidates, num_pos = split.candidates, split.num_pos
    item_group, num_groups = torch.as_tensor(split.prep.item_group), len(split.prep.item_group_names)
    values, order = scores.topk(max(ks), dim=1)
    top, hits = candidates.gather(1, order), order < num_pos[:, None]
    ranking = RankingMetrics(ks, metrics=("ndcg", "mrr", "hr"))
    ranking.update(hits, num_pos)
    fair = ItemGroupFairness(item_group, num_groups=num_groups, ks=ks)
    fair.update(top, values)
    recall = GroupRecall(item_group, num_groups, ks)
    first = torch.arange(candidates.shape[1]) < num_pos[:, None]
    recall.update(top, hits, torch.cat([num_pos.new_zeros(1), num_pos.cumsum(0)]), candidates[first])
    out = ranking.compute() | fair.compute() | recall.compute()
    return {k.replace("mmf_exposure", "mmf"): float(v) for k, v in out.items()}


def fairdiverse_rescored(res: dict, split: FairDiverseSplit) -> dict[str, float]:
    """fairlit's metrics of FairDiverse's own test scores (its group recall, and a check of the metric code)."""
    if not torch.equal(torch.tensor(res["items"]), split.candidates):
        raise RuntimeError("FairDiverse's stored test scores are not in the order of its test lists")
    return list_metrics(torch.tensor(res["scores"]), split)


def seed_tables(results: dict[str, list[list[float]]], rows: list[list], header: list[str]) -> str:
    """Per-seed rows, then mean ± std per implementation when there are several seeds."""
    table = markdown_table(header, rows)
    if max(len(v) for v in results.values()) > 1:
        first = header.index("s / epoch")
        summary = [[name, len(vals)] + [f"{statistics.mean(c):.2f} ± {statistics.stdev(c):.2f}" if len(c) > 1
                                        else f"{c[0]:.2f}" for c in zip(*vals)] for name, vals in results.items()]
        table += "\n\nMean ± std over the seeds:\n\n" + markdown_table(
            [header[0], "seeds"] + header[first:], summary)
    return table


def uni(dm, _num_train_rows: int, fused_step: bool = False):
    """fairlit's unweighted BPR with FairDiverse's loss on σ-scores: the plain-BPR parity row."""
    from fairlit.methods import UNI
    from fairlit.models import MF

    return UNI(lambda u, i: MF(u, i, dim=32, init_std=0.01), num_users=dm.num_users, num_items=dm.num_items,
               num_item_groups=dm.num_item_groups, ks=[5, 10, 20], bpr_on_sigmoid=True, fused_step=fused_step)


def fairdual(dm, num_train_rows: int, fused_step: bool = False):
    """fairlit's FairDual with FairDiverse's code settings (preset, BPR on σ-scores, its N)."""
    from fairlit.methods import FairDual
    from fairlit.models import MF

    return FairDual(lambda u, i: MF(u, i, dim=32, init_std=0.01), num_users=dm.num_users, num_items=dm.num_items,
                    num_item_groups=dm.num_item_groups, ks=[5, 10, 20], preset="fairdiverse", bpr_on_sigmoid=True,
                    num_samples=700, topk=10, eta=0.01, lam=2.0, alpha=0.2, num_train_rows=num_train_rows,
                    fused_step=fused_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fd-venv", type=Path, default=Path("/tmp/fd-venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fd-bench-work"))
    parser.add_argument("--epochs", type=int, default=6, help="FairDiverse validates at epoch 0 and 5: use 6")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table into this file (a marked section)")
    parser.add_argument("--projection-only", action="store_true", help="only time the projection")
    parser.add_argument("--sides", nargs="+", default=["fairdiverse", "fairlit"])
    parser.add_argument("--uniform-negatives", action="store_true",
                        help="patch FairDiverse's pair sampler, which returns item 0 as the negative of most rows")
    parser.add_argument("--methods", nargs="+", choices=["fairdual", "bpr"], default=["fairdual"],
                        help="bpr: plain BPR on both sides (FairDiverse without fair-rank, fairlit UNI), a parity check")
    parser.add_argument("--batches-per-step", nargs="+", default=["1", "16", "16f", "64f"],
                        help="fairlit runs: batches of 64 per Lightning step (data.batches_per_step; same training); "
                             "a trailing f: model.fused_step (FairDual: ops.fairdual_bpr_adam_step, UNI: "
                             "ops.bpr_adam_step; the same training up to rounding)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    python = ensure_venv(args.fd_venv)
    if "fairdiverse" in args.sides or args.projection_only:
        projection = projection_table(python)
        print(projection)
        if args.out:
            write_section(args.out, "bench_projection_cvxpy", projection)
    if args.projection_only:
        return
    write_fairdiverse_data(args.work)
    rows, results = [], {}
    for seed in args.seeds:
        # FairDiverse re-processes the data with its seed (the test negatives are random): each fairlit run
        # trains and tests on the files of the FairDiverse run just before it.
        runs = []
        methods = {"fairdual": ("FairDual", fairdual, ""), "bpr": (None, uni, "BPR (UNI)")}
        for rank_model, make_model, label in [methods[m] for m in args.methods]:
            fd_epoch_s = None   # the speed-up column: FairDiverse's seconds per epoch over each row's, same seed
            if "fairdiverse" in args.sides:
                res = run_fairdiverse(python, args.work, args.epochs, seed, rank_model,
                                      UNIFORM_NEGATIVES if args.uniform_negatives else "")
            split = fairdiverse_split(args.work)     # the files of the FairDiverse run just before
            if "fairdiverse" in args.sides:
                rescored = fairdiverse_rescored(res, split)
                gap = max(abs(rescored[m] - float(res["test"][m])) for m in METRICS)
                print(f"seed {seed}: fairlit's metrics of FairDiverse's scores differ from its own by <= {gap:.2e}")
                res["test"] = rescored
                name = "FairDiverse 1.0.0" + (" (uniform negatives)" if args.uniform_negatives else "")
                fd_epoch_s = res["epoch_s"]
                runs.append((" ".join([name, label]).strip(), res, fd_epoch_s))
            if "fairlit" in args.sides:
                for spec in args.batches_per_step:
                    fused = spec.endswith("f")
                    name = f"fairlit{', ' + label if label else ''}, batches_per_step {spec.rstrip('f')}"
                    runs.append((name + (", fused_step" if fused else ""), fit_on_fairdiverse_split(
                        lambda dm, n, f=fused: make_model(dm, n, f), split, args.epochs, seed, 64,
                        int(spec.rstrip("f"))), fd_epoch_s))
        for name, res, fd_epoch_s in runs:
            speedup = [] if fd_epoch_s is None else [fd_epoch_s / res["epoch_s"]]
            values = [res["epoch_s"]] + speedup + [res["eval_s"]] + [100 * res["test"][m] for m in METRICS]
            results.setdefault(name, []).append(values)
            rows.append([name, seed] + [f"{v:.2f}" for v in values])
            print(rows[-1], flush=True)
    speedup = ["× FairDiverse"] if "fairdiverse" in args.sides else []
    table = seed_tables(results, rows, ["implementation", "seed", "s / epoch"] + speedup + ["eval s"]
                        + [f"{m} (%)" for m in METRICS])
    print(table)
    if args.out:
        write_section(args.out, "bench_fairdual_fairdiverse", table)


if __name__ == "__main__":
    main()
