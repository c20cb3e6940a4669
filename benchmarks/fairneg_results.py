"""Aggregate FairNeg table runs (test ``metrics.json`` per method and seed) into markdown tables with the
paper's numbers (Tables 2 and 3, MF, top-20) beside ours.

    python benchmarks/fairneg_results.py --runs logs/fairneg-tables

Layout expected: ``<runs>/<dataset>/<method>/seed<s>/metrics.json`` (the ``fairlit fit`` output of each run).
"""
import argparse
import json
import statistics
from pathlib import Path

COLUMNS = [("recall_disp@20", "Disp"), ("recall_min@20", "Min"), ("recall_avg@20", "Avg"), ("ndcg@20", "N"),
           ("precision@20", "P"), ("recall@20", "R")]
NAMES = {"uns": "UNS", "nncf": "NNCF", "dns": "DNS", "fairstatic": "FairStatic", "reg": "Reg", "dpr": "DPR",
         "fairneg": "FairNeg"}
# Paper Tables 2 / 3, BPR-MF, @20: Disp, Min, Avg, N, P, R.
PAPER = {
    "ml1m-2": {"uns": (0.3179, 0.2346, 0.3386, 0.3487, 0.1611, 0.4622),
               "nncf": (0.1689, 0.2550, 0.3069, 0.3051, 0.1386, 0.4157),
               "dns": (0.3065, 0.2485, 0.3584, 0.3765, 0.1702, 0.4974),
               "fairstatic": (0.0958, 0.3208, 0.3548, 0.3409, 0.1558, 0.4541),
               "reg": (0.1908, 0.2808, 0.3471, 0.3156, 0.1580, 0.4518),
               "dpr": (0.0959, 0.3147, 0.3481, 0.3134, 0.1528, 0.4295),
               "fairneg": (0.0287, 0.3659, 0.3764, 0.3540, 0.1609, 0.4734)},
    "ml1m-4": {"uns": (0.2408, 0.1963, 0.2931, 0.2918, 0.1474, 0.3765),
               "nncf": (0.1603, 0.2336, 0.3008, 0.3006, 0.1485, 0.3884),
               "dns": (0.2350, 0.2256, 0.3146, 0.3203, 0.1573, 0.4148),
               "fairstatic": (0.1154, 0.2615, 0.2931, 0.2722, 0.1394, 0.3624),
               "dpr": (0.0756, 0.2550, 0.2878, 0.2622, 0.1372, 0.3549),
               "fairneg": (0.0318, 0.2998, 0.3134, 0.3024, 0.1508, 0.3925)},
}


def load(runs: Path) -> dict[str, dict[str, list[dict[str, float]]]]:
    """``{dataset: {method: [test metrics of each seed]}}``."""
    out = {}
    for data in sorted(p for p in runs.iterdir() if p.is_dir()):
        for method in sorted(p for p in data.iterdir() if p.is_dir()):
            found = [json.loads(f.read_text()) for f in sorted(method.glob("seed*/metrics.json"))]
            if found:
                out.setdefault(data.name, {})[method.name] = [
                    {k.removeprefix("test/"): v for k, v in r.items()} for r in found]
    return out


def fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def table(dataset: str, results: dict[str, list[dict[str, float]]]) -> str:
    header = ["method", "seeds"] + [f"{label}@20 ours" for _, label in COLUMNS] + ["paper Disp / N"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = [m for m in NAMES if m in results] + [m for m in results if m not in NAMES]
    for method in order:
        runs = results[method]
        paper = PAPER.get(dataset, {}).get(method)
        ref = f"{paper[0]:.4f} / {paper[3]:.4f}" if paper else "–"
        cells = [fmt([r[key] for r in runs]) for key, _ in COLUMNS]
        lines.append("| " + " | ".join([NAMES.get(method, method), str(len(runs))] + cells + [ref]) + " |")
    return "\n".join(lines)


def relative(dataset: str, results: dict[str, list[dict[str, float]]]) -> str:
    """FairNeg vs UNS: relative Disp reduction and NDCG change, ours vs the paper's."""
    if "uns" not in results or "fairneg" not in results:
        return ""
    mean = {m: {k: statistics.fmean(r[k] for r in results[m]) for k, _ in COLUMNS} for m in ("uns", "fairneg")}
    disp = 1 - mean["fairneg"]["recall_disp@20"] / mean["uns"]["recall_disp@20"]
    ndcg = mean["fairneg"]["ndcg@20"] / mean["uns"]["ndcg@20"] - 1
    paper = PAPER[dataset]
    p_disp = 1 - paper["fairneg"][0] / paper["uns"][0]
    p_ndcg = paper["fairneg"][3] / paper["uns"][3] - 1
    return (f"FairNeg vs UNS on {dataset}: Recall-Disp@20 −{100 * disp:.1f} % (paper −{100 * p_disp:.1f} %), "
            f"NDCG@20 {100 * ndcg:+.1f} % (paper {100 * p_ndcg:+.1f} %).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("logs/fairneg-tables"))
    args = parser.parse_args()
    for dataset, results in load(args.runs).items():
        print(f"\n### {dataset}\n\n{table(dataset, results)}\n\n{relative(dataset, results)}")


if __name__ == "__main__":
    main()
