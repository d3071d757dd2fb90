"""Snapshots of every random generator a run draws from, to resume bit for bit.

A snapshot holds python's, numpy's, torch's CPU and (when present) every CUDA generator's
state as plain tensors, tuples, ints and floats: a checkpoint holding it still loads with a
bare ``torch.load(path)`` (``weights_only=True``), no numpy types needed.
"""

from __future__ import annotations

import random
from typing import Any

import torch


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        state["numpy"] = (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(position),
            int(has_gauss),
            float(cached_gaussian),
        )
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

        name, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    # random.setstate wants (version, tuple_of_ints, gauss_next); a checkpoint may hold lists.
    version, internal, gauss = state
    return version, tuple(internal), gauss
