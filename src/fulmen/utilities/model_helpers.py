"""Lightning's ``utilities.model_helpers``: ``is_overridden`` with Lightning's signature, ``get_torchvision_model``.

fulmen's own hook dispatch uses ``fulmen.utilities.overrides``; this module is the face that
Lightning code (custom trainers written on Lite, examples) calls by name.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

__all__ = ["get_torchvision_model", "is_overridden"]

# The classes whose methods count as "not overridden" when no parent is given. They are found
# by name in the instance's class hierarchy: utilities may not import the module, datamodule or
# callbacks packages.
_PARENT_NAMES = (
    ("fulmen.module.module", "LightningModule"),
    ("fulmen.datamodule.datamodule", "LightningDataModule"),
    ("fulmen.callbacks.callback", "Callback"),
)


def _default_parent(instance: object) -> type | None:
    hierarchy = instance.__mro__ if isinstance(instance, type) else type(instance).__mro__
    for module, name in _PARENT_NAMES:
        for cls in hierarchy:
            if cls.__name__ == name and cls.__module__ == module:
                return cls
    return None


def _code_of(function: Any) -> Any:
    while hasattr(function, "__wrapped__"):  # functools.wraps, mock.patch(wraps=...)
        function = function.__wrapped__
    function = getattr(function, "__func__", function)
    return getattr(function, "__code__", function)


def is_overridden(method_name: str, instance: object | None = None, parent: type | None = None) -> bool:
    """Whether ``instance`` (an object or a class) implements ``method_name`` differently from ``parent``.

    Without ``parent``, a ``LightningModule``, ``LightningDataModule`` or ``Callback`` is compared
    with that base class; anything else needs ``parent``. An attribute set to ``None`` counts as
    not implemented.
    """
    if instance is None:
        return False
    if parent is None:
        parent = _default_parent(instance)
        if parent is None:
            raise ValueError(
                f"Expected a parent to compare `{method_name}` with: {type(instance).__name__} is not a "
                "LightningModule, LightningDataModule or Callback; pass `parent=` (the base class)."
            )
    method = getattr(instance, method_name, None)
    if method is None:
        return False
    parent_method = getattr(parent, method_name, None)
    if parent_method is None:
        raise ValueError(f"The parent should define the method: {parent.__name__} has no `{method_name}`.")
    return _code_of(method) is not _code_of(parent_method)


def get_torchvision_model(model_name: str, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(model_name, **kwargs)``, with a clear error where torchvision is missing."""
    if importlib.util.find_spec("torchvision") is None:
        raise ModuleNotFoundError(
            f"`get_torchvision_model({model_name!r})` needs torchvision: `pip install torchvision`."
        )
    from torchvision import models

    return models.get_model(model_name, **kwargs)
