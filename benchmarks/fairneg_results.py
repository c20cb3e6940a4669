"""Aggregate FairNeg table runs (test ``metrics.json`` per method and seed) into markdown tables with the
paper's numbers (Tables 2, 3 at top-20 and 5, 6 at top-30; MF and LightGCN) beside ours.

    python benchmarks/fairneg_results.py --runs logs/fairneg-tables

Layout expected: ``<runs>/<dataset>/<method>/seed<s>/metrics.json`` (the ``fairlit fit`` output of each run).
"""
import argparse
import json
import statistics
from pathlib import Path

METRICS = [("recall_disp", "Disp"), ("recall_min", "Min"), ("recall_avg", "Avg"), ("ndcg", "N"), ("precision", "P"),
           ("recall", "R")]
BASE = {"uns": "UNS", "nncf": "NNCF", "dns": "DNS", "fairstatic": "FairStatic", "reg": "Reg", "dpr": "DPR",
        "fairneg": "FairNeg"}
# Method directories: the MF rows, the same with an ``lgn-`` prefix for LightGCN, and the ablations of
# spec §2.8 (FairNeg without the dynamic update / the importance part / momentum).
NAMES = (BASE | {f"lgn-{k}": f"LightGCN {v}" for k, v in BASE.items()}
         | {"fairneg-no-dynamic": "FairNeg w/o dynamic", "fairneg-no-imp": "FairNeg w/o importance",
            "fairneg-no-momentum": "FairNeg w/o momentum"})
