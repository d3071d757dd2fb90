"""The few exception classes fulmen raises, each a subclass of a builtin users already catch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class MisconfigurationException(ValueError):
    """An argument or a combination of arguments that cannot work."""


class DistributedError(RuntimeError):
    """A rank failed or stopped answering; raised on every rank so that none hangs."""


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, torn, corrupted or refused for safety."""


def invalid_argument(name: str, value: Any, accepted: Iterable[Any] | str) -> MisconfigurationException:
    """Build the one error shape fulmen uses for bad input: argument, value, what is accepted."""
    if not isinstance(accepted, str):
        accepted = ", ".join(repr(a) for a in accepted)
    return MisconfigurationException(f"`{name}={value!r}` is not valid. Accepted: {accepted}.")


class PossibleUserWarning(UserWarning):
    """A warning about something that is probably, but not surely, a mistake (as in Lightning)."""
