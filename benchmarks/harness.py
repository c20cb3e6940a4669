"""Timing and peak-memory helpers shared by the benchmark scripts (not a test: nothing here asserts speed).

Times come from `torch.utils.benchmark.Timer.blocked_autorange` (which synchronises CUDA); peak memory is
`torch.cuda.max_memory_allocated` on CUDA and the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) on CPU, both minus the level before the call.
"""
import gc
import os
import platform
import time

import lightning as L
import torch
from torch.utils import benchmark


class EpochClock(L.Callback):
    """Wall time of each training epoch (evaluation excluded), CUDA synchronised at both ends."""

    def __init__(self):
        self.seconds = []

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, *_):
        self.t = self._now()

    def on_train_epoch_end(self, *_):
        self.seconds.append(self._now() - self.t)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def peak_memory_mb(fn, device: str) -> float:
    """Extra memory (MB) at the peak of one call of `fn`."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                      # resets VmHWM to the current RSS
    except OSError:
        return float("nan")
    base = _rss_kib("VmRSS:")
    fn()
    return (_rss_kib("VmHWM:") - base) / 1024


def time_ms(fn, min_run_time: float = 0.3) -> float:
    """Median milliseconds per call."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads (torch {torch.__version__})")


def markdown_table(header: list[str], rows: list[list]) -> str:
    fmt = [lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt[0](v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: str, marker: str, text: str) -> None:
    """Replace (or append) the block between `<!-- marker -->` and `<!-- /marker -->` in `path`."""
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def check_arguments(parser, devices: list[str], out: str | None) -> None:
    """Refuse (through `parser.error`, before anything runs) a device other than cpu/cuda, cuda without a GPU,
    and an output file whose folder does not exist."""
    for device in devices:
        if device not in ("cpu", "cuda"):
            parser.error(f"device {device!r}: expected 'cpu' or 'cuda'")
        if device == "cuda" and not torch.cuda.is_available():
            parser.error(f"device 'cuda': this torch ({torch.__version__}) sees no CUDA GPU")
    if out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        parser.error(f"--out {out}: its folder does not exist")
