"""The former home of checkpoint I/O, kept so that the documented names import from here as before.

Everything lives in :mod:`fulmen.checkpointing` now (``add_safe_globals``, ``safe_load``,
``atomic_save``, ...); this module only re-exports the names users and Lightning code reach
through ``fulmen.utilities.cloud_io`` (Lightning's ``lightning.fabric.utilities.cloud_io``).
It is the one module of ``fulmen.utilities`` allowed to import that package (see the
import-linter contracts in ``pyproject.toml``).
"""

from __future__ import annotations

from fulmen.checkpointing.atomic import atomic_save, save_link
from fulmen.checkpointing.remote import (
    CheckpointNotFoundError,
    file_exists,
    get_filesystem,
    is_local,
    makedirs,
    remove_file,
)
from fulmen.checkpointing.safe_reading import add_safe_globals, get_safe_globals, safe_load

__all__ = [
    "CheckpointNotFoundError",
    "add_safe_globals",
    "atomic_save",
    "file_exists",
    "get_filesystem",
    "get_safe_globals",
    "is_local",
    "makedirs",
    "remove_file",
    "safe_load",
    "save_link",
]
