"""``RayTrainReportCallback``: each epoch's metrics and a checkpoint, reported to Ray Train."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from torch import Tensor

from fulmen.callbacks import Callback
from fulmen.integrations.ray._require import require_ray_train

if TYPE_CHECKING:
    from fulmen import LightningModule, Trainer

#: The fulmen checkpoint's name inside each Ray checkpoint directory.
CHECKPOINT_NAME = "checkpoint.ckpt"


class RayTrainReportCallback(Callback):
    """At the end of every training epoch, report ``trainer.callback_metrics`` and a checkpoint.

    The metrics are the epoch's logged values as Python numbers, plus ``epoch`` (counted from 0)
    and ``step`` (``trainer.global_step``); Ray keeps the ones rank 0 reports. The checkpoint is
    a directory holding ``checkpoint.ckpt``, a full fulmen checkpoint (weights, optimizers,
    progress, random states): ``Model.load_from_checkpoint(os.path.join(dir, "checkpoint.ckpt"))``
    loads it, and a restarted worker group resumes from it exactly (see ``prepare_trainer``).
    Every rank takes part in writing (random states are gathered) and reports; rank 0 hands the
    directory to Ray, and so does each node's first worker when the strategy writes shards.
    Ray's ``CheckpointConfig(num_to_keep=..., checkpoint_score_attribute=...)`` picks which to keep.
    """

    CHECKPOINT_NAME = CHECKPOINT_NAME

    def __init__(self) -> None:
        super().__init__()
        require_ray_train()  # fails now, with the install hint, rather than at the first epoch's end

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        train = require_ray_train()
        metrics = report_metrics(trainer)
        strategy = trainer.strategy
        # One directory for every rank of a node: sharded strategies write their parts side by side.
        directory = strategy.broadcast(tempfile.mkdtemp(prefix="fulmen-ray-") if trainer.is_global_zero else None)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CHECKPOINT_NAME)
        trainer.save_checkpoint(path)
        hands_over = trainer.is_global_zero or (strategy.local_rank == 0 and os.path.isdir(path))
        checkpoint = train.Checkpoint.from_directory(directory) if hands_over else None
        try:
            train.report(metrics, checkpoint=checkpoint)
            strategy.barrier("RayTrainReportCallback")  # every rank's copy is in Ray's storage
        finally:
            if strategy.local_rank == 0:
                shutil.rmtree(directory, ignore_errors=True)


def report_metrics(trainer: Trainer) -> dict[str, Any]:
    """``trainer.callback_metrics`` as Python numbers, with ``epoch`` and ``step``."""
    metrics: dict[str, Any] = {}
    for name, value in trainer.callback_metrics.items():
        if isinstance(value, Tensor):
            if value.numel() != 1:
                continue  # Ray keeps numbers; a logged vector has no column there
            value = value.item()
        metrics[name] = value
    metrics["epoch"] = trainer.current_epoch
    metrics["step"] = trainer.global_step
    return metrics
