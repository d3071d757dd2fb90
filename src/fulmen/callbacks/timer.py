"""Timer: measure how long each stage runs, and stop training when a time budget is spent.

It exists for jobs with a wall-clock limit (a cluster allocation, a paid instance): training
stops cleanly, with a chance to checkpoint, before the scheduler kills it. Its state holds the
time already spent, so a run resumed from a checkpoint keeps counting from there instead of
getting a fresh budget.

Training time runs from ``on_train_start`` to ``on_train_end`` and so includes the validation
done during fit; validation, test and predict are timed on their own as well.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.stages import RunningStage

log = logging.getLogger("fulmen")

#: The stages a Timer measures: the values of ``RunningStage``.
STAGES = tuple(stage.value for stage in RunningStage)
_INTERVALS = ("step", "epoch")


def _stage(stage: Any) -> str:
    value = getattr(stage, "value", stage)
    if value not in STAGES:
        raise invalid_argument("stage", stage, STAGES)
    return value


def parse_duration(duration: str | timedelta | dict[str, int] | None) -> timedelta | None:
    """``"DD:HH:MM:SS"``, a ``timedelta`` or ``timedelta`` keywords (``{"hours": 2}``) as a ``timedelta``."""
    accepted = "None, a 'DD:HH:MM:SS' string, a datetime.timedelta or a dict like {'hours': 2}"
    if duration is None or isinstance(duration, timedelta):
        return duration
    if isinstance(duration, str):
        match = re.fullmatch(r"(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})", duration.strip())
        if match is None:
            said = f"`Timer(duration={duration!r})` is not a valid duration. Expected a string in the format "
            said += "DD:HH:MM:SS."
            raise invalid_argument("duration", duration, accepted, said)
        days, hours, minutes, seconds = (int(part) for part in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if isinstance(duration, dict):
        try:
            return timedelta(**duration)
        except TypeError:
            raise invalid_argument("duration", duration, accepted) from None
    raise invalid_argument("duration", duration, accepted)


class Timer(Callback):
    """Time every stage; with ``duration``, stop training once that much training time has passed.

    Args:
        duration: the training time budget: ``"DD:HH:MM:SS"``, a ``timedelta``, or a dict of
            ``timedelta`` keywords. ``None`` only measures.
        interval: check the budget after every training ``"step"`` (batch) or every ``"epoch"``.
        verbose: log a line when the budget is reached.
    """

    def __init__(
        self,
        duration: str | timedelta | dict[str, int] | None = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        duration = parse_duration(duration)
        interval = getattr(interval, "value", interval)
        if interval not in _INTERVALS:
            said = f"Unsupported parameter value `Timer(interval={interval})`. Possible choices are: step, epoch."
            raise invalid_argument("interval", interval, _INTERVALS, said)
        self._duration = duration.total_seconds() if duration is not None else None
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[str, float | None] = dict.fromkeys(STAGES)
        self._end_time: dict[str, float | None] = dict.fromkeys(STAGES)
        #: Training time spent before this process (restored from a checkpoint).
        self._offset = 0.0

    @property
    def duration(self) -> float | None:
        """The budget in seconds, or ``None``."""
        return self._duration

    # ------------------------------------------------------------------------------ queries
    def start_time(self, stage: Any = "train") -> float | None:
        """When ``stage`` last started (``time.monotonic()`` clock), or ``None``."""
        return self._start_time[_stage(stage)]

    def end_time(self, stage: Any = "train") -> float | None:
        """When ``stage`` last ended (``time.monotonic()`` clock), or ``None`` while it runs."""
        return self._end_time[_stage(stage)]

    def time_elapsed(self, stage: Any = "train") -> float:
        """Seconds spent in ``stage``; for training, including the time before a resume."""
        stage = _stage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return (end if end is not None else time.monotonic()) - start + offset

    def time_remaining(self, stage: Any = "train") -> float | None:
        """Seconds of the budget left (negative once over), or ``None`` without a ``duration``."""
        if self._duration is None:
            return None
        return self._duration - self.time_elapsed(stage)

    # -------------------------------------------------------------------------------- hooks
    def _start(self, stage: str) -> None:
        self._start_time[stage] = time.monotonic()
        self._end_time[stage] = None

    def _end(self, stage: str) -> None:
        self._end_time[stage] = time.monotonic()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start("train")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end("train")

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._start("sanity_check")

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._end("sanity_check")

    # "validate" is the latest validation run, the sanity check's included (as Lightning's Timer
    # measures it); "sanity_check" is the sanity check alone.
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._start("validate")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end("validate")

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start("test")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end("test")

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._start("predict")

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._end("predict")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Checked before any step: a run resumed with its budget already spent does no work.
        if self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._interval == "step" and self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check_time_remaining(trainer)

    def _check_time_remaining(self, trainer: Any) -> None:
        assert self._duration is not None
        # Rank zero's clock decides for all, so every rank stops after the same batch.
        should_stop = trainer.strategy.broadcast(self.time_elapsed("train") >= self._duration)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            elapsed = timedelta(seconds=int(self.time_elapsed("train")))
            log.info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))
