"""The Trainer's whole mutable progress, in one dataclass a checkpoint can list field by field.

``fn``/``status``/``stage`` say what the Trainer is doing; the counters say how far it got.
``state_dict()`` holds only the counters, as plain ints, so that resuming mid-epoch can
continue exactly where the run stopped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fulmen.utilities.stages import RunningStage, TrainerFn, TrainerStatus

#: The counters that ``state_dict`` saves (the schema of a checkpoint's "loops" entry, version 1).
PROGRESS_FIELDS = (
    "current_epoch",
    "global_step",
    "batches_that_stepped",
    "batch_idx",
    "total_batch_idx",
    "last_val_total_batch",
)
STATE_VERSION = 2


@dataclasses.dataclass
class TrainerState:
    fn: TrainerFn | None = None
    status: TrainerStatus = TrainerStatus.INITIALIZING
    stage: RunningStage | None = None

    #: Completed training epochs (``trainer.current_epoch``).
    current_epoch: int = 0
    #: Optimizer steps taken (every optimizer's ``step`` counts, as in Lightning).
    global_step: int = 0
    #: Training batches after which an optimizer stepped: the x-axis of step-level logs.
    batches_that_stepped: int = 0
    #: Training batches completed in the current epoch (the next batch to run, when resuming).
    batch_idx: int = 0
    #: Training batches completed over the whole fit.
    total_batch_idx: int = 0
    #: ``total_batch_idx`` when validation last ran during fit (-1: never), so a resumed run
    #: does not validate the same point twice.
    last_val_total_batch: int = -1
    #: Where inside the epoch the run stands while hooks run (see ``loops.PHASE_*``); a
    #: checkpoint records it so that a resumed run finishes exactly what was pending.
    phase: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status.stopped

    def state_dict(self) -> dict[str, Any]:
        counters = {name: getattr(self, name) for name in PROGRESS_FIELDS}
        return {"version": STATE_VERSION, **counters, "phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in PROGRESS_FIELDS:
            if name in state:
                setattr(self, name, int(state[name]))
        self.phase = state.get("phase")


__all__ = ["PROGRESS_FIELDS", "RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]
