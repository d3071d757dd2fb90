"""Run or print only on global rank zero, the process that owns files and the console."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("fulmen")


def _show_info_lines() -> None:
    """fulmen's INFO lines reach the console, as Lightning's do: the ``fulmen`` logger logs at INFO,
    and prints to stderr itself only when the program configured no logging (no root handler)."""
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not logging.getLogger().hasHandlers() and not log.handlers:
        log.addHandler(logging.StreamHandler())
        log.propagate = False


_show_info_lines()
T = TypeVar("T")

_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK")


def _rank_from_environment() -> int:
    # Known before any process group exists, so import-time code in user scripts is quiet too.
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Call ``fn`` only where ``rank_zero_only.rank == 0``; other ranks get ``None``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        if rank_zero_only.rank == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped


rank_zero_only.rank = _rank_from_environment()  # type: ignore[attr-defined]


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 3) -> None:
    warnings.warn(message, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_info(message: str) -> None:
    log.info(message)


@rank_zero_only
def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    print(*args, **kwargs)
