"""Snapshots of every random generator a run draws from, to resume bit for bit.

A snapshot holds python's, numpy's, torch's CPU and (when present) every CUDA generator's
state, as plain tensors, tuples and ints, so that it loads under ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import torch


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    # random.setstate wants (version, tuple_of_ints, gauss_next); a checkpoint may hold lists.
    version, internal, gauss = state
    return version, tuple(internal), gauss
