"""Read-only views of the loops' progress under Lightning's names (``trainer.fit_loop``, ...).

fulmen's loops are functions and keep their counters in ``trainer.state`` and the current run;
callbacks written for Lightning read ``trainer.fit_loop.epoch_progress.current.completed`` or
``trainer.fit_loop.epoch_loop.batch_progress.current.ready``. These views answer from those
counters. A batch is counted ready, started, processed and completed together: fulmen does not
stop between those points.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class ProgressCounts:
    ready: int
    started: int
    processed: int
    completed: int

    @classmethod
    def of(cls, n: int) -> ProgressCounts:
        return cls(n, n, n, n)


@dataclasses.dataclass(frozen=True)
class Progress:
    total: ProgressCounts
    current: ProgressCounts
    is_last_batch: bool = False


def _state(name: str) -> property:
    return property(lambda self: getattr(self._trainer.state, name), doc=f"``trainer.state.{name}``.")


def _flag(name: str) -> property:
    return property(lambda self: getattr(self._trainer, name), doc=f"``trainer.{name}``.")


class TrainingEpochLoopView:
    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def batch_progress(self) -> Progress:
        state = self._trainer.state
        return Progress(
            total=ProgressCounts.of(state.total_batch_idx),
            current=ProgressCounts.of(state.batch_idx),
            is_last_batch=self._trainer.is_last_batch,
        )

    @property
    def val_loop(self) -> EvaluationLoopView:
        return self._trainer.validate_loop

    global_step = _state("global_step")
    total_batch_idx = _state("total_batch_idx")
    batch_idx = _state("batch_idx")
    max_steps = _flag("max_steps")


class FitLoopView:
    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self.epoch_loop = TrainingEpochLoopView(trainer)

    @property
    def epoch_progress(self) -> Progress:
        epochs = self._trainer.state.current_epoch
        return Progress(total=ProgressCounts.of(epochs), current=ProgressCounts.of(epochs))

    current_epoch = _state("current_epoch")
    total_batch_idx = _state("total_batch_idx")
    batch_idx = _state("batch_idx")
    max_epochs = _flag("max_epochs")
    min_epochs = _flag("min_epochs")
    max_steps = _flag("max_steps")
    min_steps = _flag("min_steps")


class EvaluationLoopView:
    """Batches of the evaluation run in progress (or the last one), over all its dataloaders."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def batch_progress(self) -> Progress:
        run = self._trainer.current_run
        done = run.eval_batches if run is not None else 0
        return Progress(total=ProgressCounts.of(done), current=ProgressCounts.of(done))
