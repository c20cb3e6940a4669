"""Builds the one compiled library `fairlit._C` (metadata lives in pyproject.toml).

- CPU C++ sources (csrc/*.cpp, csrc/cpu/*.cpp, csrc/composite/*.cpp) are always compiled.
- CUDA sources (csrc/cuda/*.cu) only when the *installed torch* has CUDA (`torch.version.cuda`) and a
  toolkit is found (`CUDA_HOME`), or when FAIRLIT_FORCE_CUDA=1. An `nvcc` on PATH next to a CPU torch
  is not enough: that build could not load.
- FAIRLIT_NO_EXT=1 installs pure Python; `fairlit.ops` then uses the reference implementations.
Install with `pip install --no-build-isolation .` so the library is built against the installed torch.
"""
import glob
import os

from setuptools import setup


def _flag(name):
    # Same reading as fairlit.ops._library.ext_disabled (tests/ops/test_library.py checks they agree).
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no", "off")


def _write_build_info(torch_version, with_cuda):
    # Read at import to detect a library built for another torch (fairlit/ops/__init__.py).
    with open(os.path.join("fairlit", "_build_info.py"), "w") as f:
        f.write(f'TORCH_VERSION = "{torch_version}"\nWITH_CUDA = {with_cuda}\n')


def extensions():
    if _flag("FAIRLIT_NO_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = _flag("FAIRLIT_FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/composite/*.cpp"))
    # No -std flag: BuildExtension adds the standard the installed torch needs (C++20 for torch 2.13, whose
    # headers use C++20 bit-field initialisers; C++17 for older ones).
    cxx = ["-O3", "-fopenmp" if os.name != "nt" else "/openmp"]
    extra = {"cxx": cxx}
    ext_cls = CppExtension
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = CUDAExtension
    _write_build_info(torch.__version__, with_cuda)
    ext = ext_cls("fairlit._C", sources, extra_compile_args=extra, extra_link_args=["-fopenmp"],
                  py_limited_api=False)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
