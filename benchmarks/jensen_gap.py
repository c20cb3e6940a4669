"""Jensen-gap simulation of FairDual spec §8 (paper Fig. 1 / Fig. 3a analogue), allocation setting.

    python benchmarks/jensen_gap.py --users 300 --items 300 --seeds 3 --png docs/fairdual_jensen_gap.png

Instance (§8.1): C = σ(PQᵀ/√d + group bias), Zipf group sizes, K = 10, m_g = |I_g|/|I|, λ = 0.5. Global
objective (§8.2) over fractional allocations X (rows sum to K, 0 ≤ X ≤ 1):
``F(X) = mean_u Σ_i C_ui X_ui + λ min_g mean_u Σ_i Â_ig C_ui X_ui / (K m_g)``; F* is an LP (HiGHS).
Per batch size B (§8.3–8.4) the users are shuffled into batches and
* ``batch LP``: each batch solves the same LP on its users only; J_obj = F* − mean_j F_j*, J_sol = F* − F(X^B);
* ``UNI``: top-K of C (no fairness);
* ``FairDual``: top-K of C_u ⊙ s with s = 1 − Âμ, μ carried across batches by the training loop's
  `dual_step` (utility signal Σ Â C X / (B K), budget ρ = m, m̂ = Gρ, s ≥ 0), several passes; J_sol of the last pass.
Outputs a CSV next to the PNG. Sizes default to 300 × 300 (minutes on one CPU core); the paper's 1000 × 1000
works but takes much longer.
"""
import argparse
import csv
import importlib.util
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, hstack, identity, kron

from fairlit.methods._fairdual_dual import DualConfig, dual_step


def instance(users: int, items: int, groups: int, seed: int, dim: int = 16):
    rng = np.random.default_rng(seed)
    sizes = 1 / np.arange(1, groups + 1)
    group = rng.choice(groups, items, p=sizes / sizes.sum())
    group[:groups] = np.arange(groups)                               # no empty group
    bias = np.linspace(1.0, -1.0, groups)[group]                     # head groups score higher
    logits = rng.normal(size=(users, dim)) @ rng.normal(size=(items, dim)).T / np.sqrt(dim) + bias
    share = np.bincount(group, minlength=groups) / items
    return 1 / (1 + np.exp(-logits)), np.eye(groups)[group], share


def objective(c, a, m, x, k, lam):
    """F(X) of §8.2 and the group term vector."""
    util = (c * x).sum(1).mean()
    groups = ((c * x) @ a).mean(0) / (k * m)
    return util + lam * groups.min()


def solve_lp(c, a, m, k, lam):
    """max F(X) over fractional allocations; returns (F*, X)."""
    n, items = c.shape
    groups = a.shape[1]
    obj = np.concatenate([-c.ravel() / n, [-lam]])                  # minimise −F; last variable is t
    # t − mean_u Σ_i Â_ig C_ui X_ui / (K m_g) ≤ 0 for each g
    fair = csr_matrix(-(c[:, :, None] * a[None]).reshape(n * items, groups).T / (n * k * m[:, None]))
    a_ub = hstack([fair, csr_matrix(np.ones((groups, 1)))])
    a_eq = hstack([kron(identity(n), csr_matrix(np.ones((1, items)))), csr_matrix((n, 1))])
    res = linprog(obj, A_ub=a_ub, b_ub=np.zeros(groups), A_eq=a_eq, b_eq=np.full(n, k),
                  bounds=[(0, 1)] * (n * items) + [(None, None)], method="highs")
    return -res.fun, res.x[:-1].reshape(n, items)


def topk_alloc(scores, k):
    x = np.zeros_like(scores)
    np.put_along_axis(x, np.argsort(-scores, 1)[:, :k], 1.0, 1)
    return x


