"""Tuning before training: the learning-rate range test and the largest batch size that fits.

``Tuner(trainer).lr_find(model)`` and ``Tuner(trainer).scale_batch_size(model)`` run the search
in a short ``fit`` and restore the model and optimizers afterwards; the callbacks
``fulmen.callbacks.LearningRateFinder`` and ``BatchSizeFinder`` run the same search at the start
of your own ``fit``. Names load on first use (PEP 562): ``import fulmen`` never imports this.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Tuner": "fulmen.tuner.tuning",
    "LRFinder": "fulmen.callbacks.lr_search",
}

__all__ = ["LRFinder", "Tuner"]

if TYPE_CHECKING:
    from fulmen.callbacks.lr_search import LRFinder
    from fulmen.tuner.tuning import Tuner


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
