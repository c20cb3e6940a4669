"""`python -m fairlit.info`: versions and the backend each op uses (cuda, cpp or reference)."""
import argparse

import torch

import fairlit
from fairlit import ops


def report() -> str:
    lines = [f"fairlit {fairlit.__version__}",
             f"torch {torch.__version__} (built with CUDA {torch.version.cuda}; "
             f"GPU available: {torch.cuda.is_available()})",
             f"compiled library fairlit._C: {'loaded' if ops.HAS_EXT else 'unavailable'}"]
    if not ops.HAS_EXT:
        lines.append(f"  reason: {ops._library.UNAVAILABLE_REASON}")
    lines.append("op backends:")
    lines += [f"  {name:<26} {ops.backend(name)}" for name in ops.OPS]
    return "\n".join(lines)


if __name__ == "__main__":
    argparse.ArgumentParser(prog="python -m fairlit.info", description=__doc__).parse_args()
    print(report())
