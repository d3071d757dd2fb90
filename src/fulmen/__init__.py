"""fulmen: a structured PyTorch trainer with Lightning's vocabulary, and Lite for raw loops.

Public names load on first use (PEP 562), so ``import fulmen`` costs almost nothing on top
of ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fulmen.utilities.warning_filters import apply_environment as _apply_warning_environment

__version__ = "0.1.0"

_EXPORTS = {
    "LightningModule": "fulmen.module",
    "LightningDataModule": "fulmen.datamodule",
    "Trainer": "fulmen.trainer",
    "Callback": "fulmen.callbacks",
    "Lite": "fulmen.lite",
    "Fabric": "fulmen.fabric",
    "cli_lightning_logo": "fulmen.utilities.logo",
    "LightningLite": "fulmen.lite",
    "seed_everything": "fulmen.utilities.seed",
}

__all__ = [
    "Callback",
    "Fabric",
    "LightningDataModule",
    "LightningLite",
    "LightningModule",
    "Lite",
    "Trainer",
    "__version__",
    "cli_lightning_logo",
    "fabric",
    "seed_everything",
]

# Packages reachable as attributes (``L.fabric.strategies...``), as ``import lightning as L`` code writes them.
_SUBPACKAGES = {"fabric": "fulmen.fabric"}

# POSSIBLE_USER_WARNINGS=0 silences PossibleUserWarning for the whole program, as in Lightning.
_apply_warning_environment()

if TYPE_CHECKING:
    from fulmen.callbacks import Callback
    from fulmen.datamodule import LightningDataModule
    from fulmen.fabric import Fabric
    from fulmen.lite import LightningLite, Lite
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer
    from fulmen.utilities.logo import cli_lightning_logo
    from fulmen.utilities.seed import seed_everything


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(_SUBPACKAGES[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
