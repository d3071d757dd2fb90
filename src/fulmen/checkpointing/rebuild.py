"""``load_from_checkpoint`` for modules and datamodules: rebuild the object from its saved hyperparameters.

The class is instantiated with the hyperparameters the checkpoint recorded (``save_hyperparameters``),
overridden by any keyword the caller passes, then the saved state is loaded into it. Loading goes
through ``safe_load``: no code from the file runs unless the caller opts in with ``weights_only=False``.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import torch

from fulmen.checkpointing.migration import migrate
from fulmen.checkpointing.remote import get_filesystem
from fulmen.checkpointing.safe_reading import safe_load
from fulmen.utilities.rank_zero import rank_zero_warn


class restricted_classmethod(classmethod):  # noqa: N801 - used as a decorator, like classmethod
    """A classmethod that refuses to be called on an instance, where its result would be lost."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return super().__get__(instance, owner)
        # Reading the attribute from an instance works (hasattr, inspect, torch.jit, TensorBoard's
        # graph logging walk attributes); only calling it fails.
        func, cls_name = self.__func__, type(instance).__name__

        @functools.wraps(func)
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise TypeError(
                f"`{cls_name}.{func.__name__}` is a classmethod: call it on the class, "
                f"`model = {cls_name}.{func.__name__}(path)`, and use what it returns."
            )

        return refuse


def read_checkpoint(path: str | os.PathLike, map_location: Any, weights_only: bool) -> dict[str, Any]:
    location = map_location if map_location is not None else torch.device("cpu")
    return migrate(safe_load(os.fspath(path), map_location=location, weights_only=weights_only), os.fspath(path))


def instantiate(cls: type, saved: dict[str, Any] | None, hparams_file: Any, overrides: dict[str, Any]) -> Any:
    """``cls(**hyperparameters)``: saved ones, then those of ``hparams_file``, then ``overrides``."""
    hparams = dict(saved or {})
    if hparams_file is not None:
        hparams.update(_read_yaml(hparams_file))
    hparams.update(overrides)
    parameters = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = hparams if accepts_any else {k: v for k, v in hparams.items() if k in parameters}
    return cls(**kwargs)


def _read_yaml(path: Any) -> dict[str, Any]:
    import yaml

    fs = get_filesystem(path)
    if not fs.exists(os.fspath(path)):
        # As Lightning: a missing hparams file is worth a warning, not a failed load.
        rank_zero_warn(f"`hparams_file={path!s}` does not exist: the checkpoint's own hyperparameters are used.")
        return {}
    with fs.open(os.fspath(path), "r") as f:
        loaded = yaml.safe_load(f) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"`hparams_file={path!s}` holds {type(loaded).__name__}; Accepted: a YAML mapping.")
    return loaded
