"""``LightningArgumentParser``: jsonargparse's parser, taught the Trainer, modules, optimizers and schedulers.

Importing this module imports jsonargparse, so only ``fulmen.cli.LightningCLI`` and its users
load it; the ``fulmen`` command never does.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

try:
    from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, class_from_function
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised only without the extra
    raise ModuleNotFoundError(
        "fulmen.cli.LightningCLI needs jsonargparse. Install it with `pip install 'fulmen[cli]'` "
        "(or `pip install 'jsonargparse[signatures]'`)."
    ) from _missing

import torch

import fulmen
from fulmen.callbacks import Callback
from fulmen.cli.optimizers import LRSchedulerTypeTuple
from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule
from fulmen.trainer import Trainer

__all__ = ["ActionConfigFile", "LightningArgumentParser", "Namespace"]

_LIGHTNING_TYPES = (Trainer, LightningModule, LightningDataModule, Callback)


class LightningArgumentParser(ArgumentParser):
    """A jsonargparse ``ArgumentParser`` with ``add_lightning_class_args`` and the optimizer helpers.

    Environment variables are read with the ``PL`` prefix (``PL_FIT__TRAINER__MAX_EPOCHS``) when
    ``default_env=True``, as Lightning's parser does, so existing job scripts keep working.
    """

    def __init__(
        self,
        *args: Any,
        description: str = "fulmen Trainer command line tool",
        env_prefix: str = "PL",
        default_env: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dump_header", [f"fulmen=={fulmen.__version__}"])
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs)
        #: Keys whose instantiated value is a callback the CLI appends to ``trainer.callbacks``.
        self.callback_keys: list[str] = []
        #: nested key -> (optimizer class or tuple of classes, where the instance goes).
        self._optimizers: dict[str, tuple[type | tuple[type, ...], str]] = {}
        self._lr_schedulers: dict[str, tuple[type | tuple[type, ...], str]] = {}

    def add_lightning_class_args(
        self,
        lightning_class: type | Callable[..., Any],
        nested_key: str,
        subclass_mode: bool = False,
        required: bool = True,
    ) -> list[str]:
        """Add the init arguments of a Trainer, LightningModule, LightningDataModule or Callback under ``nested_key``.

        ``subclass_mode=True`` takes any subclass through ``class_path``/``init_args``
        (``--model=MyModel``). A Callback added here is instantiated and appended to the Trainer's
        callbacks (``parser.add_lightning_class_args(EarlyStopping, "early_stopping")``).
        """
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = class_from_function(lightning_class)
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, _LIGHTNING_TYPES)):
            raise TypeError(
                f"`add_lightning_class_args(lightning_class={lightning_class!r})` is not valid. Accepted: a subclass "
                "of Trainer, LightningModule, LightningDataModule or Callback, or a function returning one."
            )
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        if issubclass(lightning_class, Trainer):
            return self._add_trainer_arguments(lightning_class, nested_key)
        return self.add_class_arguments(
            lightning_class, nested_key, fail_untyped=False, instantiate=True, sub_configs=True
        )

    def add_optimizer_args(
        self,
        optimizer_class: type[torch.optim.Optimizer] | tuple[type[torch.optim.Optimizer], ...] = (
            torch.optim.Optimizer,
        ),
        nested_key: str = "optimizer",
        link_to: str = "AUTOMATIC",
    ) -> None:
        """Add ``--optimizer`` (one class, or any subclass of a tuple of classes through ``class_path``).

        ``link_to="AUTOMATIC"`` lets ``LightningCLI`` build the optimizer and give the model a
        ``configure_optimizers``; a key such as ``"model.optimizer_init"`` instead hands the
        ``class_path``/``init_args`` dict to that model argument.
        """
        _check_classes("optimizer_class", optimizer_class, (torch.optim.Optimizer,))
        self._add_class_or_subclass(optimizer_class, nested_key, skip={"params"})
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(
        self,
        lr_scheduler_class: type | tuple[type, ...] = LRSchedulerTypeTuple,
        nested_key: str = "lr_scheduler",
        link_to: str = "AUTOMATIC",
    ) -> None:
        """Add ``--lr_scheduler``; ``link_to`` works as in :meth:`add_optimizer_args`."""
        _check_classes("lr_scheduler_class", lr_scheduler_class, LRSchedulerTypeTuple)
        self._add_class_or_subclass(lr_scheduler_class, nested_key, skip={"optimizer"})
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)

    # ------------------------------------------------------------------------------ internals
    def _add_class_or_subclass(self, classes: type | tuple[type, ...], nested_key: str, skip: set[str]) -> None:
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": skip}
        if isinstance(classes, tuple):
            self.add_subclass_arguments(classes, nested_key, **kwargs)
        else:
            self.add_class_arguments(classes, nested_key, sub_configs=True, **kwargs)

    def _add_trainer_arguments(self, trainer_class: type, nested_key: str) -> list[str]:
        # The Trainer types a few flags as ``Any``: give them the types that let a config name a
        # logger, strategy or plugin through ``class_path``, and refuse what cannot work.
        overrides = {
            name: typ for name, typ in _trainer_argument_types().items() if _annotated_any(trainer_class, name)
        }
        added = self.add_class_arguments(
            trainer_class, nested_key, fail_untyped=False, instantiate=False, sub_configs=True, skip=set(overrides)
        )
        group = self.groups.get(nested_key, self)
        parameters = inspect.signature(trainer_class.__init__).parameters
        for name, typ in overrides.items():
            group.add_argument(f"--{nested_key}.{name}", type=typ, default=parameters[name].default)
            added.append(f"{nested_key}.{name}")
        # Help and printed configs list the flags in the Trainer's order, not with the retyped ones last.
        position = {f"{nested_key}.{name}": i for i, name in enumerate(parameters)}
        _sort_in_place(self._actions, position)
        _sort_in_place(getattr(group, "_group_actions", []), position)
        return sorted(added, key=position.__getitem__)


def _trainer_argument_types() -> dict[str, Any]:
    from fulmen.loggers import Logger
    from fulmen.strategies import Strategy
    from fulmen.strategies.environments import ClusterEnvironment
    from fulmen.strategies.precision import Precision

    plugin = ClusterEnvironment | Precision
    types = {
        "strategy": str | Strategy,
        "logger": bool | Logger | list[Logger] | None,
        "plugins": plugin | list[plugin] | None,
    }
    profiler = _optional_class("fulmen.profilers", "Profiler")
    if profiler is not None:
        types["profiler"] = profiler | str | None
    return types


def _optional_class(module: str, name: str) -> type | None:
    """A class of a fulmen package that may not be there (packages land one at a time)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _sort_in_place(actions: list[Any], position: dict[str, int]) -> None:
    """Sort the actions whose ``dest`` is in ``position`` among themselves; the others keep their place."""
    slots = [i for i, action in enumerate(actions) if action.dest in position]
    ordered = sorted((actions[i] for i in slots), key=lambda action: position[action.dest])
    for slot, action in zip(slots, ordered):
        actions[slot] = action


def _annotated_any(trainer_class: type, name: str) -> bool:
    parameter = inspect.signature(trainer_class.__init__).parameters.get(name)
    return parameter is not None and parameter.annotation in ("Any", Any)


def _check_classes(argument: str, classes: type | Sequence[type], bases: tuple[type, ...]) -> None:
    items = classes if isinstance(classes, tuple) else (classes,)
    if not items or not all(isinstance(c, type) and issubclass(c, bases) for c in items):
        accepted = " or ".join(b.__name__ for b in bases)
        raise TypeError(
            f"`{argument}={classes!r}` is not valid. Accepted: a subclass of {accepted}, or a tuple of them."
        )
