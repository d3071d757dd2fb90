"""Real types in public signatures, as Lightning's have.

fulmen's modules use ``from __future__ import annotations``, which leaves every annotation a
string. Code that reads a signature without evaluating it (``inspect.signature(ModelCheckpoint)
.parameters["save_last"].annotation`` handed to argparse or jsonargparse, as Lightning users and
tools do) then gets ``"bool | Literal['link'] | None"`` instead of a type. Evaluating the strings
once, in the defining module, fixes that; a name that only exists for type checkers stays a string.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any


def resolve_annotations(function: Callable[..., Any]) -> None:
    """Replace ``function``'s string annotations (and those of what it wraps) by the objects they name."""
    while function is not None:
        annotations = getattr(function, "__annotations__", None)
        module_globals = getattr(function, "__globals__", None)
        if annotations and module_globals is not None:
            namespace = {**vars(typing), **module_globals}
            for name, value in annotations.items():
                if isinstance(value, str):
                    try:
                        annotations[name] = eval(value, namespace)  # noqa: S307 - fulmen's own annotation text
                    except Exception:  # a TYPE_CHECKING-only name: keep the string
                        pass
        function = getattr(function, "__wrapped__", None)


def resolve_init_annotations(cls: type) -> None:
    """``resolve_annotations`` on ``cls.__init__`` when fulmen defines the class (user classes are left alone)."""
    if cls.__module__.split(".")[0] == "fulmen" and "__init__" in vars(cls):
        resolve_annotations(vars(cls)["__init__"])
