"""What a tuner puts back after its trials: weights, optimizer and scheduler states, random states.

The copies live in host memory (the weights as CPU tensors), so a batch-size search on a GPU
has the whole device to itself, and nothing is written to disk.
"""

from __future__ import annotations

import copy
import gc
import random
from typing import Any

import torch
from torch import Tensor

from fulmen.module.optimizer import MockOptimizer


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return copy.deepcopy(value)


class Snapshot:
    """The state of a module, the trainer's optimizers and schedulers, and the random generators."""

    def __init__(self, trainer: Any, module: torch.nn.Module) -> None:
        self.module = module
        self.weights = _to_cpu(module.state_dict())
        self.optimizers = [
            (optimizer, _to_cpu(optimizer.state_dict()))
            for optimizer in trainer.optimizers
            if not isinstance(optimizer, MockOptimizer)
        ]
        self.schedulers = [
            (config.scheduler, copy.deepcopy(config.scheduler.state_dict())) for config in trainer.lr_scheduler_configs
        ]
        self.rng = capture_rng()

    def restore(self) -> None:
        self.module.load_state_dict(self.weights)
        self.module.zero_grad(set_to_none=True)
        for optimizer, state in self.optimizers:
            optimizer.load_state_dict(state)
        for scheduler, state in self.schedulers:
            scheduler.load_state_dict(state)
        restore_rng(self.rng)


def capture_rng() -> dict[str, Any]:
    """Python's, NumPy's (when imported) and torch's generators: the trials must not change what training draws."""
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    import sys

    if "numpy" in sys.modules:
        states["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "numpy" in states:
        import numpy

        numpy.random.set_state(states["numpy"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def free_memory() -> None:
    """After an out-of-memory error: collect what the failed trial left, and return cached CUDA blocks."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
