"""``is_shared_filesystem``: whether every process of a job sees the same files under a path.

Decides, for instance, whether one rank can write a file that all read. Asked of the strategy it
is given (its broadcast, barrier and collective vote); utilities know no strategy class.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any


def is_shared_filesystem(strategy: Any, path: str | os.PathLike | None = None, timeout: float = 3) -> bool:
    """True when the file rank zero writes under ``path`` (default: the working directory) appears for
    every rank within ``timeout`` seconds. One process, or a remote URL, is shared by definition."""
    path = os.fspath(path) if path is not None else os.getcwd()
    if "://" in path and not path.startswith("file://"):
        return True
    if strategy.world_size == 1:
        return True
    folder = Path(path.removeprefix("file://")).resolve()
    name = strategy.broadcast(f".fulmen_shared_fs_{uuid.uuid4().hex}" if strategy.is_global_zero else None, src=0)
    probe = folder / name
    if strategy.is_global_zero:
        probe.touch()
    strategy.barrier()
    deadline = time.monotonic() + timeout
    found = probe.exists()
    while not found and time.monotonic() < deadline:
        time.sleep(0.1)
        found = probe.exists()
    shared = strategy.reduce_boolean_decision(found, all=True)
    strategy.barrier()
    if strategy.is_global_zero:
        probe.unlink(missing_ok=True)
    return bool(shared)
