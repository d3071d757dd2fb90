"""``SpikeDetection`` for the Trainer: the loss each training step returns, checked for spikes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fulmen.callbacks.callback import Callback
from fulmen.utilities.spike import SpikeDetection as _LoopSpikeDetection


class SpikeDetection(_LoopSpikeDetection, Callback):
    """Stop training with ``TrainingSpikeException`` when the training loss spikes (see
    ``fulmen.utilities.spike.SpikeDetection`` for the arguments); the bad batches go to a JSON file."""

    @torch.no_grad()
    def on_train_batch_end(  # type: ignore[override]
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, torch.Tensor):
            loss = outputs
        elif isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), torch.Tensor):
            loss = outputs["loss"]
        else:
            raise TypeError(
                f"SpikeDetection needs the loss: `training_step` returned {type(outputs).__name__}. Return the loss "
                "tensor or a dict with a 'loss' tensor."
            )
        super().on_train_batch_end(trainer, loss, batch, batch_idx)
