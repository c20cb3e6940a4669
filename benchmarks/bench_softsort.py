"""Soft-sort benchmark: the fused streaming `soft_rank_gain` (soft DCG@k; k = 1 with a one-hot gain is
FADE's differentiable Hit) against the dense detNeuralSort reference that builds [B, N, N], plus
torchsort's `soft_rank` for context when it is importable.

    python benchmarks/bench_softsort.py [--device cpu|cuda] [--out docs/benchmarks.md]

Grid: B in {256, 4096}, N in {5, 101, 1001, 10001}, k in {1, 20} (k <= N). Every row checks that streaming
and dense agree before timing. Dense cases whose autograd graph (~4 B N^2 floats) would exceed the memory
budget are skipped and marked "OOM/skipped". Peak memory: CUDA allocator peak on GPU; on CPU the peak
resident-set growth, sampled every 0.5 ms (with a fixed glibc mmap threshold, so freed tensors leave RSS).
Calls slower than 1 s are timed once (the grid then takes minutes, not hours, on a 2-core CPU).
"""
import argparse
import ctypes
import os
import threading
import time

import torch
from torch.utils import benchmark

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import check_arguments, write_section  # noqa: E402

from fairlit import ops  # noqa: E402
from fairlit.ops import reference as ref  # noqa: E402

try:
    import torchsort
except ImportError:  # optional, context only
    torchsort = None

TAU = 0.5
BYTES_PER_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * BYTES_PER_PAGE


def _fix_mmap_threshold() -> None:
    # glibc raises its mmap threshold after large frees, after which freed tensors stay in RSS; pin it at
    # 64 KiB (M_MMAP_THRESHOLD = -3) so every large tensor is mmap-ed and returned on free.
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)
    except OSError:
        pass


