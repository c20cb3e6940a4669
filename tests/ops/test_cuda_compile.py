"""Every CUDA source (csrc/cuda/*.cu) compiles with nvcc against the installed torch's headers, for Hopper.

Runs wherever `nvcc` is on PATH, also next to a CPU-only torch (these hosts), where `setup.py` builds no CUDA
and `test_cuda.py` skips: a syntax or type error in a kernel is then caught in CI instead of on a borrowed GPU.
Compile only (no link, no launch); the kernels' values are tested by `test_cuda.py` on a GPU. The flags are the
build's: setup.py's `extra["nvcc"]` and torch's `COMMON_NVCC_FLAGS`, `-std=c++20` as BuildExtension adds it for
torch 2.13. A CPU torch ships the CUDA headers of c10/ATen but not the CMake-generated
`c10/cuda/impl/cuda_cmake_macros.h` (export macros only): C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it then.
"""
import ast
import concurrent.futures
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from fairlit.ops import _library

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")
ARCH = "sm_90"


def setup_nvcc_flags():
    """setup.py's `extra["nvcc"] = [...]`, read from its syntax tree (importing setup.py would run setup())."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "extra['nvcc']":
            return ast.literal_eval(node.value)
    raise AssertionError('setup.py has no extra["nvcc"] = [...] list')


def nvcc_command(source, output):
    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    defines = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    if not any(Path(d, "c10", "cuda", "impl", "cuda_cmake_macros.h").exists() for d in includes):
        defines.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return ([NVCC, "-c", str(source), "-o", str(output), f"-arch={ARCH}", "-std=c++20", "-Xcompiler", "-fPIC"]
            + cpp_extension.COMMON_NVCC_FLAGS + setup_nvcc_flags() + defines + [f"-I{d}" for d in includes])


def compile_and_report(source, out):
    """nvcc's failure or our files' warnings for one source ("" when it compiles cleanly)."""
    result = subprocess.run(nvcc_command(source, out / f"{source.stem}.o"), cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return f"nvcc failed on {source.name}:\n{result.stderr[-6000:]}"
    # Warnings about our own files (nvcc's "x.cu(12): warning #..." or the host compiler's "x.cu:12:3: warning"),
    # e.g. an unused variable; torch's headers may warn on their own.
    return "\n".join(line for line in result.stderr.splitlines()
                     if re.match(r"\S*csrc/\S+[(:]\d+", line) and "warning" in line)


def test_every_op_family_has_a_cuda_source():
    assert {p.stem for p in SOURCES} >= {p.stem for p in (ROOT / "csrc" / "cpu").glob("*.cpp")}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.skipif(_library.ext_disabled(), reason="FAIRLIT_NO_EXT: nothing compiled")
def test_cuda_sources_compile_without_warnings(tmp_path):
    # One test for all sources, compiled concurrently (~40 s each, one per core): under pytest-xdist a
    # parametrised test would have every worker compile them all.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        reports = list(pool.map(compile_and_report, SOURCES, [tmp_path] * len(SOURCES)))
    problems = [report for report in reports if report]
    assert not problems, "\n\n".join(problems)
