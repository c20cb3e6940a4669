"""One small-batch training step, piece by piece: fairlit's BPR-MF step against the same step in plain PyTorch,
and the scoring of FairDual's Q sampled items.

    python benchmarks/bench_step.py --out docs/benchmarks.md

ML-100K sizes (943 users, 1,682 items), d = 32, batch 64, one negative per row, fused Adam, CPU: the
setting of the FairNeg/FairDual-vs-FairDiverse benchmarks, where the per-step cost decides the epoch time.
Lightning is not involved. Times are medians of `torch.utils.benchmark` (via `harness.time_ms`).
"""
import argparse
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine, markdown_table, time_ms, write_section  # noqa: E402

from fairlit import ops  # noqa: E402
from fairlit.methods import BPR  # noqa: E402
from fairlit.models import MF  # noqa: E402

USERS, ITEMS, DIM, BATCH, Q, K, GROUPS = 943, 1682, 32, 64, 700, 10, 16


def run() -> str:
    gen = torch.Generator().manual_seed(0)
    model = BPR(backbone=partial(MF, dim=DIM), num_users=USERS, num_items=ITEMS)
    opt = model.configure_optimizers()
    user_table, item_table = model.backbone.user_embedding.weight, model.backbone.item_embedding.weight
    plain_opt = torch.optim.Adam([user_table, item_table], lr=1e-3, fused=True)
    batch = {"user": torch.randint(USERS, (BATCH,), generator=gen), "pos": torch.randint(ITEMS, (BATCH,), generator=gen),
             "neg": torch.randint(ITEMS, (BATCH, 1), generator=gen)}

    def plain_loss():
        items = torch.cat([batch["pos"].unsqueeze(1), batch["neg"]], 1)
        scores = (user_table[batch["user"]].unsqueeze(1) * item_table[items]).sum(-1)
        return F.softplus(scores[:, 1:] - scores[:, :1]).mean()

    def step(loss_fn, optimizer):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()

    fairlit_loss = partial(model.training_loss, batch)
    sampled = torch.randperm(ITEMS, generator=gen)[:Q]
    user = torch.randn(BATCH, DIM, generator=gen)
    scores = user @ item_table.detach()[sampled].T
    group_ids, group_weights = torch.randint(GROUPS, (ITEMS, 1), generator=gen), torch.ones(ITEMS, 1)

    def plain_signal():  # FairDual's dual signal before the fused op
        values, pos = (user @ item_table.detach()[sampled].T).topk(K, dim=1)
        top = sampled[pos]
        contrib = group_weights[top].double() * torch.isfinite(values).double().unsqueeze(-1)
        return torch.zeros(GROUPS, dtype=torch.float64).index_add_(0, group_ids[top].flatten(), contrib.flatten())

    rows = [
        ["BPR-MF forward + backward", time_ms(lambda: fairlit_loss().backward()),
         time_ms(lambda: plain_loss().backward())],
        ["fused Adam step (both tables)", time_ms(opt.step), time_ms(plain_opt.step)],
        ["whole step (zero_grad, forward, backward, Adam)", time_ms(lambda: step(fairlit_loss, opt)),
         time_ms(lambda: step(plain_loss, plain_opt))],
        [f"FairDual: score Q = {Q} sampled items ([{BATCH}, {DIM}] x [{DIM}, {Q}])",
         time_ms(lambda: user @ item_table.detach()[sampled].T), ""],
        [f"FairDual: top-{K} of the [{BATCH}, {Q}] scores", time_ms(lambda: scores.topk(K, dim=1)), ""],
        [f"FairDual: whole dual signal (scores, top-{K}, group shares of {GROUPS} groups; plain = GEMM + topk + "
         "index_add_)", time_ms(lambda: ops.sampled_topk_group_stats(user, item_table.detach(), sampled, K, group_ids,
                                                                       group_weights, GROUPS, validate=False)),
         time_ms(plain_signal)],
    ]
    table = markdown_table(["part", "fairlit ms", "plain PyTorch ms"],
                           [[name, f"{a:.3f}", f"{b:.3f}" if b != "" else ""] for name, a, b in rows])
    return (f"## One small-batch training step (CPU, {machine()})\n\n"
            f"`python benchmarks/bench_step.py` — B = {BATCH}, d = {DIM}, {USERS} users × {ITEMS} items, "
            f"{torch.get_num_threads()} torch thread(s); no Lightning.\n\n{table}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the table into this file (a marked section)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    text = run()
    print(text)
    if args.out:
        write_section(args.out, "bench_step", text)


if __name__ == "__main__":
    main()
