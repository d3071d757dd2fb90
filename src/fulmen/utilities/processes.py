"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import os
import signal


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies, even by SIGKILL (Linux only; elsewhere nothing).

    Call it first thing in the child. If the parent died before the request took effect, exit now.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_dies_with(training_pid: int) -> None:
    """For a DataLoader worker: die with the training process when that process started it (fork, spawn).

    A forkserver's worker is the forkserver's child (it ends with it); nothing to do there.
    """
    if os.getppid() == training_pid:
        die_with_parent(training_pid)
