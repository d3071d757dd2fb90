"""Early stopping: end training when a monitored value stops improving (or goes bad).

It exists so that ``max_epochs`` can be an upper bound rather than a guess: the run stops once
``monitor`` has not improved by ``min_delta`` for ``patience`` checks, reaches
``stopping_threshold``, crosses ``divergence_threshold`` or becomes NaN/inf.

When it checks: after each validation run, or at the end of each training epoch when there is
no validation. With validation once per epoch at the epoch's end (the defaults
``val_check_interval=1.0``, ``check_val_every_n_epoch=1``) the two coincide, and the check runs at
the end of the training epoch, right after that validation: the Trainer runs this callback after
the module's ``on_train_epoch_end``, so values logged there count too. When validation runs
several times per epoch or only every few epochs, the check runs at the end of each validation
run. ``check_on_train_epoch_end`` forces one or the other.

In distributed runs each process evaluates its own copy of the value and the run stops when any
process says so (``trainer.strategy.reduce_boolean_decision``), so no rank is left waiting in a
collective the others skipped.
"""

from __future__ import annotations

import logging
import math
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from fulmen.callbacks.callback import EARLY_STOPPING, Callback
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.stages import TrainerFn

log = logging.getLogger("fulmen")

_MODES = {"min": torch.lt, "max": torch.gt}
_ORDER = {"min": "<", "max": ">"}


