"""An unpickler for files whose every record type is known in advance: exact names, nothing else.

``pickle.Unpickler.find_class`` imports whatever module a file names and, from protocol 4 on,
follows a dotted name attribute by attribute; so allowing "every name of module M" also allows
everything M merely imports (``os``, ``torch.load``, ...). Here a file may name only the
``(module, name)`` pairs given, a dotted name is refused outright, and persistent ids (which a
plain pickle never needs) are refused too.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Iterable
from typing import IO, Any


def resolve(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """``{(module, name): object}`` for the pairs that exist in this Python (a missing one is left out)."""
    resolved = {}
    for module, name in pairs:
        if "." in name:
            raise ValueError(f"An allowed name must be plain, not dotted: {module}.{name}")
        try:
            resolved[(module, name)] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # not in this version: its files cannot name it either
            continue
    return resolved


class Refused(pickle.UnpicklingError):
    """The file names something outside the allowed pairs (as opposed to being torn or garbled)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``file`` allowing exactly ``allowed`` (from :func:`resolve`); ``what`` names the file's role."""

    def __init__(self, file: IO[bytes], allowed: dict[tuple[str, str], Any], what: str) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None or "." in name:
            raise Refused(
                f"{self._what} refers to `{module}.{name}`, which such a file never holds; it is not loaded "
                "(loading would run code from the file)."
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise Refused(f"{self._what} holds a persistent reference, which such a file never holds.")
