"""``LambdaCallback``: a callback made of plain functions, for one-off hooks.

It exists so that "print something at the end of each epoch" does not need a class: pass the
functions by hook name, ``LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: ...)``.
Each function receives the same arguments as the :class:`~fulmen.callbacks.Callback` hook of
that name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fulmen.callbacks.callback import CALLBACK_HOOKS, Callback
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument


class LambdaCallback(Callback):
    """A callback whose hooks are the functions given by keyword (any ``Callback`` hook name)."""

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        unknown = sorted(name for name in hooks if name not in CALLBACK_HOOKS)
        if unknown:
            raise MisconfigurationException(
                f"`LambdaCallback` got {', '.join(repr(n) for n in unknown)}, which "
                f"{'is not a hook name' if len(unknown) == 1 else 'are not hook names'}. "
                f"Valid names: {', '.join(CALLBACK_HOOKS)}."
            )
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise invalid_argument(name, fn, "a function taking the hook's arguments, or None")
            # An instance attribute: the Trainer sees the hook as overridden and calls it unbound,
            # with exactly the arguments the hook receives.
            setattr(self, name, fn)
