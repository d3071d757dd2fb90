"""The ``fulmen`` command (``fulmen run``) and ``LightningCLI``, the YAML-config command line for training scripts.

``LightningCLI`` and its helpers load on first use (PEP 562): the ``fulmen`` command imports
this package and must not pay for jsonargparse.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module in this package that defines it.
_EXPORTS = {
    "LightningCLI": "fulmen.cli.lightning_cli",
    "LightningArgumentParser": "fulmen.cli.parser",
    "SaveConfigCallback": "fulmen.cli.save_config",
    "ReduceLROnPlateau": "fulmen.cli.optimizers",
    "instantiate_class": "fulmen.cli.optimizers",
    "OptimizerCallable": "fulmen.cli.optimizers",
    "LRSchedulerCallable": "fulmen.cli.optimizers",
    "LRSchedulerTypeTuple": "fulmen.cli.optimizers",
    "LRSchedulerTypeUnion": "fulmen.cli.optimizers",
    "ArgsType": "fulmen.cli.lightning_cli",
    "instantiate_module": "fulmen.cli.lightning_cli",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
