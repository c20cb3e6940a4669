"""Benchmark every group_segment / ranking / projection / train_step / sparse op against its reference and the best
native composition.

    python benchmarks/bench_ops.py [--quick] [--out docs/benchmarks.md]

One run times, per case: fairlit's op, `fairlit.ops.reference`, and native PyTorch alternatives
(`index_add_`, `scatter_reduce`, `segment_reduce`, one-hot matmul; gather-bmm; dense matmul + topk; matmul + topk +
`index_add_` for FairDual's dual signal; autograd + torch's fused Adam for a BPR-MF training step; torch's sparse COO `torch.sparse.mm`, which RecBole's LightGCN uses, and
sparse CSR matmul). The projection's native alternative is its reference (sort + cumsum).
Ratios are "time of X / time of fairlit" (> 1: fairlit is faster). Implementations are checked to agree
before they are timed. CUDA rows are added when a GPU is visible.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import check_arguments, machine, markdown_table, peak_memory_mb, time_ms, write_section  # noqa: E402

from fairlit import ops  # noqa: E402
from fairlit.models import LightGCN  # noqa: E402
from fairlit.ops import reference  # noqa: E402

ONE_HOT_LIMIT = 2**31          # bytes: skip one-hot matmul beyond this


def group_sum_impls(values, groups, g):
    def segment():
        order = torch.argsort(groups, stable=True)
        lengths = torch.bincount(groups, minlength=g)
        return torch.segment_reduce(values[order], "sum", lengths=lengths, axis=0)

    impls = {
        "fairlit": lambda: ops.group_sum(values, groups, g, validate=False),
        "reference": lambda: reference.group_sum(values, groups, g),
        "index_add_": lambda: values.new_zeros((g, *values.shape[1:])).index_add_(0, groups, values),
        "scatter_reduce": lambda: values.new_zeros((g, *values.shape[1:])).scatter_reduce_(
            0, groups.view(-1, *([1] * (values.dim() - 1))).expand_as(values), values, "sum"),
        "segment_reduce": segment,
    }
    if values.shape[0] * g * values.element_size() <= ONE_HOT_LIMIT:
        impls["one_hot_matmul"] = lambda: F.one_hot(groups, g).to(values.dtype).T @ values
    return impls


def bpr_impls(pos, neg, groups, g):
    def native(reduce):
        def run():
            per = F.softplus(neg - pos.unsqueeze(1)).mean(1)
            if reduce == "index_add":
                loss = per.new_zeros(g).index_add(0, groups, per)
            else:
                loss = per.new_zeros(g).scatter_reduce(0, groups, per, "sum")
            loss.sum().backward()
        return run

    def fused():
        loss, _ = ops.group_bpr_loss(pos, neg, groups, g, validate=False)
        loss.sum().backward()

    def ref():
        loss, _ = reference.group_bpr_loss(pos, neg, groups, g)
        loss.sum().backward()

    return {"fairlit": fused, "reference": ref, "softplus+index_add": native("index_add"),
            "softplus+scatter_reduce": native("scatter")}


def score_impls(user, item, cand):
    def run(fn):
        def step():
            fn().sum().backward()
        return step

    return {"fairlit": run(lambda: ops.score_candidates(user, item, cand, validate=False)),
            "reference": run(lambda: reference.score_candidates(user, item, cand)),
            "gather+bmm": run(lambda: torch.bmm(item[cand], user.unsqueeze(2)).squeeze(2))}


def topk_impls(user, item, k, cand, indptr, indices, with_reference):
    # Candidate lists (sampled protocols) come without exclusions; full ranking masks ~100 items per row.
    if cand is not None:
        indptr = indices = None
    else:
        rows = torch.repeat_interleave(torch.arange(user.shape[0], device=user.device), indptr.diff())

    def dense():
        if cand is not None:
            return torch.bmm(item[cand], user.unsqueeze(2)).squeeze(2).topk(k, dim=1)
        scores = user @ item.T
        scores[rows, indices] = float("-inf")
        return scores.topk(k, dim=1)

    impls = {"fairlit": lambda: ops.topk_scores(user, item, k, cand, indptr, indices, validate=False),
             "matmul+topk": dense}
    if cand is None:
        impls["matmul only"] = lambda: user @ item.T
    if with_reference:
        impls["reference"] = lambda: reference.topk_scores(user, item, k, cand, indptr, indices)
    return impls


def dual_signal_impls(user, item, sampled, k, group_ids, group_weights, g):
    def composition():  # what FairDual ran before the fused op: GEMM + topk + gather + index_add_
        values, pos = (user @ item[sampled].T).topk(k, dim=1)
        top = sampled[pos]
        contrib = group_weights[top].double() * torch.isfinite(values).double().unsqueeze(-1)
        return values, torch.zeros(g, dtype=torch.float64, device=user.device).index_add_(
            0, group_ids[top].flatten(), contrib.flatten())

    return {"fairlit": lambda: ops.sampled_topk_group_stats(user, item, sampled, k, group_ids, group_weights, g,
                                                            validate=False),
            "reference": lambda: reference.sampled_topk_group_stats(user, item, sampled, k, group_ids, group_weights,
                                                                    g),
            "matmul+topk+index_add": composition}


def dual_mirror_impls(g, device):
    """Each impl applies one dual update to its own copy of one state and returns (mu, gmom, gamma)."""
    gen = torch.Generator().manual_seed(0)
    rho = torch.rand(g, generator=gen, dtype=torch.float64) + 0.1
    share = torch.rand(g, generator=gen, dtype=torch.float64)
    start = [torch.randn(g, generator=gen, dtype=torch.float64), torch.zeros(g, dtype=torch.float64), rho.clone(),
             share / share.sum(), torch.tensor(64 / 72_270, dtype=torch.float64), rho, g * rho / rho.sum()]
    start = [x.to(device) for x in start]
    lam, eta, alpha = 2.0, 0.01, 0.2

    def torch_ops(mu, gmom, gamma, d, fraction, rho, mhat):  # FairDual's update before the op
        gamma.sub_(fraction * d)
        gmom.mul_(1 - alpha).add_(alpha * (gamma - d))
        mu.copy_(ops.dual_projection(mu - eta * (gmom / mhat.pow(2)), mhat, lam, validate=False))

    def impl(fn):
        state = [x.clone() for x in start]
        return lambda: (fn(*state), state[:3])[1]

    return {"fairlit": impl(lambda *s: ops.dual_mirror_step(*s, lam, eta, alpha, validate=False)),
            "reference": impl(lambda *s: reference.dual_mirror_step(*s, lam, eta, alpha, True, True)),
            "torch ops + dual_projection": impl(torch_ops)}


def train_step_impls(num_users, num_items, d, users, pos, neg, device):
    """S BPR-MF steps with Adam: the fused op, its reference, and autograd + torch's fused Adam per batch. Each
    implementation steps its own copy of the tables and state (equal at the start)."""
    gen = torch.Generator().manual_seed(0)
    tables = [torch.randn(r, d, generator=gen).to(device) * 0.1 for r in (num_users, num_items)]

    def state():
        return [t.clone() for t in tables] + [torch.zeros_like(t) for t in (tables[0],) * 2 + (tables[1],) * 2] + [
            torch.zeros((), device=device), torch.zeros((), device=device)]

    fused, ref = state(), state()
    P, Q = (torch.nn.Parameter(t.clone()) for t in tables)
    adam = torch.optim.Adam([P, Q], lr=1e-3, fused=True)

    def autograd_adam():
        for s in range(users.shape[0]):
            adam.zero_grad()
            pu = P[users[s]]
            scores = (pu.unsqueeze(1) * Q[torch.cat([pos[s, :, None], neg[s]], 1)]).sum(-1)
            F.softplus(scores[:, 1:] - scores[:, :1]).mean().backward()
            adam.step()

    return {"fairlit": lambda: ops.bpr_adam_step(*fused, users, pos, neg, validate=False),
            "reference": lambda: reference.bpr_adam_step(*ref, users, pos, neg, None, 0.0, False, 1e-3, 0.9, 0.999,
                                                         1e-8, 0.0),
            "autograd + fused Adam": autograd_adam}, (fused, ref, (P, Q))


def fairdual_step_impls(num_users, num_items, d, groups, users, pos, neg, sampled, k, device):
    """S FairDual steps of BPR-MF (target-group weights, live item table, weighted metric): the op, its reference,
    and the per-batch loop of the public ops from Python (FairDual's per-batch path). Each implementation steps its
    own copy of the tables, Adam state and dual state (equal at the start)."""
    gen = torch.Generator().manual_seed(0)
    tables = [torch.randn(r, d, generator=gen) * 0.1 for r in (num_users, num_items)]
    group_ids = torch.randint(0, groups, (num_items, 1), generator=gen).to(device)
    group_weights = torch.ones(num_items, 1, device=device)
    rho = torch.full((groups,), 1.0 / groups, dtype=torch.float64, device=device)
    hyper = dict(topk=k, batch_fraction=users.shape[1] / 72_270, lam=2.0, eta=0.01, alpha=0.2)

    def state():
        return [t.clone().to(device) for t in tables] + [torch.zeros(r, d, device=device) for r in (
            num_users, num_users, num_items, num_items)] + [torch.zeros((), device=device) for _ in range(2)] + [
            torch.ones(groups, dtype=torch.float64, device=device), torch.zeros(groups, dtype=torch.float64,
                                                                                device=device), rho.clone()]

    fused, ref, loop = state(), state(), state()
    ref_args = (k, False, False, 0.0, hyper["batch_fraction"], 2.0, 0.01, 0.2, True, True, 0.0, False, 1e-3, 0.9,
                0.999, 1e-8, 0.0)

    def per_batch_ops():
        P, Q, *adam = loop[:8]
        mu, gmom, gamma = loop[8:]
        for s in range(users.shape[0]):
            consumed = ops.sampled_topk_group_stats(P[users[s]], Q, sampled[s], k, group_ids, group_weights, groups,
                                                    validate=False)[2]
            w = (1 - (group_weights[pos[s]].double() * mu[group_ids[pos[s]]]).sum(-1)).clamp(min=0.0).float()
            ops.dual_mirror_step(mu, gmom, gamma, consumed / (users.shape[1] * k), hyper["batch_fraction"], rho,
                                 groups * rho, 2.0, 0.01, 0.2, validate=False)
            ops.bpr_adam_step(P, Q, *adam, users[s], pos[s], neg[s], w, validate=False)

    return {"fairlit": lambda: ops.fairdual_bpr_adam_step(*fused[:8], users, pos, neg, *fused[8:], sampled, group_ids,
                                                          group_weights, rho, groups * rho, **hyper, validate=False),
            "reference": lambda: reference.fairdual_bpr_adam_step(*ref[:8], users, pos, neg, *ref[8:], sampled, None,
                                                                  group_ids, group_weights, rho, groups * rho,
                                                                  *ref_args),
            "per-batch ops from Python": per_batch_ops}, (fused, ref, loop)


def symmetric_graph(users, items, edges, device):
    """LightGCN's normalised adjacency Â (as `fairlit.models.LightGCN` builds it) of a random bipartite graph
    with Zipf(1) item popularity, in CSR."""
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, users, (edges,), generator=g)
    popularity = 1.0 / torch.arange(1, items + 1, dtype=torch.float64)
    i = torch.multinomial(popularity, edges, replacement=True, generator=g)
    model = LightGCN(users, items, dim=1, num_layers=1)
    model.set_interactions(u, i)
    return model.adj_indptr.to(device), model.adj_indices.to(device), model.adj_values.to(device)


def csr_matmul_impls(adj, x):
    n = x.shape[0]
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), adj[0].diff())
    coo = torch.sparse_coo_tensor(torch.stack([rows, adj[1]]), adj[2], (n, n)).coalesce()
    csr = torch.sparse_csr_tensor(*adj, (n, n))

    def fwd_bwd(fn):
        def run():
            fn(x).sum().backward()
            x.grad = None
        return run

    return {
        "fairlit": fwd_bwd(lambda x: ops.csr_matmul(*adj, x, transpose=adj, validate=False)),
        "reference": fwd_bwd(lambda x: reference.csr_matmul(*adj, x)),
        "torch.sparse.mm (COO)": fwd_bwd(lambda x: torch.sparse.mm(coo, x)),
        "CSR @ x": fwd_bwd(lambda x: csr @ x),
    }


def measure(impls, device, min_run_time):
    out = {}
    for name, fn in impls.items():
        try:
            fn()                                   # warm-up (and first allocation)
            out[name] = (time_ms(fn, min_run_time), peak_memory_mb(fn, device))
        except (RuntimeError, MemoryError) as err:  # e.g. out of memory: reported, not fatal
            out[name] = (float("nan"), float("nan"))
            print(f"  {name}: failed ({str(err).splitlines()[0][:80]})")
    return out


def row(case, results):
    base = results["fairlit"][0]
    natives = {k: v for k, v in results.items() if k not in ("fairlit", "reference", "matmul only")}
    best_name = min(natives, key=lambda k: natives[k][0]) if natives else None  # None: the reference is native
    ref = results.get("reference", (float("nan"), float("nan")))
    extra = results.get("matmul only")
    return [*case, f"{base:.3g}", f"{ref[0] / base:.2f}" if ref[0] == ref[0] else "skipped",
            f"{natives[best_name][0] / base:.2f} ({best_name})" if natives else "-",
            f"{extra[0] / base:.2f}" if extra else "", f"{results['fairlit'][1]:.0f}",
            f"{ref[1]:.0f}" if ref[1] == ref[1] else "-", f"{natives[best_name][1]:.0f}" if natives else "-"]


def run(device: str, quick: bool) -> str:
    torch.manual_seed(0)
    big = device == "cuda"
    t = 0.1 if quick else 0.3
    sections = []
    header = ["N", "D", "G", "fairlit ms", "reference / fairlit", "best native / fairlit", "", "fairlit MB",
              "reference MB", "native MB"]
    rows = []
    cases = [(100_000, 1), (1_000_000, 1), (100_000, 64)] if not quick else [(100_000, 1)]
    for n, d in cases:
        for g in (2, 18, 1000):
            values = torch.randn((n,) if d == 1 else (n, d), device=device)
            groups = torch.randint(0, g, (n,), device=device)
            impls = group_sum_impls(values, groups, g)
            torch.testing.assert_close(impls["fairlit"](), impls["index_add_"](), rtol=1e-4, atol=1e-3)
            print(f"[{device}] group_sum N={n} D={d} G={g}")
            rows.append(row((n, d, g), measure(impls, device, t)))
    sections.append("#### `group_sum` (forward)\n\n" + markdown_table(header, [r[:6] + r[7:] for r in rows]))

    rows = []
    for n in ((100_000, 1_000_000) if not quick else (100_000,)):
        for g in (2, 18, 1000):
            pos = torch.randn(n, device=device, requires_grad=True)
            neg = torch.randn(n, 4, device=device, requires_grad=True)
            groups = torch.randint(0, g, (n,), device=device)
            print(f"[{device}] group_bpr_loss N={n} M=4 G={g}")
            rows.append(row((n, 4, g), measure(bpr_impls(pos, neg, groups, g), device, t)))
    header_bpr = ["N", "M", "G"] + header[3:6] + header[7:]
    sections.append("#### `group_bpr_loss` (forward + backward)\n\n"
                    + markdown_table(header_bpr, [r[:6] + r[7:] for r in rows]))

    rows = []
    for b in ((1024, 8192) if not quick else (1024,)):
        for c in (100, 200, 700):
            user = torch.randn(b, 64, device=device, requires_grad=True)
            item = torch.randn(3706, 64, device=device, requires_grad=True)
            cand = torch.randint(0, 3706, (b, c), device=device)
            torch.testing.assert_close(ops.score_candidates(user, item, cand),
                                       reference.score_candidates(user, item, cand), rtol=1e-4, atol=1e-4)
            print(f"[{device}] score_candidates B={b} C={c}")
            rows.append(row((b, c, 3706), measure(score_impls(user, item, cand), device, t)))
    header_sc = ["B", "C", "I"] + header[3:6] + header[7:]
    sections.append("#### `score_candidates` (forward + backward, d = 64)\n\n"
                    + markdown_table(header_sc, [r[:6] + r[7:] for r in rows]))

    rows = []
    topk_cases = [(1024, 3706, None), (8192, 3706, None), (1024, 1_000_000, None), (8192, 3706, 700)]
    if big:
        topk_cases.append((8192, 1_000_000, None))
    if quick:
        topk_cases = topk_cases[:1]
    for b, i, c in topk_cases:
        user, item = torch.randn(b, 64, device=device), torch.randn(i, 64, device=device)
        lengths = torch.randint(0, 200, (b,), device=device)
        indptr = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        indices = torch.randint(0, i, (int(indptr[-1]),), device=device)
        cand = None if c is None else torch.randint(0, i, (b, c), device=device)
        impls = topk_impls(user, item, 20, cand, indptr, indices, with_reference=i * b <= 8192 * 3706)
        got, want = impls["fairlit"](), impls["matmul+topk"]()
        torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
        print(f"[{device}] topk_scores B={b} I={i} C={c}")
        rows.append(row((b, i, c or "all"), measure(impls, device, t)))
    header_tk = ["B", "I", "C"] + header[3:6] + ["matmul only / fairlit"] + header[7:]
    sections.append("#### `topk_scores` (k = 20, d = 64; full ranking masks ~100 items per row, candidate lists none)\n\n"
                    + markdown_table(header_tk, rows))

    rows = []
    for b, q, g in ([(64, 700, 16), (1024, 200, 18), (1024, 700, 18), (8192, 200, 1000)] if not quick
                    else [(64, 700, 16)]):
        user, item = torch.randn(b, 32, device=device), torch.randn(3706, 32, device=device)
        sampled = torch.randperm(3706, device=device)[:q]
        group_ids = torch.randint(0, g, (3706, 1), device=device)
        impls = dual_signal_impls(user, item, sampled, 10, group_ids, torch.ones(3706, 1, device=device), g)
        got, want = impls["fairlit"](), impls["matmul+topk+index_add"]()
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[2], want[1])
        print(f"[{device}] sampled_topk_group_stats B={b} Q={q} G={g}")
        rows.append(row((b, q, g), measure(impls, device, t)))
    header_ds = ["B", "Q", "G"] + header[3:6] + header[7:]
    sections.append("#### `sampled_topk_group_stats` (FairDual's dual signal: k = 10, d = 32, I = 3706, one group "
                    "per item)\n\n" + markdown_table(header_ds, [r[:6] + r[7:] for r in rows]))

    rows = []
    for r, g in ([(1, 18), (1, 1000), (1024, 18), (1024, 1000)] if not quick else [(1, 18)]):
        mu = torch.randn(r, g, dtype=torch.float64, device=device)
        mhat = torch.rand(g, dtype=torch.float64, device=device) + 0.5
        lam = torch.full((r,), 2.0, dtype=torch.float64, device=device)
        impls = {"fairlit": lambda: ops.dual_projection(mu, mhat, 2.0, validate=False),
                 "reference": lambda: reference.dual_projection(mu, mhat, lam, True)}
        torch.testing.assert_close(impls["fairlit"](), impls["reference"]())
        print(f"[{device}] dual_projection R={r} G={g}")
        rows.append(row((r, g), measure(impls, device, t)))
    header_pj = ["R", "G"] + header[3:6] + header[7:]
    sections.append("#### `dual_projection` (forward, weighted metric, λ = 2, float64: FairDual's projection; the "
                    "reference is the torch composition FairDual used before, sort + cumsum)\n\n"
                    + markdown_table(header_pj, [r[:5] + r[6:] for r in rows]))

    rows = []
    for g in (18, 1000) if not quick else (18,):
        impls = dual_mirror_impls(g, device)
        states = [impl() for impl in impls.values()]    # one call each from the same state: they agree
        for got in states[1:]:
            for a, b_ in zip(states[0], got):
                torch.testing.assert_close(a, b_)
        print(f"[{device}] dual_mirror_step G={g}")
        rows.append(row((g,), measure(impls, device, t)))
    header_dm = ["G"] + header[3:6] + header[7:]
    sections.append("#### `dual_mirror_step` (FairDual's dual update after a batch: budget, momentum, mirror step, "
                    "projection; float64, weighted metric; the native alternative is the torch ops + "
                    "`dual_projection` call FairDual ran before)\n\n"
                    + markdown_table(header_dm, [r[:4] + r[5:] for r in rows]))

    rows = []
    for m, n, d, b, steps in ([(943, 1682, 32, 64, 1), (943, 1682, 32, 64, 16), (6040, 3706, 64, 1024, 1)]
                              if not quick else [(943, 1682, 32, 64, 1)]):
        users = torch.randint(0, m, (steps, b), device=device)
        pos, neg = torch.randint(0, n, (steps, b), device=device), torch.randint(0, n, (steps, b, 1), device=device)
        impls, (fused, ref, params) = train_step_impls(m, n, d, users, pos, neg, device)
        for name in impls:                                  # one call each from the same state: they agree
            impls[name]()
        for got in (ref[:2], params):
            for a, b_ in zip(fused[:2], got):
                torch.testing.assert_close(a, b_.detach(), rtol=1e-4, atol=1e-5)
        print(f"[{device}] bpr_adam_step users={m} items={n} d={d} B={b} S={steps}")
        rows.append(row((f"{m} x {n}", d, b, steps), measure(impls, device, t)))
    header_ts = ["users x items", "d", "B", "S"] + header[3:6] + header[7:]
    sections.append("#### `bpr_adam_step` (S BPR-MF steps with Adam per call, one negative per row; the native "
                    "alternative is autograd + `torch.optim.Adam(fused=True)` per batch)\n\n"
                    + markdown_table(header_ts, [r[:7] + r[8:] for r in rows]))

    rows = []
    m, n, d, g, q, k = 943, 1682, 32, 18, 700, 10
    for b, steps in [(64, 1), (64, 16)] if not quick else [(64, 1)]:
        users = torch.randint(0, m, (steps, b), device=device)
        pos, neg = torch.randint(0, n, (steps, b), device=device), torch.randint(0, n, (steps, b, 1), device=device)
        sampled = torch.stack([torch.randperm(n)[:q] for _ in range(steps)]).to(device)
        impls, copies = fairdual_step_impls(m, n, d, g, users, pos, neg, sampled, k, device)
        for name in impls:                                  # one call each from the same state: they agree
            impls[name]()
        for got in copies[1:]:
            for a, b_ in zip(copies[0], got):
                torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-5)
        print(f"[{device}] fairdual_bpr_adam_step users={m} items={n} d={d} G={g} Q={q} B={b} S={steps}")
        rows.append(row((b, steps), measure(impls, device, t)))
    header_fd = ["B", "S"] + header[3:6] + header[7:]
    sections.append(f"#### `fairdual_bpr_adam_step` (S FairDual steps of BPR-MF per call: {m} x {n} tables, d = {d}, "
                    f"G = {g}, Q = {q}, K_f = {k}, one negative per row; the native alternative is the per-batch loop "
                    "of `sampled_topk_group_stats`, the weights, `dual_mirror_step` and `bpr_adam_step` from Python)"
                    "\n\n" + markdown_table(header_fd, [r[:5] + r[6:] for r in rows]))

    rows = []
    graphs = [(6_033, 3_123, 700_000), (100_000, 50_000, 5_000_000)] if not quick else [(6_033, 3_123, 700_000)]
    for users, items, edges in graphs:
        adj = symmetric_graph(users, items, edges, device)
        for d in (16, 64):
            x = torch.randn(users + items, d, device=device, requires_grad=True)
            torch.testing.assert_close(ops.csr_matmul(*adj, x, transpose=adj), torch.sparse.mm(
                torch.sparse_csr_tensor(*adj, x.shape[:1] * 2).to_sparse_coo(), x), rtol=1e-4, atol=1e-5)
            print(f"[{device}] csr_matmul nodes={users + items} nnz={adj[1].numel()} d={d}")
            rows.append(row((users + items, adj[1].numel(), d), measure(csr_matmul_impls(adj, x), device, t)))
    header_sp = ["nodes", "nnz", "d"] + header[3:6] + header[7:]
    sections.append("#### `csr_matmul` (forward + backward; LightGCN's symmetric Â of a Zipf bipartite graph)\n\n"
                    + markdown_table(header_sp, [r[:6] + r[7:] for r in rows]))
    return f"### {device.upper()}: {machine()}\n\n" + "\n\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case per op (smoke run)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--devices", nargs="*", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    args = parser.parse_args()
    check_arguments(parser, args.devices, args.out)
    print(ops.backend("group_sum"), ops.backend("topk_scores"))
    for device in args.devices:
        text = run(device, args.quick)
        print(text)
        write_section(args.out, f"bench_ops {device}", "## Ops: group_segment, ranking, projection, train_step and sparse\n\n"
                      "`python benchmarks/bench_ops.py` — ratios are time(X) / time(fairlit): above 1 means "
                      "fairlit is faster. Memory = extra peak during one call.\n\n" + text)


if __name__ == "__main__":
    main()
