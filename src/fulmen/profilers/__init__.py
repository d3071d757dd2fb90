"""Profilers: where the time of a run goes, action by action.

``Trainer(profiler="simple" | "advanced" | "pytorch" | a Profiler)`` times the Trainer's own
phases by name (``run_training_epoch``, ``run_training_batch``, ``[Strategy]...training_step``,
``[Callback]...on_train_batch_end``, ...); ``trainer.profiler.profile("name")`` times your own
code. Without a profiler the Trainer holds a :class:`PassThroughProfiler` and its loops call no
profiling code at all. Each profiler loads on first use (PEP 562), so ``import fulmen`` never
imports ``cProfile`` or ``torch.profiler``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Profiler": "fulmen.profilers.profiler",
    "PassThroughProfiler": "fulmen.profilers.passthrough",
    "SimpleProfiler": "fulmen.profilers.simple",
    "AdvancedProfiler": "fulmen.profilers.advanced",
    "PyTorchProfiler": "fulmen.profilers.pytorch",
}

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]

if TYPE_CHECKING:
    from fulmen.profilers.advanced import AdvancedProfiler
    from fulmen.profilers.passthrough import PassThroughProfiler
    from fulmen.profilers.profiler import Profiler
    from fulmen.profilers.pytorch import PyTorchProfiler
    from fulmen.profilers.simple import SimpleProfiler


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.profilers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
