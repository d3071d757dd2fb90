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


def rank_zero_only(fn: Callable[..., T], default: Any = None) -> Callable[..., T | Any]:
    """Call ``fn`` only where ``rank_zero_only.rank == 0``; other ranks get ``default`` (None)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | Any:
        if rank_zero_only.rank == 0:
            return fn(*args, **kwargs)
        return default

    return wrapped


rank_zero_only.rank = _rank_from_environment()  # type: ignore[attr-defined]


# ``stacklevel`` counts as in Lightning: the default (4) points at the code that called
# ``rank_zero_warn``/``rank_zero_info`` (the helper below, the function, its rank-zero wrapper).
def _warn(message: str | Warning, category: type[Warning] | None, stacklevel: int, **kwargs: Any) -> None:
    warnings.warn(message, category, stacklevel=stacklevel, **kwargs)


def _log(level: int, args: tuple[Any, ...], stacklevel: int, **kwargs: Any) -> None:
    log.log(level, *args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_warn(
    message: str | Warning, category: type[Warning] = UserWarning, stacklevel: int = 4, **kwargs: Any
) -> None:
    """``warnings.warn`` on global rank zero only; ``stacklevel`` and other keywords as ``warnings.warn`` takes."""
    _warn(message, category, stacklevel, **kwargs)


@rank_zero_only
def rank_zero_deprecation(message: str | Warning, stacklevel: int = 5, **kwargs: Any) -> None:
    """A ``DeprecationWarning`` on global rank zero only."""
    category = kwargs.pop("category", DeprecationWarning)
    _warn(message, category, stacklevel, **kwargs)


@rank_zero_only
def rank_zero_info(*args: Any, stacklevel: int = 4, **kwargs: Any) -> None:
    """An INFO line of the ``fulmen`` logger, on global rank zero only."""
    _log(logging.INFO, args, stacklevel, **kwargs)


@rank_zero_only
def rank_zero_debug(*args: Any, stacklevel: int = 4, **kwargs: Any) -> None:
    """A DEBUG line of the ``fulmen`` logger, on global rank zero only."""
    _log(logging.DEBUG, args, stacklevel, **kwargs)


@rank_zero_only
def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    print(*args, **kwargs)


def rank_prefixed_message(message: str, rank: int | None) -> str:
    """``message`` with ``[rank: N]`` in front where the rank is known."""
    return f"[rank: {rank}] {message}" if rank is not None else message
