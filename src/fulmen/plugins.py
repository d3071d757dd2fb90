"""``fulmen.plugins``: the names of Lightning's ``plugins`` package (and Fabric's), in one place.

Lightning passes environments, precision modes, checkpoint writers and layer-sync plugins as
``plugins=[...]``. fulmen keeps each where it works (environments, precision and layer sync in
the strategy layer, checkpoint I/O in ``fulmen.checkpointing``); this module gathers them under
the one import path a migrating script looks for.
"""

from __future__ import annotations

import importlib
from typing import Any

from fulmen.checkpointing.checkpoint_io import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO
from fulmen.strategies import LayerSync, TorchSyncBatchNorm
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
    "AsyncCheckpointIO",
    "CheckpointIO",
    "ClusterEnvironment",
    "DoublePrecision",
    "HalfPrecision",
    "KubeflowEnvironment",
    "LayerSync",
    "LSFEnvironment",
    "LightningEnvironment",
    "MixedPrecision",
    "Precision",
    "SLURMEnvironment",
    "TorchCheckpointIO",
    "TorchElasticEnvironment",
    "TorchSyncBatchNorm",
]

# Lightning's submodule names: plugins.environments, plugins.precision, plugins.io, plugins.layer_sync.
_SUBMODULES = {
    "environments": "fulmen.strategies.environments",
    "precision": "fulmen.strategies.precision",
    "io": "fulmen.checkpointing.checkpoint_io",
    "layer_sync": "fulmen.strategies.layer_sync",
}


def __getattr__(name: str) -> Any:
    module = _SUBMODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.plugins' has no attribute {name!r}")
    return importlib.import_module(module)
