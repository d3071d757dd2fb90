"""What Lite does with the loggers and callbacks a user hands it (Fabric's ``log``/``call``).

Lite never imports ``fulmen.loggers``: a logger is any object with ``log_metrics(metrics, step)``
(fulmen's own, or a user's), and a callback is any object whose methods ``Lite.call`` looks up
by name. Both are called on every rank, as in Fabric; fulmen's loggers write on rank zero only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fulmen.utilities.apply_func import apply_to_collection
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn


def as_list(value: Any, name: str) -> list[Any]:
    """``None``, one object or a list/tuple of them, as a new list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, bytes, Mapping)):
        raise invalid_argument(name, value, f"one object or a list of them (got a {type(value).__name__})")
    return [value]


def check_loggers(loggers: list[Any]) -> list[Any]:
    for index, logger in enumerate(loggers):
        if not callable(getattr(logger, "log_metrics", None)):
            raise invalid_argument(
                f"loggers[{index}]",
                logger,
                "a logger: an object with a `log_metrics(metrics, step)` method, such as "
                "fulmen.loggers.CSVLogger or TensorBoardLogger",
            )
    return loggers


def to_scalars(metrics: Any) -> dict[str, Any]:
    """Tensors become Python numbers (detached, moved off the device); other values pass as they are."""
    if not isinstance(metrics, Mapping):
        raise invalid_argument("metrics", metrics, "a dict of metric names to numbers or one-element tensors")

    def scalar(value: Tensor, name: str) -> Any:
        if value.numel() != 1:
            raise ValueError(
                f"The metric `{name}` is a tensor of shape {tuple(value.shape)}; it cannot be logged as one number. "
                "Log a one-element tensor (a mean, a sum) or a Python number."
            )
        return value.item()

    return {name: apply_to_collection(value, Tensor, scalar, name) for name, value in metrics.items()}


def call_hook(callbacks: list[Any], hook_name: str, *args: Any, **kwargs: Any) -> None:
    """Call ``hook_name`` on every callback that has it, in order; the others are skipped."""
    if not isinstance(hook_name, str):
        raise invalid_argument("hook_name", hook_name, "the name of a callback method, as a string")
    for callback in callbacks:
        method = getattr(callback, hook_name, None)
        if method is None:
            continue
        if not callable(method):
            rank_zero_warn(f"`{type(callback).__name__}.{hook_name}` is not callable; `Lite.call` skips it.")
            continue
        method(*args, **kwargs)