# Paper Tables 2 / 3 (@20) and 5 / 6 (@30), ML1M columns: Disp, Min, Avg, N, P, R (MF; "lgn-": LightGCN).
PAPER = {
    20: {
        "ml1m-2": {
            "uns": (0.3179, 0.2346, 0.3386, 0.3487, 0.1611, 0.4622),
            "nncf": (0.1689, 0.255, 0.3069, 0.3051, 0.1386, 0.4157),
            "dns": (0.3065, 0.2485, 0.3584, 0.3765, 0.1702, 0.4974),
            "fairstatic": (0.0958, 0.3208, 0.3548, 0.3409, 0.1558, 0.4541),
            "reg": (0.1908, 0.2808, 0.3471, 0.3156, 0.158, 0.4518),
            "dpr": (0.0959, 0.3147, 0.3481, 0.3134, 0.1528, 0.4295),
            "fairneg": (0.0287, 0.3659, 0.3764, 0.354, 0.1609, 0.4734),
            "lgn-uns": (0.2085, 0.2928, 0.3699, 0.3745, 0.1695, 0.5029),
            "lgn-nncf": (0.16, 0.2979, 0.3547, 0.3576, 0.1596, 0.4785),
            "lgn-dns": (0.2567, 0.2728, 0.367, 0.3794, 0.1712, 0.5054),
            "lgn-fairstatic": (0.076, 0.3505, 0.3853, 0.3495, 0.157, 0.4753),
            "lgn-reg": (0.1446, 0.3203, 0.3744, 0.3677, 0.1675, 0.4998),
            "lgn-dpr": (0.0768, 0.3514, 0.3806, 0.3614, 0.1659, 0.4938),
            "lgn-fairneg": (0.0682, 0.3587, 0.3865, 0.3721, 0.1675, 0.502),
        },
        "ml1m-4": {
            "uns": (0.2408, 0.1963, 0.2931, 0.2918, 0.1474, 0.3765),
            "nncf": (0.1603, 0.2336, 0.3008, 0.3006, 0.1485, 0.3884),
            "dns": (0.235, 0.2256, 0.3146, 0.3203, 0.1573, 0.4148),
            "fairstatic": (0.1154, 0.2615, 0.2931, 0.2722, 0.1394, 0.3624),
            "dpr": (0.0756, 0.255, 0.2878, 0.2622, 0.1372, 0.3549),
            "fairneg": (0.0318, 0.2998, 0.3134, 0.3024, 0.1508, 0.3925),
            "lgn-uns": (0.1794, 0.2455, 0.3236, 0.3294, 0.1603, 0.4279),
            "lgn-nncf": (0.1091, 0.2571, 0.306, 0.3095, 0.1498, 0.4033),
            "lgn-dns": (0.1806, 0.2463, 0.3259, 0.3352, 0.1615, 0.4374),
            "lgn-fairstatic": (0.1022, 0.2819, 0.3208, 0.3156, 0.1522, 0.4131),
            "lgn-dpr": (0.0495, 0.2994, 0.3207, 0.3128, 0.1552, 0.4084),
            "lgn-fairneg": (0.0394, 0.3117, 0.3267, 0.3232, 0.1565, 0.4222),
        },
    },
    30: {
        "ml1m-2": {
            "uns": (0.2837, 0.3142, 0.4344, 0.3817, 0.1364, 0.5589),
            "nncf": (0.1592, 0.3344, 0.3978, 0.3393, 0.1193, 0.5137),
            "dns": (0.2822, 0.3261, 0.4543, 0.4097, 0.1426, 0.594),
            "fairstatic": (0.0705, 0.4242, 0.4564, 0.374, 0.1323, 0.5503),
            "reg": (0.1928, 0.3567, 0.4419, 0.3495, 0.1342, 0.5515),
            "dpr": (0.0913, 0.4088, 0.4499, 0.3479, 0.1315, 0.5286),
            "fairneg": (0.0221, 0.468, 0.4786, 0.388, 0.136, 0.572),
            "lgn-uns": (0.1896, 0.3831, 0.4727, 0.4097, 0.1434, 0.6043),
            "lgn-nncf": (0.1613, 0.378, 0.4507, 0.3914, 0.1353, 0.5753),
            "lgn-dns": (0.2283, 0.362, 0.4691, 0.4138, 0.1444, 0.6047),
            "lgn-fairstatic": (0.0462, 0.4541, 0.4866, 0.3845, 0.1334, 0.577),
            "lgn-reg": (0.1472, 0.4069, 0.4771, 0.403, 0.1424, 0.5994),
            "lgn-dpr": (0.0945, 0.4356, 0.4811, 0.3961, 0.1407, 0.5929),
            "lgn-fairneg": (0.0415, 0.4704, 0.4908, 0.4061, 0.142, 0.5981),
        },
        "ml1m-4": {
            "uns": (0.2296, 0.2632, 0.3783, 0.3215, 0.127, 0.4666),
            "nncf": (0.1479, 0.3082, 0.3898, 0.3321, 0.128, 0.4845),
            "dns": (0.2164, 0.2997, 0.4058, 0.3516, 0.1348, 0.5087),
            "fairstatic": (0.092, 0.343, 0.38, 0.3012, 0.1206, 0.4507),
            "dpr": (0.0539, 0.3576, 0.3767, 0.2907, 0.1212, 0.4505),
            "fairneg": (0.0253, 0.3858, 0.4028, 0.3333, 0.1295, 0.4864),
            "lgn-uns": (0.1664, 0.3253, 0.4157, 0.3609, 0.1371, 0.5228),
            "lgn-nncf": (0.1033, 0.3366, 0.3958, 0.3414, 0.1291, 0.4994),
            "lgn-dns": (0.1653, 0.3261, 0.4183, 0.3667, 0.1379, 0.5274),
            "lgn-fairstatic": (0.0761, 0.372, 0.4123, 0.3472, 0.1309, 0.5076),
            "lgn-dpr": (0.0638, 0.3709, 0.4121, 0.3448, 0.1334, 0.5061),
            "lgn-fairneg": (0.028, 0.402, 0.4184, 0.3545, 0.1338, 0.5169),
        },
    },
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


def table(dataset: str, results: dict[str, list[dict[str, float]]], k: int) -> str:
    header = ["method", "seeds"] + [f"{label}@{k} ours" for _, label in METRICS] + ["paper Disp / N"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = [m for m in NAMES if m in results] + [m for m in results if m not in NAMES]
    for method in order:
        runs = results[method]
        paper = PAPER[k].get(dataset, {}).get(method)
        ref = f"{paper[0]:.4f} / {paper[3]:.4f}" if paper else "–"
        cells = [fmt([r[f"{key}@{k}"] for r in runs]) for key, _ in METRICS]
        lines.append("| " + " | ".join([NAMES.get(method, method), str(len(runs))] + cells + [ref]) + " |")
    return "\n".join(lines)


def relative(dataset: str, results: dict[str, list[dict[str, float]]], k: int, prefix: str = "") -> str:
    """FairNeg vs UNS (same backbone): relative Disp reduction and NDCG change, ours vs the paper's."""
    uns, fairneg = prefix + "uns", prefix + "fairneg"
    if uns not in results or fairneg not in results:
        return ""
    mean = {m: {key: statistics.fmean(r[f"{key}@{k}"] for r in results[m]) for key, _ in METRICS}
            for m in (uns, fairneg)}
    disp = mean[fairneg]["recall_disp"] / mean[uns]["recall_disp"] - 1
    ndcg = mean[fairneg]["ndcg"] / mean[uns]["ndcg"] - 1
    paper = PAPER[k][dataset]
    p_disp = paper[fairneg][0] / paper[uns][0] - 1
    p_ndcg = paper[fairneg][3] / paper[uns][3] - 1
    backbone = "LightGCN" if prefix else "MF"
    return (f"{backbone} FairNeg vs UNS on {dataset}: Recall-Disp@{k} {100 * disp:+.1f} % (paper {100 * p_disp:+.1f} %), "
            f"NDCG@{k} {100 * ndcg:+.1f} % (paper {100 * p_ndcg:+.1f} %).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("logs/fairneg-tables"))
    args = parser.parse_args()
    for k in (20, 30):
        for dataset, results in load(args.runs).items():
            notes = [relative(dataset, results, k, prefix) for prefix in ("", "lgn-")]
            print(f"\n#### {dataset} @{k}\n\n{table(dataset, results, k)}\n\n" + "\n".join(n for n in notes if n))


if __name__ == "__main__":
    main()
