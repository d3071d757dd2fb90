"""The loggers and callbacks a Trainer gets when the user does not choose them all.

``logger=True``/``None`` means TensorBoard (CSV without tensorboard); the model summary,
progress bar and checkpointing callbacks are added unless turned off or already given.
Checkpoint callbacks always run last, so they save what the others did in the same hook.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Sequence
from typing import Any

from fulmen.callbacks.callback import Callback
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


def builtin_callback(name: str) -> type | None:
    """A built-in callback class, or None while its module is not written yet."""
    from fulmen import callbacks as callbacks_package

    module_name = callbacks_package._BUILTINS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise
    return getattr(module, name, None)


def checkpoint_types() -> tuple[type, ...]:
    return tuple(t for t in (builtin_callback("Checkpoint"), builtin_callback("ModelCheckpoint")) if t)


def monitor_types() -> tuple[type, ...]:
    return tuple(t for t in (builtin_callback(n) for n in ("Checkpoint", "ModelCheckpoint", "EarlyStopping")) if t)


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

    checkpoint_classes = checkpoint_types()
    has_checkpoint = bool(checkpoint_classes) and any(isinstance(cb, checkpoint_classes) for cb in callbacks)
    if checkpointing_flag is False and has_checkpoint:
        found = next(type(cb).__name__ for cb in callbacks if isinstance(cb, checkpoint_classes))
        raise MisconfigurationException(
            f"Trainer was configured with `enable_checkpointing=False` but found `{found}` in callbacks list."
            " Remove one of them."
        )
    bar_types = tuple(t for t in (builtin_callback("ProgressBar"), builtin_callback("TQDMProgressBar")) if t)
    has_bar = bool(bar_types) and any(isinstance(cb, bar_types) for cb in callbacks)
    if progress_bar_flag is False and has_bar:
        found = next(type(cb).__name__ for cb in callbacks if isinstance(cb, bar_types))
        raise MisconfigurationException(
            f"Trainer was configured with `enable_progress_bar=False` but found `{found}` in callbacks list."
            " Remove one of them."
        )

    if enable_model_summary:
        summary = builtin_callback("ModelSummary")
        if summary is not None and not any(isinstance(cb, summary) for cb in callbacks):
            callbacks.append(summary())
    if enable_progress_bar and not has_bar:
        bar = builtin_callback("TQDMProgressBar")
        if bar is not None:
            callbacks.append(bar())
    if enable_checkpointing and not has_checkpoint:
        checkpoint = builtin_callback("ModelCheckpoint")
        if checkpoint is not None:
            callbacks.append(checkpoint())
    return _checkpoints_last(callbacks, checkpoint_classes)


def _checkpoints_last(callbacks: list[Callback], classes: tuple[type, ...]) -> list[Callback]:
    """Checkpoint callbacks run last, so they save what every other callback did in the same hook."""
    if not classes:
        return callbacks
    others = [cb for cb in callbacks if not isinstance(cb, classes)]
    return others + [cb for cb in callbacks if isinstance(cb, classes)]


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
    return _checkpoints_last(merged, checkpoint_types())
