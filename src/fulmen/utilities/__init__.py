"""Small helpers with no knowledge of the rest of fulmen (torch and the stdlib only).

The names below are loaded on first use (PEP 562): fulmen's own modules import
``fulmen.utilities.<module>`` all the time, and that must not pull in every helper.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AttributeDict": "fulmen.utilities.parsing",
    "CombinedLoader": "fulmen.utilities.combined_loader",
    "GradClipAlgorithmType": "fulmen.utilities.enums",
    "PossibleUserWarning": "fulmen.utilities.exceptions",
    "SpikeDetection": "fulmen.utilities.spike",
    "Throughput": "fulmen.utilities.throughput",
    "ThroughputMonitor": "fulmen.utilities.throughput",
    "apply_to_collection": "fulmen.utilities.apply_func",
    "disable_possible_user_warnings": "fulmen.utilities.warning_filters",
    "extract_batch_size": "fulmen.utilities.data",
    "find_shared_parameters": "fulmen.utilities.parameter_tying",
    "garbage_collection_cuda": "fulmen.utilities.memory",
    "grad_norm": "fulmen.utilities.grads",
    "is_shared_filesystem": "fulmen.utilities.distributed",
    "load_hparams_from_tags_csv": "fulmen.utilities.hparams_csv",
    "load_hparams_from_yaml": "fulmen.utilities.hparams_yaml",
    "measure_flops": "fulmen.utilities.flops",
    "move_data_to_device": "fulmen.utilities.apply_func",
    "rank_zero_debug": "fulmen.utilities.rank_zero",
    "rank_zero_deprecation": "fulmen.utilities.rank_zero",
    "rank_zero_info": "fulmen.utilities.rank_zero",
    "rank_zero_only": "fulmen.utilities.rank_zero",
    "rank_zero_warn": "fulmen.utilities.rank_zero",
    "save_hparams_to_tags_csv": "fulmen.utilities.hparams_csv",
    "set_shared_parameters": "fulmen.utilities.parameter_tying",
    "suggested_max_num_workers": "fulmen.utilities.data",
}

__all__ = [
    "AttributeDict",
    "CombinedLoader",
    "GradClipAlgorithmType",
    "PossibleUserWarning",
    "SpikeDetection",
    "Throughput",
    "ThroughputMonitor",
    "apply_to_collection",
    "disable_possible_user_warnings",
    "extract_batch_size",
    "find_shared_parameters",
    "garbage_collection_cuda",
    "grad_norm",
    "is_shared_filesystem",
    "load_hparams_from_tags_csv",
    "load_hparams_from_yaml",
    "measure_flops",
    "move_data_to_device",
    "rank_zero_debug",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "save_hparams_to_tags_csv",
    "set_shared_parameters",
    "suggested_max_num_workers",
]

if TYPE_CHECKING:
    from fulmen.utilities.apply_func import apply_to_collection, move_data_to_device
    from fulmen.utilities.combined_loader import CombinedLoader
    from fulmen.utilities.data import extract_batch_size, suggested_max_num_workers
    from fulmen.utilities.distributed import is_shared_filesystem
    from fulmen.utilities.enums import GradClipAlgorithmType
    from fulmen.utilities.exceptions import PossibleUserWarning
    from fulmen.utilities.flops import measure_flops
    from fulmen.utilities.grads import grad_norm
    from fulmen.utilities.hparams_csv import load_hparams_from_tags_csv, save_hparams_to_tags_csv
    from fulmen.utilities.hparams_yaml import load_hparams_from_yaml
    from fulmen.utilities.memory import garbage_collection_cuda
    from fulmen.utilities.parameter_tying import find_shared_parameters, set_shared_parameters
    from fulmen.utilities.parsing import AttributeDict
    from fulmen.utilities.rank_zero import (
        rank_zero_debug,
        rank_zero_deprecation,
        rank_zero_info,
        rank_zero_only,
        rank_zero_warn,
    )
    from fulmen.utilities.spike import SpikeDetection
    from fulmen.utilities.throughput import Throughput, ThroughputMonitor
    from fulmen.utilities.warning_filters import disable_possible_user_warnings


# Submodules Lightning code reaches by attribute (``L.fabric.utilities.types.LRScheduler``).
_SUBMODULES = ("data", "imports", "memory", "model_helpers", "parameter_tying", "spike", "throughput", "types")


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
