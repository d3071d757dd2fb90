"""``fulmen.plugins``: the names of Lightning's ``plugins`` package (and Fabric's), in one place.

Lightning passes environments, precision modes, checkpoint writers and layer-sync plugins as
``plugins=[...]``. fulmen keeps each where it works (environments and precision in the strategy
layer); this module gathers them under the one import path a migrating script looks for.
"""

from __future__ import annotations

import importlib
from typing import Any

from fulmen.strategies.environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from fulmen.strategies.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = [
    "ClusterEnvironment",
    "DoublePrecision",
    "HalfPrecision",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LightningEnvironment",
    "MixedPrecision",
    "Precision",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
]

_SUBMODULES = {"environments": "fulmen.strategies.environments", "precision": "fulmen.strategies.precision"}


def __getattr__(name: str) -> Any:
    module = _SUBMODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.plugins' has no attribute {name!r}")
    return importlib.import_module(module)
