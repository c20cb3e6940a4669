"""Shared pieces of the op tests: dtypes, tolerances, hypothesis strategies."""
import torch
from hypothesis import strategies as st

import fairlit.ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
HAS_OP = fairlit.ops.HAS_EXT


def tol(dtype, scale=1.0):
    t = TOL[dtype]
    return dict(rtol=t["rtol"] * scale, atol=t["atol"] * scale)


def make_values(shape, dtype, *, noncontig, magnitude, seed, device="cpu"):
    """Random values; `noncontig` returns a strided view with the same shape."""
    g = torch.Generator().manual_seed(seed)
    if noncontig:
        full = torch.randn((*shape, 2), generator=g, dtype=torch.float64) * magnitude
        return full[..., 1].to(dtype).to(device)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * magnitude).to(dtype).to(device)


dtypes = st.sampled_from(DTYPES)
magnitudes = st.sampled_from([1.0, 1e3])