class EarlyStoppingReason(Enum):
    """Why ``EarlyStopping`` stopped training (``early_stopping.stopping_reason``)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4
    #: Another process's EarlyStopping decided; every rank stops together.
    OTHER_RANK = 5


class EarlyStopping(Callback):
    """Stop training when ``monitor`` stops improving.

    Args:
        monitor: the key in ``trainer.callback_metrics`` to watch (what ``self.log`` recorded).
        min_delta: the least change that counts as an improvement.
        patience: how many checks without improvement to allow before stopping.
        verbose: log each improvement and the reason for stopping.
        mode: ``"min"`` (lower is better) or ``"max"``.
        strict: raise when ``monitor`` is missing instead of warning (with ``verbose``) and skipping.
        check_finite: stop when the value becomes NaN or infinite.
        stopping_threshold: stop at once when the value is better than this.
        divergence_threshold: stop at once when the value is worse than this.
        check_on_train_epoch_end: check at the end of each training epoch (True) or of each
            validation run (False); by default chosen from the validation schedule (see the
            module docstring).
        log_rank_zero_only: log messages on global rank zero only.
    """

    trainer_role = EARLY_STOPPING

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise invalid_argument("monitor", monitor, "the name of a logged value, e.g. 'val_loss'")
        if mode not in _MODES:
            raise invalid_argument("mode", mode, tuple(_MODES), f"`mode` can be {', '.join(_MODES)}, got {mode}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta):
            raise invalid_argument("min_delta", min_delta, "a finite number")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise invalid_argument("patience", patience, "an int >= 0")
        for name, value in (("stopping_threshold", stopping_threshold), ("divergence_threshold", divergence_threshold)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise invalid_argument(name, value, "None or a number")
        if check_on_train_epoch_end not in (None, True, False):
            raise invalid_argument("check_on_train_epoch_end", check_on_train_epoch_end, (None, True, False))
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._user_check_on_train_epoch_end = check_on_train_epoch_end
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # Stored with the sign that makes "current - min_delta is better than best" the test in both modes.
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.wait_count = 0
        self.stopped_epoch = 0
        #: Why training was stopped (``EarlyStoppingReason.NOT_STOPPED`` while it was not), and the message.
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Any:
        return _MODES[self.mode]

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        self.best_score = torch.as_tensor(state_dict["best_score"])
        self.patience = int(state_dict["patience"])

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._user_check_on_train_epoch_end is not None:
            self._check_on_train_epoch_end = self._user_check_on_train_epoch_end
            return
        # Validation once per epoch at its end, or none at all: checking at the training epoch's
        # end then sees both the validation values and those logged in on_train_epoch_end.
        interval = getattr(trainer, "val_check_interval", 1.0)
        once_per_epoch = (
            isinstance(interval, float) and interval == 1.0 and getattr(trainer, "check_val_every_n_epoch", 1) == 1
        )
        self._check_on_train_epoch_end = once_per_epoch or not getattr(trainer, "enable_validation", True)

    def _should_skip_check(self, trainer: Any) -> bool:
        return trainer.state.fn != TrainerFn.FITTING or bool(trainer.sanity_checking)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    # ------------------------------------------------------------------------------ check
    def _validate_condition_metric(self, logs: dict[str, Any]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        available = ", ".join(f"`{k}`" for k in logs) or "none (nothing was logged)"
        message = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available. "
            f"Log it with `self.log({self.monitor!r}, value)` or set `EarlyStopping(monitor=...)` to one of "
            f"the available metrics: {available}."
        )
        if self.strict:
            raise RuntimeError(message + " Pass `strict=False` to skip the check instead.")
        if self.verbose:
            rank_zero_warn(message)
        return False

    def _run_early_stopping_check(self, trainer: Any) -> None:
        logs = trainer.callback_metrics
        if getattr(trainer, "fast_dev_run", False) or not self._validate_condition_metric(logs):
            return
        current = torch.as_tensor(logs[self.monitor]).detach().squeeze()
        should_stop, reason, why = self._evaluate_stopping_criteria(current)
        # Any rank that wants to stop stops them all, so none waits in a collective the others skip.
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            # Another rank's decision stops this one too: its own reason may be "not stopped".
            self.stopping_reason = why if why is not EarlyStoppingReason.NOT_STOPPED else EarlyStoppingReason.OTHER_RANK
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason)

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None, EarlyStoppingReason]:
        best = self.best_score.to(current.device)
        if self.check_finite and not torch.isfinite(current):
            return (
                True,
                (
                    f"Monitored metric {self.monitor} = {current.item()} is not finite. Previous best value was "
                    f"{best.item():.3f}. Signaling Trainer to stop."
                ),
                EarlyStoppingReason.NON_FINITE_METRIC,
            )
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            return (
                True,
                (
                    f"Stopping threshold reached: {self.monitor} = {current.item()} {_ORDER[self.mode]} "
                    f"{self.stopping_threshold}. Signaling Trainer to stop."
                ),
                EarlyStoppingReason.STOPPING_THRESHOLD,
            )
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            return (
                True,
                (
                    f"Divergence threshold reached: {self.monitor} = {current.item()} "
                    f"{'>' if self.mode == 'min' else '<'} {self.divergence_threshold}. Signaling Trainer to stop."
                ),
                EarlyStoppingReason.DIVERGENCE_THRESHOLD,
            )
        if self.monitor_op(current - self.min_delta, best):
            reason = self._improvement_message(current, best)
            self.best_score = current
            self.wait_count = 0
            return False, reason, EarlyStoppingReason.NOT_STOPPED
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return (
                True,
                (
                    f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                    f"Best score: {best.item():.3f}. Signaling Trainer to stop."
                ),
                EarlyStoppingReason.PATIENCE_EXHAUSTED,
            )
        return False, None, EarlyStoppingReason.NOT_STOPPED

    def _improvement_message(self, current: Tensor, best: Tensor) -> str:
        if torch.isfinite(best):
            return (
                f"Metric {self.monitor} improved by {abs(best.item() - current.item()):.3f} >= "
                f"min_delta = {abs(self.min_delta)}. New best score: {current.item():.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current.item():.3f}"

    def _log_info(self, trainer: Any, message: str) -> None:
        world_size = getattr(trainer, "world_size", 1)
        rank = getattr(trainer, "global_rank", 0)
        if self.log_rank_zero_only and rank != 0:
            return
        if world_size > 1:
            message = f"[rank: {rank}] {message}"
        log.info(message)
