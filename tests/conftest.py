import os

import pytest
import torch
from hypothesis import settings

# Deterministic hypothesis runs: CI and local runs draw the same examples.
settings.register_profile("default", deadline=None, derandomize=True, max_examples=60, print_blob=True)
settings.register_profile("fast", deadline=None, derandomize=True, max_examples=15)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def devices():
    """cpu, plus cuda when a GPU is visible (CUDA cases skip otherwise)."""
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])]
