"""Loads the compiled library `fairlit._C` once and says which backend each op uses.

If the library is missing, disabled (FAIRLIT_NO_EXT=1) or was built for another torch, one warning says
what was expected and what was found, and every public op falls back to `fairlit.ops.reference`. If it was built
without CUDA kernels (a CUDA torch but no CUDA toolkit at install time) and a GPU is visible, one warning says so
and ops on CUDA tensors use the reference, ops on CPU tensors the compiled kernels.
"""
import os
import warnings

import torch

# Ops whose autograd kernel is C++ (csrc/autograd.cpp).
CPP_AUTOGRAD = ("score_candidates", "group_bpr_loss", "dual_projection")


def ext_disabled() -> bool:
    """True when FAIRLIT_NO_EXT asks for the pure-Python ops (the library is then not loaded). Unset, empty, 0,
    false, no and off (any case) leave the library on, as they leave setup.py building it."""
    return os.environ.get("FAIRLIT_NO_EXT", "0").strip().lower() not in ("", "0", "false", "no", "off")


def _load() -> tuple[bool, str]:
    if ext_disabled():
        return False, "FAIRLIT_NO_EXT=1 is set"
    try:
        from fairlit import _build_info
    except ImportError:
        return False, ("fairlit._C is not installed (expected a build made by "
                       "`pip install --no-build-isolation .`; found a pure-Python install)")
    if _build_info.TORCH_VERSION != torch.__version__:
        return False, (f"fairlit._C was built for torch {_build_info.TORCH_VERSION} but torch {torch.__version__} "
                       "is installed; reinstall fairlit with `pip install --no-build-isolation .`")
    try:
        import fairlit._C  # noqa: F401  (loading the library runs the TORCH_LIBRARY registrations)
    except ImportError as err:
        return False, f"fairlit._C failed to load: {err}"
    # A library built from older sources lacks these (csrc/autograd.cpp) and would train without gradients.
    missing = [op for op in CPP_AUTOGRAD if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fairlit::{op}",
                                                                                              "Autograd")]
    if missing:
        return False, (f"fairlit._C is out of date: no autograd kernel for {missing}; rebuild it with "
                       "`pip install --no-build-isolation .` (or `python setup.py build_ext --inplace`)")
    return True, ""


HAS_EXT, UNAVAILABLE_REASON = _load()
if not HAS_EXT:
    warnings.warn(f"fairlit.ops: the compiled library is unavailable ({UNAVAILABLE_REASON}); every op uses its "
                  "pure-PyTorch reference (fairlit.ops.reference).", RuntimeWarning, stacklevel=3)
    CUDA_KERNELS = False
else:
    from fairlit import _build_info

    CUDA_KERNELS = bool(_build_info.WITH_CUDA)
    if not CUDA_KERNELS and torch.cuda.is_available():
        warnings.warn(f"fairlit.ops: fairlit._C has no CUDA kernels (built without a CUDA toolkit for torch "
                      f"{torch.__version__}, CUDA {torch.version.cuda}); ops on CUDA tensors use their pure-PyTorch "
                      "reference. Reinstall with the toolkit found (CUDA_HOME) to build them.", RuntimeWarning,
                      stacklevel=3)


def has_op(name: str, device: torch.device | None = None) -> bool:
    """True when `torch.ops.fairlit.<name>` comes from the compiled library and, for a CUDA `device` (that of the
    op's inputs), the library has CUDA kernels."""
    return (HAS_EXT and hasattr(torch.ops.fairlit, name)
            and (device is None or device.type != "cuda" or CUDA_KERNELS))


def backend(name: str) -> str:
    """The implementation `fairlit.ops.<name>` runs: ``"cuda"`` (CUDA kernel and a visible GPU), ``"cpp"``
    (compiled CPU kernel; with a visible GPU but a library without CUDA kernels, ``"cpp (CUDA tensors:
    reference)"``) or ``"reference"`` (pure PyTorch)."""
    if not has_op(name):
        return "reference"
    if torch.cuda.is_available():
        if not CUDA_KERNELS:
            return "cpp (CUDA tensors: reference)"
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"fairlit::{name}", "CUDA"):
            return "cuda"
    return "cpp"
