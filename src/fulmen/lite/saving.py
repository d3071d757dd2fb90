"""``Lite.save(..., filter=...)``: keep only chosen entries of a saved state dict.

A filter maps a key of ``state`` to ``fn(name, value) -> bool``; it is applied to that key's
state dict (a model's parameters, an optimizer's entries, a plain dict) after conversion, so
that, for example, only the trainable adapter weights of a large model reach the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fulmen.utilities.exceptions import invalid_argument

Filter = Mapping[str, Callable[[str, Any], bool]]


def check_filter(filter: Any, state: Any) -> None:
    if filter is None:
        return
    if not isinstance(filter, Mapping):
        raise invalid_argument("filter", filter, "a dict of state keys to functions `fn(name, value) -> bool`")
    if not isinstance(state, Mapping):
        raise invalid_argument("state", type(state).__name__, "a dict when `filter` is given")
    unknown = sorted(set(filter) - set(state))
    if unknown:
        raise invalid_argument("filter", list(filter), f"keys of `state` ({sorted(state)}); unknown: {unknown}")
    for key, fn in filter.items():
        if not callable(fn):
            raise invalid_argument(f"filter[{key!r}]", fn, "a function `fn(name, value) -> bool`")


def apply_filter(converted: Any, filter: Filter | None) -> Any:
    """``converted`` (the state with state dicts in place of objects), each filtered entry reduced."""
    if not filter:
        return converted
    result = dict(converted)
    for key, keep in filter.items():
        value = result[key]
        if isinstance(value, Mapping):
            result[key] = {name: item for name, item in value.items() if keep(name, item)}
    return result
