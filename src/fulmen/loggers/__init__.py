"""Experiment loggers: where the Trainer sends metrics and hyperparameters.

``Logger`` is the contract; ``TensorBoardLogger`` and ``CSVLogger`` are the built-in loggers;
``MLFlowLogger``, ``WandbLogger`` and ``CometLogger`` talk to experiment trackers (optional extras).
Importing this package stays cheap: fsspec, yaml and tensorboard load only when a logger first
touches storage, and the tracker loggers' modules (and mlflow, wandb) only when first named.
"""

from typing import Any

from fulmen.loggers.csv_logs import CSVLogger
from fulmen.loggers.logger import Logger
from fulmen.loggers.tensorboard import TensorBoardLogger

__all__ = ["Logger", "TensorBoardLogger", "CSVLogger", "MLFlowLogger", "WandbLogger", "CometLogger"]

_LAZY = {
    "MLFlowLogger": "fulmen.loggers.mlflow",
    "WandbLogger": "fulmen.loggers.wandb",
    "CometLogger": "fulmen.loggers.comet",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
