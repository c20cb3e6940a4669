"""One small-batch training step, piece by piece: fairlit's BPR-MF step (autograd, and fused into one
`ops.bpr_adam_step` call) against the same step in plain PyTorch, and the parts of FairDual's dual step.

    python benchmarks/bench_step.py --out docs/benchmarks.md
    python benchmarks/bench_step.py --device cuda --out docs/benchmarks.md   # FairDual's GPU goal (#6)

ML-100K sizes (943 users, 1,682 items), d = 32, batch 64, one negative per row, fused Adam: on CPU the
setting of the FairNeg/FairDual-vs-FairDiverse benchmarks, where the per-step cost decides the epoch time; on
CUDA the measurement of FairDual's goal "the dual step adds < 10 % to a BPR step" (the last line, for the
per-batch dual step and for the fused one).
Lightning is not involved. Each time is the fastest of five medians of `torch.utils.benchmark` over 0.1 s
windows (`harness.time_ms`): a slow spell of a shared host inflates some windows, not all of them.
"""
import argparse
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import dual_signal_impls  # noqa: E402
from harness import check_arguments, machine, markdown_table, time_ms, write_section  # noqa: E402

from fairlit import ops  # noqa: E402
from fairlit.methods import BPR, FairDual  # noqa: E402
from fairlit.models import MF  # noqa: E402

USERS, ITEMS, DIM, BATCH, Q, K, GROUPS = 943, 1682, 32, 64, 700, 10, 16


def best_ms(fn, repeats: int = 5) -> float:
    return min(time_ms(fn, 0.1) for _ in range(repeats))


