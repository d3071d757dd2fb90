"""Small helpers with no knowledge of the rest of fulmen (torch and the stdlib only).

The names below are loaded on first use (PEP 562): fulmen's own modules import
``fulmen.utilities.<module>`` all the time, and that must not pull in every helper.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CombinedLoader": "fulmen.utilities.combined_loader",
    "GradClipAlgorithmType": "fulmen.utilities.enums",
    "PossibleUserWarning": "fulmen.utilities.exceptions",
    "grad_norm": "fulmen.utilities.grads",
    "load_hparams_from_yaml": "fulmen.utilities.hparams_yaml",
    "measure_flops": "fulmen.utilities.flops",
    "rank_zero_info": "fulmen.utilities.rank_zero",
    "rank_zero_only": "fulmen.utilities.rank_zero",
    "rank_zero_warn": "fulmen.utilities.rank_zero",
}

__all__ = [
    "CombinedLoader",
    "GradClipAlgorithmType",
    "PossibleUserWarning",
    "grad_norm",
    "load_hparams_from_yaml",
    "measure_flops",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
]

if TYPE_CHECKING:
    from fulmen.utilities.combined_loader import CombinedLoader
    from fulmen.utilities.enums import GradClipAlgorithmType
    from fulmen.utilities.exceptions import PossibleUserWarning
    from fulmen.utilities.flops import measure_flops
    from fulmen.utilities.grads import grad_norm
    from fulmen.utilities.hparams_yaml import load_hparams_from_yaml
    from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn


# Submodules Lightning code reaches by attribute (``L.fabric.utilities.types.LRScheduler``).
_SUBMODULES = ("model_helpers", "types")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"fulmen.utilities.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.utilities' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
