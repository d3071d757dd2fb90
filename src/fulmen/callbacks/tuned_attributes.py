"""Finding a hyperparameter (``lr``, ``batch_size``) where Lightning's tuners look for it.

In order: an attribute of the module, a key of ``module.hparams``, an attribute of the
trainer's datamodule, a key of ``datamodule.hparams``. Reading takes the last of those that
holds it; writing updates every one, so that ``self.batch_size`` and ``self.hparams.batch_size``
stay equal.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def attribute_holders(module: Any, name: str, datamodule: Any = None) -> list[Any]:
    """Every object or dict, of the module and the datamodule, that holds ``name``."""
    holders: list[Any] = []
    for owner in (module, datamodule):
        if owner is None:
            continue
        if _has_attribute(owner, name):
            holders.append(owner)
        hparams = getattr(owner, "hparams", None)
        if isinstance(hparams, MutableMapping) and name in hparams:
            holders.append(hparams)
    return holders


def _has_attribute(owner: Any, name: str) -> bool:
    try:
        getattr(owner, name)
    except AttributeError:
        return False
    return True


def has_attribute(module: Any, name: str, datamodule: Any = None) -> bool:
    return bool(attribute_holders(module, name, datamodule))


def get_attribute(module: Any, name: str, datamodule: Any = None) -> Any:
    holders = attribute_holders(module, name, datamodule)
    if not holders:
        raise AttributeError(_missing(name))
    holder = holders[-1]
    return holder[name] if isinstance(holder, MutableMapping) else getattr(holder, name)


def set_attribute(module: Any, name: str, value: Any, datamodule: Any = None) -> None:
    holders = attribute_holders(module, name, datamodule)
    if not holders:
        raise AttributeError(_missing(name))
    for holder in holders:
        if isinstance(holder, MutableMapping):
            holder[name] = value
        else:
            setattr(holder, name, value)


def _missing(name: str) -> str:
    return (
        f"`{name}` is neither an attribute of the model or its datamodule nor a key of their `hparams`: "
        f"define `self.{name}` or save it with `self.save_hyperparameters()`."
    )
