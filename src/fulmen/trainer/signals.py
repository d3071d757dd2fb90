"""Signals that should end training with a checkpoint instead of a lost run.

SIGTERM (a scheduler preempting the job) and SLURM's requeue signal (SIGUSR1 by default,
sent ahead of the time limit with ``#SBATCH --signal=USR1@90``) only set a flag here: the
training loop checks it between batches, where a checkpoint is consistent, saves one and
stops on every rank. A cluster environment that requeues (SLURM with ``auto_requeue``) then
puts the job back in the queue (``ClusterEnvironment.requeue``), and the next run resumes from
that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("fulmen")

HPC_CHECKPOINT_PREFIX = "hpc_ckpt_"


class SignalWatch:
    """Handlers for the given signals while training runs; the previous handlers come back after."""

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.signals = tuple(dict.fromkeys(signals))
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only delivers signals to the main thread
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(signum, frame)


def hpc_checkpoint_path(directory: str) -> str:
    """The next ``hpc_ckpt_N.ckpt`` in ``directory`` (N one past the highest present)."""
    numbers = [int(n) for n in _hpc_numbers(directory)]
    return os.path.join(directory, f"{HPC_CHECKPOINT_PREFIX}{max(numbers, default=0) + 1}.ckpt")


def latest_hpc_checkpoint(directory: str) -> str | None:
    numbers = [int(n) for n in _hpc_numbers(directory)]
    if not numbers:
        return None
    return os.path.join(directory, f"{HPC_CHECKPOINT_PREFIX}{max(numbers)}.ckpt")


def _hpc_numbers(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    names = os.listdir(directory)
    return [
        name[len(HPC_CHECKPOINT_PREFIX) : -len(".ckpt")]
        for name in names
        if name.startswith(HPC_CHECKPOINT_PREFIX)
        and name.endswith(".ckpt")
        and name[len(HPC_CHECKPOINT_PREFIX) : -len(".ckpt")].isdigit()
    ]
