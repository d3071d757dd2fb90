"""Where a process sits in the job: ranks, world size and how to reach rank zero."""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod


class ClusterEnvironment(ABC):
    """Base for every cluster description, including users' own.

    A subclass must say where rank zero listens (``main_address``, ``main_port``); everything
    else has a default, so a minimal subclass that also overrides ``world_size()`` is enough.
    """

    #: Whether the job goes back to the queue after ``requeue_signal`` (see ``requeue``).
    auto_requeue: bool = False

    def __init__(self) -> None:
        self._world_size = 1
        self._global_rank = 0

    @property
    def requeue_signal(self) -> signal.Signals:
        """The signal a scheduler sends ahead of a time limit; training saves a checkpoint on it."""
        return signal.SIGUSR1

    def requeue(self, signum: int) -> bool:
        """Put the job back in the queue after ``signum``, when this environment requeues on it.

        Returns True when the job was requeued (the next run resumes from the checkpoint just
        saved), False when this environment does not requeue or requeueing failed.
        """
        return False

    @property
    def creates_processes_externally(self) -> bool:
        """True when something outside fulmen (torchrun, srun, mpirun) started every process."""
        return False

    @property
    @abstractmethod
    def main_address(self) -> str: ...

    @property
    @abstractmethod
    def main_port(self) -> int: ...

    @staticmethod
    def detect() -> bool:
        """Whether the current process runs under this environment (from its variables)."""
        return False

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        return int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise when the flags disagree with what the cluster allocated."""

    def teardown(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
