"""Callbacks: ``Callback`` (the base class) and the built-in callbacks.

The built-in callbacks live one per module in this package and load on first use (PEP 562), so
``import fulmen.callbacks`` stays cheap and a built-in that is not written yet fails only when
it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from fulmen.callbacks.callback import Callback

#: Public name -> the module in this package that defines it.
_BUILTINS = {
    "Checkpoint": "fulmen.callbacks.checkpoint",
    "ModelCheckpoint": "fulmen.callbacks.model_checkpoint",
    "OnExceptionCheckpoint": "fulmen.callbacks.on_exception_checkpoint",
    "EarlyStopping": "fulmen.callbacks.early_stopping",
    "EarlyStoppingReason": "fulmen.callbacks.early_stopping",
    "LearningRateMonitor": "fulmen.callbacks.lr_monitor",
    "ProgressBar": "fulmen.callbacks.progress",
    "TQDMProgressBar": "fulmen.callbacks.progress",
    "ModelSummary": "fulmen.callbacks.model_summary",
    "Timer": "fulmen.callbacks.timer",
    "GradientAccumulationScheduler": "fulmen.callbacks.gradient_accumulation_scheduler",
    "LambdaCallback": "fulmen.callbacks.lambda_function",
    "BasePredictionWriter": "fulmen.callbacks.prediction_writer",
    "StochasticWeightAveraging": "fulmen.callbacks.stochastic_weight_avg",
    "ThroughputMonitor": "fulmen.callbacks.throughput_monitor",
    "RichProgressBar": "fulmen.callbacks.rich_progress",
    "RichModelSummary": "fulmen.callbacks.rich_model_summary",
    "WeightAveraging": "fulmen.callbacks.weight_averaging",
    "EMAWeightAveraging": "fulmen.callbacks.weight_averaging",
    "BaseFinetuning": "fulmen.callbacks.finetuning",
    "BackboneFinetuning": "fulmen.callbacks.finetuning",
    "ModelPruning": "fulmen.callbacks.pruning",
    "DeviceStatsMonitor": "fulmen.callbacks.device_stats_monitor",
    "LearningRateFinder": "fulmen.callbacks.lr_finder",
    "BatchSizeFinder": "fulmen.callbacks.batch_size_finder",
    "SpikeDetection": "fulmen.callbacks.spike",
}

__all__ = ["Callback", *_BUILTINS]


def __getattr__(name: str) -> Any:
    module = _BUILTINS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
