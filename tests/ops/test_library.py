"""Which implementation an op runs: the compiled kernels, or the reference where the library (or its CUDA part) is
missing (fairlit/ops/_library.py)."""
import ast
from pathlib import Path

import pytest
import torch

from fairlit.ops import _library

OPS_DIR = Path(_library.__file__).parent
needs_ext = pytest.mark.skipif(not _library.HAS_EXT, reason="needs the compiled library")


@needs_ext
def test_cuda_inputs_use_the_reference_when_the_library_has_no_cuda_kernels(monkeypatch):
    monkeypatch.setattr(_library, "CUDA_KERNELS", False)
    assert _library.has_op("group_sum") and _library.has_op("group_sum", torch.device("cpu"))
    assert not _library.has_op("group_sum", torch.device("cuda"))
    assert not _library.has_op("no_such_op", torch.device("cpu"))
    monkeypatch.setattr(_library, "CUDA_KERNELS", True)
    assert _library.has_op("group_sum", torch.device("cuda", 0))


@needs_ext
def test_backend_names_the_cuda_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_library, "CUDA_KERNELS", False)
    assert _library.backend("group_sum") == "cpp (CUDA tensors: reference)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _library.backend("group_sum") == "cpp"


@pytest.mark.parametrize("value", ["", "0", "1", "false", "False", "OFF", "no", " 0 ", "true", "yes", "2"])
def test_fairlit_no_ext_reads_the_same_at_install_and_at_run_time(monkeypatch, value):
    # setup.py's _flag decides whether the library is built, _library.ext_disabled whether it is loaded: a value
    # that built it must not also disable it (or the reverse).
    setup_py = Path(_library.__file__).parents[2] / "setup.py"
    if not setup_py.exists():
        pytest.skip("not a source checkout")
    flag = next(node for node in ast.parse(setup_py.read_text()).body
                if isinstance(node, ast.FunctionDef) and node.name == "_flag")
    namespace = {"os": __import__("os")}
    exec(compile(ast.Module([flag], type_ignores=[]), str(setup_py), "exec"), namespace)
    monkeypatch.setenv("FAIRLIT_NO_EXT", value)
    expected = value.strip().lower() in ("1", "true", "yes", "2")
    assert namespace["_flag"]("FAIRLIT_NO_EXT") == expected
    assert _library.ext_disabled() == expected


def test_every_op_call_in_a_wrapper_passes_its_inputs_device():
    # A wrapper that asked has_op(name) without the device would send CUDA inputs to a library without CUDA
    # kernels. Module-level calls (registering fakes and autograd formulas) take no device.
    missing = []
    for path in sorted(OPS_DIR.glob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef) or function.name == "backend":
                continue
            for call in ast.walk(function):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "has_op"
                        and len(call.args) != 2):
                    missing.append(f"{path.name}:{call.lineno} in {function.name}")
    assert not missing, missing