def run(device: str) -> str:
    gen = torch.Generator().manual_seed(0)
    model = BPR(backbone=partial(MF, dim=DIM), num_users=USERS, num_items=ITEMS).to(device)
    opt = model.configure_optimizers()
    user_table, item_table = model.backbone.user_embedding.weight, model.backbone.item_embedding.weight
    plain_opt = torch.optim.Adam([user_table, item_table], lr=1e-3, fused=True)
    batch = {"user": torch.randint(USERS, (BATCH,), generator=gen), "pos": torch.randint(ITEMS, (BATCH,), generator=gen),
             "neg": torch.randint(ITEMS, (BATCH, 1), generator=gen)}
    batch = {key: value.to(device) for key, value in batch.items()}

    def plain_loss():
        items = torch.cat([batch["pos"].unsqueeze(1), batch["neg"]], 1)
        scores = (user_table[batch["user"]].unsqueeze(1) * item_table[items]).sum(-1)
        return F.softplus(scores[:, 1:] - scores[:, :1]).mean()

    def step(loss_fn, optimizer):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()

    fairlit_loss = partial(model.training_loss, batch)
    # The fused op on a copy of the tables and Adam's state (as `fused_step=True` calls it).
    fused_state = [t.detach().clone() for t in (user_table, item_table)] + [
        torch.zeros_like(t) for t in (user_table, user_table, item_table, item_table)] + [
        torch.zeros((), device=device), torch.zeros((), device=device)]
    users16, pos16 = batch["user"].repeat(16, 1), batch["pos"].repeat(16, 1)
    neg16 = batch["neg"].repeat(16, 1, 1)

    def fused_step(users, pos, neg):
        ops.bpr_adam_step(*fused_state, users, pos, neg, validate=False)

    sampled = torch.randperm(ITEMS, generator=gen)[:Q].to(device)
    user = torch.randn(BATCH, DIM, generator=gen).to(device)
    scores = user @ item_table.detach()[sampled].T
    group_ids = torch.randint(GROUPS, (ITEMS, 1), generator=gen)
    group_weights = torch.ones(ITEMS, 1)
    # The fused op and FairDual's dual signal before it (GEMM + topk + index_add_), as bench_ops times them.
    signal = dual_signal_impls(user, item_table.detach(), sampled, K, group_ids.to(device), group_weights.to(device),
                               GROUPS)

    # FairDual as the FairDiverse benchmark runs it (preset "fairdiverse", Q = 700, one group per item).
    fairdual = FairDual(partial(MF, dim=DIM), num_users=USERS, num_items=ITEMS, num_item_groups=GROUPS,
                        preset="fairdiverse", bpr_on_sigmoid=True, num_samples=Q, topk=K, eta=0.01, lam=2.0,
                        alpha=0.2, num_train_rows=72_270).to(device)
    first_groups = torch.cat([torch.arange(GROUPS), group_ids[GROUPS:, 0]])       # every group non-empty
    fairdual.set_item_groups(torch.arange(ITEMS + 1), first_groups, torch.ones(ITEMS))
    fairdual.on_train_epoch_start()
    fairdual_opt = fairdual.configure_optimizers()
    fairdual_out = fairdual.forward_losses(batch)
    # FairDual's whole fused step, as `fused_step=True` runs 16 batches (one op call, on copies of the tables).
    fairdual_state = [t.clone() for t in fused_state]
    sampled16 = torch.stack([torch.randperm(ITEMS, generator=gen)[:Q] for _ in range(16)]).to(device)

    def fairdual_fused():
        ops.fairdual_bpr_adam_step(
            *fairdual_state, users16, pos16, neg16, fairdual.mu, fairdual.gmom, fairdual.gamma, sampled16,
            fairdual.groups.group, fairdual.groups.weight, fairdual.rho, fairdual.mhat, topk=K,
            batch_fraction=BATCH / 72_270, lam=2.0, eta=0.01, alpha=0.2, weight_mode="topk_exposure",
            sigmoid_scores=True, validate=False)

    bpr_step = best_ms(lambda: step(fairlit_loss, opt))
    bpr_fused = best_ms(lambda: fused_step(batch["user"], batch["pos"], batch["neg"]))
    bpr_fused16 = best_ms(lambda: fused_step(users16, pos16, neg16)) / 16
    dual_step = best_ms(lambda: fairdual.sample_weights(batch, fairdual_out))
    fairdual_fused16 = best_ms(fairdual_fused) / 16
    rows = [
        ["BPR-MF forward + backward", best_ms(lambda: fairlit_loss().backward()),
         best_ms(lambda: plain_loss().backward())],
        ["fused Adam step (both tables)", best_ms(opt.step), best_ms(plain_opt.step)],
        ["whole step (zero_grad, forward, backward, Adam)", bpr_step, best_ms(lambda: step(plain_loss, plain_opt))],
        ["whole step fused (`ops.bpr_adam_step`: loss, gradient, Adam; one batch per call)", bpr_fused, ""],
        ["whole step fused, 16 batches per call (time per batch)", bpr_fused16, ""],
        [f"FairDual: score Q = {Q} sampled items ([{BATCH}, {DIM}] x [{DIM}, {Q}])",
         best_ms(lambda: user @ item_table.detach()[sampled].T), ""],
        [f"FairDual: top-{K} of the [{BATCH}, {Q}] scores", best_ms(lambda: scores.topk(K, dim=1)), ""],
        [f"FairDual: whole dual signal (scores, top-{K}, group shares of {GROUPS} groups; plain = GEMM + topk + "
         "index_add_)", best_ms(signal["fairlit"]), best_ms(signal["matmul+topk+index_add"])],
        ["FairDual: the whole dual step (`sample_weights`: Q draw, dual signal, momentum, budget, projection)",
         dual_step, ""],
        ["FairDual: whole step (preset fairdiverse: BPR on σ, dual step, Adam)",
         best_ms(lambda: step(partial(fairdual.training_loss, batch), fairdual_opt)), ""],
        ["FairDual: whole step fused, 16 batches per call (`ops.fairdual_bpr_adam_step`; time per batch)",
         fairdual_fused16, ""],
    ]
    table = markdown_table(["part", "fairlit ms", "plain PyTorch ms"],
                           [[name, f"{a:.3f}", f"{b:.3f}" if b != "" else ""] for name, a, b in rows])
    where = f"{torch.get_num_threads()} torch thread(s)" if device == "cpu" else "CUDA-synchronised"
    return (f"## One small-batch training step ({device.upper()}, {machine()})\n\n"
            f"`python benchmarks/bench_step.py --device {device}` — B = {BATCH}, d = {DIM}, {USERS} users × "
            f"{ITEMS} items, {where}; no Lightning.\n\n{table}\n\nFairDual's dual step adds "
            f"{100 * dual_step / bpr_step:.0f} % to fairlit's autograd BPR step and {100 * dual_step / bpr_fused:.0f} % "
            "to the fused one; fused, 16 batches per call, FairDual's step takes "
            f"{100 * (fairdual_fused16 - bpr_fused16) / bpr_fused16:.0f} % longer than the BPR step.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the table into this file (a marked section)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    check_arguments(parser, [args.device], args.out)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    text = run(args.device)
    print(text)
    if args.out:
        write_section(args.out, "bench_step" if args.device == "cpu" else "bench_step cuda", text)


if __name__ == "__main__":
    main()
