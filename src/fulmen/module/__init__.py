"""The ``LightningModule``: a model that also says how it is trained, evaluated and used."""

from fulmen.module.module import LightningModule
from fulmen.module.optimizer import LightningOptimizer, LRSchedulerConfig

__all__ = ["LRSchedulerConfig", "LightningModule", "LightningOptimizer"]
