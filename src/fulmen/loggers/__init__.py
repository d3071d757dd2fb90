"""Experiment loggers: where the Trainer sends metrics and hyperparameters.

``Logger`` is the contract; ``TensorBoardLogger`` and ``CSVLogger`` are the built-in loggers.
Importing this package stays cheap: fsspec, yaml and tensorboard load only when a logger first
touches storage.
"""

from fulmen.loggers.csv_logs import CSVLogger
from fulmen.loggers.logger import Logger
from fulmen.loggers.tensorboard import TensorBoardLogger

__all__ = ["Logger", "TensorBoardLogger", "CSVLogger"]
