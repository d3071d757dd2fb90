"""The loggers and callbacks a Trainer gets when the user does not choose them all.

``logger=True``/``None`` means TensorBoard (CSV without tensorboard); the model summary,
progress bar and checkpointing callbacks are added unless turned off or already given.
Checkpoint callbacks always run last, so they save what the others did in the same hook.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from fulmen.callbacks.callback import CHECKPOINT, MODEL_SUMMARY, PROGRESS_BAR, Callback
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info


def configure_loggers(logger: Any, root_dir: str) -> list[Any]:
    if logger is False:
        return []
    if logger is None or logger is True:
        if importlib.util.find_spec("tensorboard") is not None:
            from fulmen.loggers import TensorBoardLogger

            return [TensorBoardLogger(save_dir=root_dir)]
        from fulmen.loggers import CSVLogger

        rank_zero_info("tensorboard is not installed: the default logger is CSVLogger.")
        return [CSVLogger(save_dir=root_dir)]
    from fulmen.loggers import Logger

    loggers = list(logger) if isinstance(logger, Iterable) and not isinstance(logger, Logger) else [logger]
    for item in loggers:
        if not isinstance(item, Logger):
            raise invalid_argument("logger", item, "True, False, a fulmen Logger or a list of Loggers")
    return loggers


def no_op_logger() -> Any:
    """What ``fast_dev_run`` logs to: accepts everything, writes nothing (picklable for spawned ranks)."""
    from fulmen.loggers.logger import DummyLogger

    return DummyLogger()


def with_role(callbacks: Iterable[Callback], role: str) -> list[Callback]:
    """The callbacks that declare ``role`` (``Callback.trainer_role``), in order."""
    return [cb for cb in callbacks if cb.trainer_role == role]


def configure_callbacks(
    callbacks: Any,
    enable_checkpointing: bool,
    enable_progress_bar: bool,
    enable_model_summary: bool,
    checkpointing_flag: bool | None,
    progress_bar_flag: bool | None,
) -> list[Callback]:
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, Callback):
        callbacks = [callbacks]
    elif isinstance(callbacks, Sequence):
        callbacks = list(callbacks)
    else:
        raise invalid_argument("callbacks", callbacks, "a Callback or a list of Callbacks")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise invalid_argument("callbacks", callback, "fulmen.Callback instances")

    checkpoints = with_role(callbacks, CHECKPOINT)
    if checkpointing_flag is False and checkpoints:
        raise MisconfigurationException(
            f"Trainer was configured with `enable_checkpointing=False` but found `{type(checkpoints[0]).__name__}` in "
            "callbacks list. Remove one of them."
        )
    bars = with_role(callbacks, PROGRESS_BAR)
    if progress_bar_flag is False and bars:
        raise MisconfigurationException(
            f"Trainer was configured with `enable_progress_bar=False` but found `{type(bars[0]).__name__}` in "
            "callbacks list. Remove one of them."
        )

    # As in Lightning: the default bar is TQDMProgressBar (rich installed or not), and a
    # RichProgressBar given comes with the rich model summary.
    bar = bars[0] if bars else _default_progress_bar() if enable_progress_bar else None
    if enable_model_summary and not with_role(callbacks, MODEL_SUMMARY):
        callbacks.append(_default_model_summary(bar))
    if bar is not None and not bars:
        callbacks.append(bar)
    if enable_checkpointing and not checkpoints:
        from fulmen.callbacks.model_checkpoint import ModelCheckpoint

        callbacks.append(ModelCheckpoint())
    return _checkpoints_last(callbacks)


def _default_progress_bar() -> Callback:
    from fulmen.callbacks.progress import TQDMProgressBar

    return TQDMProgressBar()


def _default_model_summary(bar: Callback | None) -> Callback:
    rich_bars = sys.modules.get("fulmen.callbacks.rich_progress")  # imported once someone made a RichProgressBar
    if rich_bars is not None and isinstance(bar, rich_bars.RichProgressBar):
        from fulmen.callbacks.rich_model_summary import RichModelSummary

        return RichModelSummary()
    from fulmen.callbacks.model_summary import ModelSummary

    return ModelSummary()


def _checkpoints_last(callbacks: list[Callback]) -> list[Callback]:
    """Checkpoint callbacks run last, so they save what every other callback did in the same hook."""
    return [cb for cb in callbacks if cb.trainer_role != CHECKPOINT] + with_role(callbacks, CHECKPOINT)


def merge_model_callbacks(callbacks: list[Callback], model_callbacks: Any) -> list[Callback]:
    """``configure_callbacks``' callbacks replace Trainer callbacks of the same type."""
    if not model_callbacks:
        return callbacks
    if isinstance(model_callbacks, Callback):
        model_callbacks = [model_callbacks]
    model_callbacks = list(model_callbacks)
    model_types = {type(cb) for cb in model_callbacks}
    replaced = {
        type(cb) for cb in callbacks if type(cb) is not Callback and any(issubclass(t, type(cb)) for t in model_types)
    }
    if replaced:
        rank_zero_info(
            f"`configure_callbacks` replaces these Trainer callbacks: {sorted(t.__name__ for t in replaced)}."
        )
    merged = [cb for cb in callbacks if type(cb) not in replaced] + model_callbacks
    return _checkpoints_last(merged)
