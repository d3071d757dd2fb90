"""The ``Trainer``: fit, validate, test and predict a ``LightningModule`` on a ``Strategy``."""

from fulmen.trainer.state import RunningStage, TrainerFn, TrainerState, TrainerStatus
from fulmen.trainer.trainer import Trainer

__all__ = ["RunningStage", "Trainer", "TrainerFn", "TrainerState", "TrainerStatus"]
