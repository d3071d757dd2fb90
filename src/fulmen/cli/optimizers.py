"""Optimizers and LR schedulers named in a config: the types the CLI accepts and how it builds them.

No jsonargparse here: these names are also what a model's ``__init__`` annotates
(``optimizer: OptimizerCallable = torch.optim.Adam``) for the CLI to inject.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ``ReduceLROnPlateau`` that also knows which logged value it watches (``monitor``).

    ``LightningCLI.configure_optimizers`` hands ``monitor`` to the Trainer, so a config can say
    ``lr_scheduler: {class_path: fulmen.cli.ReduceLROnPlateau, init_args: {monitor: val_loss}}``.
    """

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


#: The scheduler classes ``--lr_scheduler`` accepts by default.
LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = Union[LRScheduler, ReduceLROnPlateau]  # noqa: UP007 - a runtime alias
LRSchedulerType = Union[type[LRScheduler], type[ReduceLROnPlateau]]  # noqa: UP007
#: Annotate a model argument with these to receive a function that builds the optimizer/scheduler.
OptimizerCallable = Callable[[Iterable], Optimizer]
LRSchedulerCallable = Callable[[Optimizer], Union[LRScheduler, ReduceLROnPlateau]]  # noqa: UP007


def instantiate_class(args: Any, init: Mapping[str, Any]) -> Any:
    """Build ``init["class_path"](*args, **init["init_args"])``; ``args`` is one value or a tuple."""
    if "class_path" not in init:
        raise ValueError(f"`init={dict(init)!r}` is not valid. Accepted: a dict with `class_path` (and `init_args`).")
    module_name, _, class_name = init["class_path"].rpartition(".")
    if not module_name:
        raise ValueError(f"`class_path={init['class_path']!r}` is not valid. Accepted: a full import path.")
    cls = getattr(importlib.import_module(module_name), class_name)
    positional = args if isinstance(args, tuple) else (args,)
    return cls(*positional, **dict(init.get("init_args") or {}))


def add_class_path(class_type: type, init_args: Any) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": ...}`` for a value parsed without subclass mode."""
    if isinstance(init_args, Mapping) and "class_path" in init_args:
        return dict(init_args)
    return {"class_path": f"{class_type.__module__}.{class_type.__qualname__}", "init_args": dict(init_args or {})}
