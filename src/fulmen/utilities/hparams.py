"""``save_hyperparameters``: record the arguments an object's ``__init__`` received.

Shared by ``LightningModule`` and ``LightningDataModule`` through :class:`HyperparametersMixin`.
The arguments are read from the calling ``__init__`` frames (the subclass's and every base
``__init__`` on the way), so users write ``self.save_hyperparameters()`` and nothing else.
"""

from __future__ import annotations

import copy
import inspect
import types
from argparse import Namespace
from collections.abc import Iterable, Mapping
from typing import Any

from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.parsing import AttributeDict
from fulmen.utilities.rank_zero import rank_zero_warn

_PRIMITIVES = (bool, int, float, str, bytes, type(None))


class HyperparametersMixin:
    """``save_hyperparameters``, ``hparams`` and ``hparams_initial`` for any class."""

    __jit_unused_properties__: list[str] = ["hparams", "hparams_initial"]

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: str | Iterable[str] | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Save the ``__init__`` arguments (all, or those named in ``args``) into ``self.hparams``.

        ``args`` may instead hold one dict / Namespace to save as is. ``ignore`` names arguments to
        leave out (modules, for instance, are saved with the weights already). ``logger=False``
        keeps them away from the loggers.
        """
        object.__setattr__(self, "_log_hyperparams", logger)
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        save_hyperparameters(self, *args, ignore=ignore, frame=frame)

    def _set_hparams(self, hp: Any) -> None:
        hp = _to_hparams_dict(hp)
        if isinstance(hp, dict) and isinstance(self.__dict__.get("_hparams"), dict):
            self._hparams.update(hp)
        else:
            object.__setattr__(self, "_hparams", hp)

    @property
    def hparams(self) -> AttributeDict | Any:
        """The saved hyperparameters; assignable and mutable (``self.hparams.lr = 0.1``)."""
        if "_hparams" not in self.__dict__:
            object.__setattr__(self, "_hparams", AttributeDict())
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of the hyperparameters as first saved, unaffected by later changes to ``hparams``."""
        initial = self.__dict__.get("_hparams_initial")
        return copy.deepcopy(initial) if initial is not None else AttributeDict()

    @property
    def _log_hyperparams_enabled(self) -> bool:
        # As in Lightning: hyperparameters reach the loggers only once save_hyperparameters ran.
        return self.__dict__.get("_log_hyperparams", False)


def save_hyperparameters(
    obj: Any,
    *args: Any,
    ignore: str | Iterable[str] | None = None,
    frame: types.FrameType | None = None,
) -> None:
    if len(args) == 1 and not isinstance(args[0], str) and not args[0]:
        return  # an empty container: nothing to save
    if frame is None:
        current = inspect.currentframe()
        frame = current.f_back if current is not None else None
    if not isinstance(frame, types.FrameType):
        raise RuntimeError("save_hyperparameters needs the calling frame, and none is available.")

    init_args = collect_init_args(frame, obj)
    ignored = _ignore_set(ignore)
    init_args = {k: v for k, v in init_args.items() if k not in ignored}

    if not args:
        hp: Any = init_args
        name = "kwargs" if hp else None
    else:
        non_str = [a for a in args if not isinstance(a, str)]
        if len(non_str) == 1 and len(args) == 1:
            hp = non_str[0]
            candidates = [k for k, v in init_args.items() if v is hp]
            name = candidates[0] if candidates else None
        elif non_str:
            raise invalid_argument("args", args, "argument names (strings), or one dict / Namespace")
        else:
            missing = [a for a in args if a not in init_args]
            if missing:
                raise invalid_argument(
                    "args", missing, f"names of {type(obj).__name__}.__init__ arguments: {sorted(init_args)}"
                )
            hp = {a: init_args[a] for a in args}
            name = "kwargs"
    object.__setattr__(obj, "_hparams_name", name)
    obj._set_hparams(hp)
    from torch import nn

    for key, value in obj._hparams.items() if isinstance(obj._hparams, Mapping) else ():
        if isinstance(value, nn.Module):
            rank_zero_warn(
                f"Hyperparameter {key!r} is an `nn.Module`, whose weights the checkpoint saves already. "
                f"Leave it out with `self.save_hyperparameters(ignore=[{key!r}])`."
            )
    # Deep copy: later in-place changes to the arguments must not rewrite the record.
    object.__setattr__(obj, "_hparams_initial", copy.deepcopy(obj._hparams))


def collect_init_args(frame: types.FrameType, obj: Any) -> dict[str, Any]:
    """The arguments of every ``__init__`` of ``obj``'s classes on the stack, outermost (subclass) last."""
    collected: list[dict[str, Any]] = []
    current: types.FrameType | None = frame
    while current is not None:
        args = _init_args_of_frame(current, obj)
        if args is None:
            break
        collected.append(args)
        current = current.f_back
    merged: dict[str, Any] = {}
    for args in reversed(collected):  # base classes first, the subclass overrides
        merged.update(args)
    return merged


def _init_args_of_frame(frame: types.FrameType, obj: Any) -> dict[str, Any] | None:
    code = frame.f_code
    if code.co_name != "__init__":
        return None
    # inspect.unwrap: an __init__ wrapped with functools.wraps (DeepSpeed's zero.Init) still counts.
    owner = next(
        (c for c in type(obj).__mro__ if getattr(_unwrap(c.__dict__.get("__init__")), "__code__", None) is code), None
    )
    if owner is None:
        return None
    local_vars = frame.f_locals
    params = list(inspect.signature(owner.__init__).parameters.values())
    if not params or local_vars.get(params[0].name) is not obj:
        return None
    args: dict[str, Any] = {}
    for param in params[1:]:
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            args.update(local_vars.get(param.name, {}))
        elif param.name in local_vars:
            args[param.name] = local_vars[param.name]
    return args


def _unwrap(fn: Any) -> Any:
    return inspect.unwrap(fn) if callable(fn) else fn


def _ignore_set(ignore: str | Iterable[str] | None) -> set[str]:
    if ignore is None:
        return set()
    if isinstance(ignore, str):
        return {ignore}
    return {name for name in ignore if isinstance(name, str)}


def _to_hparams_dict(hp: Any) -> Any:
    if isinstance(hp, Namespace):
        hp = vars(hp)
    if isinstance(hp, Mapping):
        return AttributeDict(hp)
    if isinstance(hp, _PRIMITIVES):
        raise invalid_argument("hparams", hp, "a dict, an argparse.Namespace or a dataclass/config object")
    return hp
