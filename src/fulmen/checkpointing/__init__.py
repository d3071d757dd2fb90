"""Checkpoint I/O: every byte of a checkpoint is written and read here.

Its modules, each with one job:

| module | job |
| --- | --- |
| ``schema`` | the checkpoint dict, documented once, and its version |
| ``migration`` | older layouts brought to the current schema |
| ``remote`` | local paths and fsspec URLs (``s3://``, ``gs://``, ...): existence, folders, deletion |
| ``atomic`` | writing so that a checkpoint is the old one or the new one, never torn |
| ``safe_reading`` | loading without running code from the file (weights-only unpickler, allowlist) |
| ``restricted_unpickler`` | exact record types, nothing else, for the index pickles of sharded formats |
| ``confinement`` | every file a checkpoint directory names stays inside it |
| ``sharded_dir`` | a sharded checkpoint directory written by every rank and published whole |
| ``dcp_format`` | torch's distributed checkpoint (FSDP, model parallel) inside such a directory |
| ``zero_format`` | DeepSpeed ZeRO's files: checked, read, merged |
| ``consolidation`` | a sharded directory as one ordinary checkpoint file |
| ``async_writer`` | saves in the background: the loop waits for a copy in memory, not for the disk |
| ``rebuild`` | ``load_from_checkpoint``: an object rebuilt from its saved hyperparameters and state |

It stands on torch, the standard library, fsspec and ``fulmen.utilities`` only; strategies,
front ends and callbacks call it. Engine calls (DeepSpeed's ``save_checkpoint``, FSDP's state
dict gathering) stay in their strategy: they need its objects. The public names below load on
first use, so ``import fulmen`` imports none of this.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CheckpointNotFoundError": "fulmen.checkpointing.remote",
    "SCHEMA_VERSION": "fulmen.checkpointing.schema",
    "add_safe_globals": "fulmen.checkpointing.safe_reading",
    "atomic_save": "fulmen.checkpointing.atomic",
    "consolidate_checkpoint": "fulmen.checkpointing.consolidation",
    "get_safe_globals": "fulmen.checkpointing.safe_reading",
    "safe_load": "fulmen.checkpointing.safe_reading",
}

__all__ = [
    "CheckpointNotFoundError",
    "SCHEMA_VERSION",
    "add_safe_globals",
    "atomic_save",
    "consolidate_checkpoint",
    "get_safe_globals",
    "safe_load",
]

if TYPE_CHECKING:
    from fulmen.checkpointing.atomic import atomic_save
    from fulmen.checkpointing.consolidation import consolidate_checkpoint
    from fulmen.checkpointing.remote import CheckpointNotFoundError
    from fulmen.checkpointing.safe_reading import add_safe_globals, get_safe_globals, safe_load
    from fulmen.checkpointing.schema import SCHEMA_VERSION


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.checkpointing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
