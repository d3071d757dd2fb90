"""``PassThroughProfiler``: the profiler the Trainer holds when profiling is off.

It records nothing. The Trainer's loops test for it once per epoch and then call no profiling
code at all, so a run without a profiler pays nothing per step; ``trainer.profiler.profile``
in your own code stays valid and costs one shared no-op context.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any

from fulmen.profilers.profiler import Profiler

_NO_OP = contextlib.nullcontext()


class PassThroughProfiler(Profiler):
    """Records nothing; ``summary()`` is empty."""

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None) -> None:
        super().__init__(dirpath=dirpath, filename=filename)

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return _NO_OP

    def profile_iterable(self, iterable: Iterable[Any], action_name: str) -> Iterable[Any]:  # type: ignore[override]
        return iterable
