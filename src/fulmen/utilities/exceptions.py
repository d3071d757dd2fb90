"""The few exception classes fulmen raises, each a subclass of a builtin users already catch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class MisconfigurationException(ValueError):
    """An argument or a combination of arguments that cannot work."""


class ConfigurationTypeError(MisconfigurationException, TypeError):
    """An argument of the wrong type: caught as ``TypeError`` (Lightning raises one there) or as
    ``MisconfigurationException``."""


class ModelNotAttachedError(RuntimeError, AttributeError):
    """Something that needs the Trainer's model ran before any was attached (``RuntimeError``;
    ``AttributeError`` as Lightning raises there)."""


class DistributedError(RuntimeError):
    """A rank failed or stopped answering; raised on every rank so that none hangs."""


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, torn, corrupted or refused for safety."""


def invalid_argument(
    name: str, value: Any, accepted: Iterable[Any] | str, said: str | None = None
) -> MisconfigurationException:
    """Build the one error shape fulmen uses for bad input: argument, value, what is accepted.

    ``said`` leads with the sentence Lightning raises for the same input, so that code written
    against Lightning's messages (``pytest.raises(match=...)``, log filters) still matches.
    """
    if not isinstance(accepted, str):
        accepted = ", ".join(repr(a) for a in accepted)
    lead = "" if not said else f"{said} " if said.endswith((".", "!", "?")) else f"{said}: "
    return MisconfigurationException(f"{lead}`{name}={value!r}` is not valid. Accepted: {accepted}.")


class PossibleUserWarning(UserWarning):
    """A warning about something that is probably, but not surely, a mistake (as in Lightning)."""