def fairdual_alloc(c, a, share, batches, k, eta, passes, lam_dual=2.0):
    g = a.shape[1]
    rho = torch.tensor(share)
    mhat = g * rho
    mu, gmom, gamma = torch.zeros(g, dtype=torch.float64), torch.zeros(g, dtype=torch.float64), rho.clone()
    cfg = DualConfig(lam=lam_dual, eta=eta, alpha=0.2)
    x = np.zeros_like(c)
    for _ in range(passes):
        gamma.copy_(rho)
        for rows in batches:
            s = np.clip(1 - a @ mu.numpy(), 0, None)                  # [I] weights 1 − Âμ, clamped (§9 #9)
            x[rows] = topk_alloc(c[rows] * s, k)
            d = torch.tensor(((c[rows] * x[rows]) @ a).sum(0) / (len(rows) * k))  # utility per slot
            mu = dual_step(mu, gmom, gamma, d, len(rows) / len(c), rho, mhat, cfg)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--groups", type=int, default=7)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--lam", type=float, default=0.5)
    parser.add_argument("--eta", type=float, default=0.002)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 300])
    parser.add_argument("--png", type=Path, default=Path("docs/fairdual_jensen_gap.png"))
    args = parser.parse_args()
    for name, value, low in (("users", args.users, 1), ("items", args.items, 1), ("groups", args.groups, 1),
                             ("k", args.k, 1), ("passes", args.passes, 1), ("seeds", args.seeds, 1)):
        if value < low:
            parser.error(f"--{name} must be >= {low}, got {value}")
    if args.groups > args.items or args.k > args.items:
        parser.error(f"--groups ({args.groups}) and --k ({args.k}) must be at most --items ({args.items})")
    if min(args.batch_sizes) < 1 or args.lam < 0 or args.eta <= 0:
        parser.error("--batch-sizes must be >= 1, --lam >= 0 and --eta > 0")
    if importlib.util.find_spec("matplotlib") is None:  # checked first: the LPs take minutes before the plot
        parser.error("needs matplotlib for the plot (pip install matplotlib)")
    rows = []
    for seed in range(args.seeds):
        c, a, share = instance(args.users, args.items, args.groups, seed)
        f_star, _ = solve_lp(c, a, share, args.k, args.lam)
        f_uni = objective(c, a, share, topk_alloc(c, args.k), args.k, args.lam)
        for b in args.batch_sizes:
            order = np.random.default_rng(seed + b).permutation(args.users)
            batches = [order[i:i + b] for i in range(0, args.users, b)]
            x_b, f_parts = np.zeros_like(c), []
            for rows_b in batches:
                f_j, x_b[rows_b] = solve_lp(c[rows_b], a, share, args.k, args.lam)
                f_parts.append(f_j * len(rows_b) / args.users)
            x_fd = fairdual_alloc(c, a, share, batches, args.k, args.eta, args.passes)
            for method, value in (("batch LP", objective(c, a, share, x_b, args.k, args.lam)), ("UNI", f_uni),
                                  ("FairDual", objective(c, a, share, x_fd, args.k, args.lam))):
                rows.append(dict(method=method, B=b, G=args.groups, seed=seed, F_star=f_star, F=value,
                                 J_sol=f_star - value, J_obj=f_star - sum(f_parts)))
            print(rows[-3:], flush=True)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    with open(args.png.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args)


def plot(rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, key, style in (("batch LP", "J_obj", "--"), ("batch LP", "J_sol", "-"), ("UNI", "J_sol", ":"),
                               ("FairDual", "J_sol", "-")):
        sel = [r for r in rows if r["method"] == method]
        xs = sorted({r["B"] for r in sel})
        ys = [np.mean([r[key] for r in sel if r["B"] == b]) for b in xs]
        ax.plot(xs, ys, style, marker="o", label=f"{method}: {key}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B (users)")
    ax.set_ylabel("gap to the global optimum F*")
    ax.set_title(f"Jensen gap, {args.users}x{args.items}, G={args.groups}, K={args.k}, λ={args.lam}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
