"""Every test here needs a CUDA device: skipped where there is none, so CI (CPU only) stays green.
``make gpu-check`` runs them, with a bf16 step benchmark, on the day a GPU is at hand."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
