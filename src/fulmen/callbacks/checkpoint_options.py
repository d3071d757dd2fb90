"""``ModelCheckpoint``'s arguments, checked at construction: a bad value fails at once, naming it.

Lightning's wording is kept where its tests read it (``save_top_k``, ``mode``, the schedule
arguments); everything else says what is accepted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument

_MODES = ("min", "max")
_SAVE_LAST = (None, True, False, "link")


def check_arguments(
    *,
    monitor: Any,
    filename: Any,
    save_last: Any,
    save_top_k: Any,
    mode: Any,
    save_on_exception: Any,
    async_save: Any,
    save_on_train_epoch_end: Any,
    every_n_train_steps: Any,
    every_n_epochs: Any,
    train_time_interval: Any,
) -> tuple[int | None, int | None]:
    """Raise for the first invalid argument; returns ``(every_n_train_steps, every_n_epochs)`` checked."""
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise invalid_argument("monitor", monitor, "None or the name of a logged metric")
    if filename is not None and not isinstance(filename, str):
        raise invalid_argument("filename", filename, "None or a template string such as '{epoch}-{val_loss:.2f}'")
    if save_last not in _SAVE_LAST or (save_last is not None and not isinstance(save_last, (bool, str))):
        raise invalid_argument("save_last", save_last, _SAVE_LAST)
    if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
        accepted = "-1 (keep every checkpoint), 0 (keep none) or a positive int"
        raise invalid_argument(
            "save_top_k", save_top_k, accepted, f"Invalid value for save_top_k={save_top_k}. Must be >= -1."
        )
    if mode not in _MODES:
        raise invalid_argument("mode", mode, _MODES, f"`mode` can be {', '.join(_MODES)} but got {mode}")
    if not isinstance(save_on_exception, bool):
        raise invalid_argument("save_on_exception", save_on_exception, (True, False))
    if not isinstance(async_save, bool):
        raise invalid_argument("async_save", async_save, (True, False))
    if save_on_train_epoch_end not in (None, True, False):
        raise invalid_argument("save_on_train_epoch_end", save_on_train_epoch_end, (None, True, False))
    every_n_train_steps = _check_every_n("every_n_train_steps", every_n_train_steps)
    every_n_epochs = _check_every_n("every_n_epochs", every_n_epochs)
    if train_time_interval is not None and (
        not isinstance(train_time_interval, timedelta) or train_time_interval.total_seconds() <= 0
    ):
        raise invalid_argument("train_time_interval", train_time_interval, "None or a positive datetime.timedelta")
    if monitor is None and save_top_k not in (-1, 0, 1):
        raise MisconfigurationException(
            f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration: without a"
            " `monitor` there is nothing to rank checkpoints by. Accepted: set `monitor` to a logged metric, or use"
            " save_top_k=1 (keep the latest), -1 (keep all) or 0 (keep none)."
        )
    triggers = {
        "every_n_train_steps": every_n_train_steps,
        "every_n_epochs": every_n_epochs,
        "train_time_interval": train_time_interval,
    }
    if sum(bool(v) for v in triggers.values()) > 1:
        given = ", ".join(f"{k}={v!r}" for k, v in triggers.items())
        raise MisconfigurationException(
            f"Combination of parameters {given} should be mutually exclusive. Accepted: at most one of"
            " `every_n_train_steps`, `every_n_epochs` and `train_time_interval`; use a second"
            " ModelCheckpoint for a second schedule."
        )
    return every_n_train_steps, every_n_epochs


def _check_every_n(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        said = f"Invalid value for {name}={value}. Must be >= 0."
        raise invalid_argument(name, value, "None, 0 (never) or a positive int", said)
    return value
