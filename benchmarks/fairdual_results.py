"""Aggregate FairDual-comparison runs (test ``metrics.json`` per method and seed) into a markdown table and
an NDCG@20-vs-MMF@20 plot.

    python benchmarks/fairdual_results.py --runs /tmp/fdrun/ml1m --table docs/results_fairdual_table.md \
        --plot docs/fairdual_ml1m_ndcg_vs_mmf.png

Layout expected: ``<runs>/<method>/s<seed>/**/metrics.json`` (the ``fairlit fit`` output of each run).
"""
import argparse
import json
import statistics
from pathlib import Path

COLUMNS = [(f"{m}@{k}", f"{label}@{k}") for k in (5, 10, 20)
           for m, label in (("ndcg", "N"), ("mrr", "M"), ("mmf_exposure", "F"))]
NAMES = {"uni": "UNI", "fairdual": "FairDual", "dro": "DRO", "sdro": "S-DRO", "prop": "Prop",
         "ifairlrs": "IFairLRS", "maxmin": "Maxmin", "focf": "FOCF", "reg": "Reg", "fairneg": "FairNeg",
         "fairdual_eta0.1": "FairDual η=0.1", "fairdual_ones": "FairDual ones-budget"}
ORDER = list(NAMES)


def load(runs: Path) -> dict[str, list[dict[str, float]]]:
    out = {}
    rank = {name: k for k, name in enumerate(ORDER)}
    for method in sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: (rank.get(p.name, 99), p.name)):
        results = [json.loads(f.read_text()) for f in sorted(method.glob("s*/**/metrics.json"))]
        if results:
            out[method.name] = [{k.removeprefix("test/"): v for k, v in r.items()} for r in results]
    return out


def fmt(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def table(results: dict[str, list[dict[str, float]]]) -> str:
    header = ["method", "seeds"] + [label for _, label in COLUMNS] + ["gini@20"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, runs in results.items():
        cells = [fmt([r[key] for r in runs]) for key, _ in COLUMNS]
        gini = statistics.fmean(r["gini@20"] for r in runs)
        lines.append("| " + " | ".join([NAMES.get(method, method), str(len(runs))] + cells + [f"{gini:.3f}"]) + " |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = plt.get_cmap("tab20").colors
    for color, (method, runs) in zip(colors, results.items()):
        x = [100 * r["mmf_exposure@20"] for r in runs]
        y = [100 * r["ndcg@20"] for r in runs]
        style = dict(marker="*", s=160) if method.startswith("fairdual") else dict(marker="o", s=50)
        ax.scatter(statistics.fmean(x), statistics.fmean(y), label=NAMES.get(method, method), color=color, **style)
        ax.errorbar(statistics.fmean(x), statistics.fmean(y), xerr=statistics.pstdev(x), yerr=statistics.pstdev(y),
                    fmt="none", ecolor="gray", alpha=0.5)
    ax.set_xlabel("MMF@20, exposure (%)  — fairer →")
    ax.set_ylabel("NDCG@20 (%)  — more accurate ↑")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--table", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--title", default="ML-1M, BPR-MF: test NDCG@20 vs MMF@20 (mean ± std, 3 seeds)")
    args = parser.parse_args()
    results = load(args.runs)
    text = table(results)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.plot:
        plot(results, args.plot, args.title)


if __name__ == "__main__":
    main()
