"""Multi-rank scripts that fail on purpose: run one, then check that no rank outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import run_python


@dataclass
class FailedRun:
    proc: subprocess.CompletedProcess
    #: Seconds from the start until rank 0 had exited and every other rank was gone.
    elapsed: float
    #: Rank -> pid, as each rank wrote it to ``pid_<rank>`` in the output folder.
    pids: dict[int, int]
    #: Pids still running some seconds after rank 0 exited (killed by the check, so none leaks).
    survivors: list[int]


def run_failing(script: str, out_dir: Path, *args: str, timeout: float, env: dict[str, str]) -> FailedRun:
    start = time.monotonic()
    proc = run_python(script, str(out_dir), *args, timeout=timeout, env=env)
    pids = {int(p.name.split("_")[1]): int(p.read_text()) for p in out_dir.glob("pid_*")}
    survivors = wait_until_gone(list(pids.values()), seconds=5.0)
    elapsed = time.monotonic() - start
    for pid in survivors:  # ours: the script's ranks, by the pids they wrote
        os.kill(pid, signal.SIGKILL)
    return FailedRun(proc, elapsed, pids, survivors)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, waiting for its new parent to reap it) does not."""
    if not Path("/proc/self/stat").exists():  # no /proc: ask the kernel, which counts zombies as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_until_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids of ``pids`` still alive after up to ``seconds``."""
    # A rank killed by the kernel (PR_SET_PDEATHSIG) ends a moment after its parent.
    deadline = time.monotonic() + seconds
    while True:
        living = [pid for pid in pids if alive(pid)]
        if not living or time.monotonic() > deadline:
            return living
        time.sleep(0.05)
