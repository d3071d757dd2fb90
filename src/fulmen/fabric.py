"""``fulmen.fabric``: Lightning Fabric's names over Lite, for code written as ``L.fabric.…``.

``import lightning as L`` scripts write ``L.Fabric(...)`` and reach Fabric's packages by
attribute (``L.fabric.strategies.FSDPStrategy``, ``L.fabric.utilities.rank_zero_warn``,
``L.fabric.wrappers``). Here ``Fabric`` is ``Lite`` itself and each package name points at the
fulmen package that holds the same names; nothing is copied or wrapped.
"""

from __future__ import annotations

import importlib
from typing import Any

from fulmen.lite import LightningLite, Lite, is_wrapped
from fulmen.utilities.seed import seed_everything

Fabric = Lite

__all__ = ["Fabric", "LightningLite", "Lite", "is_wrapped", "seed_everything"]

# Fabric's package name -> the fulmen module that holds those names. Loaded on first use.
_PACKAGES = {
    "accelerators": "fulmen.strategies.accelerators",
    "loggers": "fulmen.loggers",
    "plugins": "fulmen.plugins",
    "strategies": "fulmen.strategies",
    "utilities": "fulmen.utilities",
    "wrappers": "fulmen.lite.wrappers",
}


def __getattr__(name: str) -> Any:
    module = _PACKAGES.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.fabric' has no attribute {name!r}")
    return importlib.import_module(module)


def __dir__() -> list[str]:
    return sorted({*__all__, *_PACKAGES})