def timed_peak(fn, device) -> tuple[float, int]:
    """(seconds of one call, peak memory it allocated beyond what was live before it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
    return elapsed, max(peak[0], _rss()) - base


def measure(fn, device) -> tuple[float, int]:
    """(median seconds per call, peak bytes). The first call, under the memory sampler, doubles as warm-up;
    calls slower than 1 s keep that single timing."""
    first, peak = timed_peak(fn, device)
    if first > 1.0:
        return first, peak
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return (timer.timeit(3) if first > 0.1 else timer.blocked_autorange(min_run_time=0.3)).median, peak


def copy_bandwidth(device) -> float:
    """Achievable memory bandwidth (bytes/s) of a large device-to-device copy: the roofline reference."""
    x = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    return 2 * x.numel() / measure(lambda: y.copy_(x), device)[0]


def cases():
    for batch in (256, 4096):
        for items in (5, 101, 1001, 10001):
            for k in sorted({1, min(20, items)}):
                yield "soft_rank_gain", batch, items, k
    # The [B, k, N] rows themselves, where the dense reference fits.
    yield "neuralsort", 4096, 101, 20
    yield "neuralsort", 256, 1001, 20


def run_case(op, batch, items, k, device, dense_budget, bandwidth):
    gen = torch.Generator(device=device).manual_seed(0)
    scores = torch.randn(batch, items, device=device, generator=gen)
    gains = torch.rand(batch, items, device=device, generator=gen)
    leaf = scores.clone().requires_grad_()
    if op == "soft_rank_gain":
        stream = lambda s: ops.soft_rank_gain(s, gains, TAU, k, validate=False)  # noqa: E731
        dense = lambda s: ref.soft_rank_gain_dense(s, gains, TAU, k)  # noqa: E731
        reduce = torch.sum
        in_bytes = out_bytes = 2 * scores.numel() * scores.element_size()  # scores + gains; 2 gradients
        # Minimum traffic: read scores + gains (forward), read them again and write both gradients (backward).
        traffic_fwd, traffic_fwd_bwd = in_bytes, 3 * in_bytes
    else:
        stream = lambda s: ops.neuralsort(s, TAU, k, validate=False)  # noqa: E731
        dense = lambda s: ref.neuralsort_dense(s, TAU, k)  # noqa: E731
        reduce = lambda p: p.square().sum()  # noqa: E731  (a plain sum has zero gradient: rows sum to 1)
        in_bytes = scores.numel() * scores.element_size()
        p_bytes = batch * k * items * scores.element_size()
        out_bytes = p_bytes + in_bytes  # P and the score gradient
        # Forward: read scores, write P. Backward: read scores, P and dP, write the score gradient.
        traffic_fwd, traffic_fwd_bwd = in_bytes + p_bytes, 3 * in_bytes + 3 * p_bytes

    def stream_fwd_bwd():
        leaf.grad = None
        reduce(stream(leaf)).backward()

    def dense_fwd_bwd():
        leaf.grad = None
        reduce(dense(leaf)).backward()

    row = {"op": op, "B": batch, "N": items, "k": k}
    dense_ok = 4 * batch * items * items * scores.element_size() <= dense_budget
    if dense_ok:
        # Tolerance of fp32 row sums of N values of size ~N, relative to out.
        torch.testing.assert_close(stream(scores), dense(scores), rtol=1e-3 * max(1, items / 100), atol=1e-4)
    row["fwd"] = measure(lambda: stream(scores), scores.device)[0]
    row["fwd_bwd"], row["mem"] = measure(stream_fwd_bwd, scores.device)
    row["mem_ratio"] = (in_bytes + row["mem"]) / (in_bytes + out_bytes)
    if bandwidth:
        row["bw_fwd"] = traffic_fwd / row["fwd"] / bandwidth
        row["bw_fwd_bwd"] = traffic_fwd_bwd / row["fwd_bwd"] / bandwidth
    if dense_ok:
        row["dense_fwd"] = measure(lambda: dense(scores), scores.device)[0]
        row["dense_fwd_bwd"], row["dense_mem"] = measure(dense_fwd_bwd, scores.device)
    if torchsort is not None and k == 1:
        def soft_rank_fwd_bwd():
            leaf.grad = None
            torchsort.soft_rank(leaf, regularization_strength=TAU).sum().backward()
        row["torchsort_fwd_bwd"] = measure(soft_rank_fwd_bwd, scores.device)[0]
    return row


def ms(row, key):
    return f"{1e3 * row[key]:.3g}" if key in row else "OOM/skipped"


def ratio(row, num, den):
    return f"{row[num] / row[den]:.1f}x" if num in row else "-"


def mb(row, key):
    return f"{row[key] / 2**20:.1f}" if key in row else "OOM/skipped"


def table(rows, device, bandwidth):
    head = ["op", "B", "N", "k", "stream fwd ms", "dense fwd ms", "fwd speedup", "stream fwd+bwd ms",
            "dense fwd+bwd ms", "fwd+bwd speedup", "stream peak MB", "dense peak MB",
            "stream total / (in+out)"]
    if bandwidth:
        head += ["BW roofline fwd", "BW roofline fwd+bwd"]
    if torchsort is not None:
        head += ["torchsort soft_rank fwd+bwd ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["op"], str(r["B"]), str(r["N"]), str(r["k"]), ms(r, "fwd"), ms(r, "dense_fwd"),
                 ratio(r, "dense_fwd", "fwd"), ms(r, "fwd_bwd"), ms(r, "dense_fwd_bwd"),
                 ratio(r, "dense_fwd_bwd", "fwd_bwd"), mb(r, "mem"), mb(r, "dense_mem"),
                 f"{r['mem_ratio']:.2f}"]
        if bandwidth:
            cells += [f"{100 * r['bw_fwd']:.1f}%", f"{100 * r['bw_fwd_bwd']:.1f}%"]
        if torchsort is not None:
            cells += [ms(r, "torchsort_fwd_bwd") if "torchsort_fwd_bwd" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        load = os.getloadavg()[0]
        where = f"CPU, {torch.get_num_threads()} threads, load average {load:.1f} at the end"
        if load > os.cpu_count():
            where += " (other jobs shared the cores: absolute times are inflated, ratios are same-run)"
    notes = [f"Device: {where}; torch {torch.__version__}; fp32, tau = {TAU}; backend "
             f"`{ops.backend('soft_rank_gain')}`; median times.",
             "Dense = `reference.soft_rank_gain_dense` / `reference.neuralsort_dense` (official "
             "detNeuralSort form, [B, N, N] with autograd). Peak MB = forward+backward peak growth "
             "beyond the live inputs; total / (in+out) = (inputs + that peak) / (inputs + outputs + "
             "input gradients): 1.0 is the floor (sub-MB rows are sampling noise; the neuralsort rows "
             "include the benchmark loss P.square())."]
    if bandwidth:
        notes.append(f"Roofline = minimum HBM traffic / time, as a fraction of a measured device copy "
                     f"({bandwidth / 1e9:.0f} GB/s).")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--dense-budget-gb", type=float, default=8.0)
    args = parser.parse_args()
    check_arguments(parser, [args.device], args.out)
    if args.dense_budget_gb <= 0:
        parser.error(f"--dense-budget-gb must be > 0, got {args.dense_budget_gb}")
    device = torch.device(args.device)
    _fix_mmap_threshold()
    budget = args.dense_budget_gb * 2**30
    if device.type == "cuda":
        budget = min(budget * 8, 0.8 * torch.cuda.mem_get_info(device)[0])
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for op, batch, items, k in cases():
        started = time.perf_counter()
        rows.append(run_case(op, batch, items, k, device, budget, bandwidth))
        print(f"{op} B={batch} N={items} k={k}: {time.perf_counter() - started:.1f}s", flush=True)
    text = table(rows, device, bandwidth)
    print(text)
    if args.out:
        write_section(args.out, f"bench_softsort {device}", f"## Soft sort (`{os.path.basename(__file__)}`)\n\n" + text)


if __name__ == "__main__":
    main()
