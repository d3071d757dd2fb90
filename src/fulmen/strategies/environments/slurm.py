"""SLURM: srun started one task per device; ranks and the main node come from SLURM_* variables."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.utilities.exceptions import MisconfigurationException

log = logging.getLogger("fulmen")

# Interactive allocations (salloc + a shell) set SLURM_* too, but the user starts processes.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive", "zsh", "sh")


class SLURMEnvironment(ClusterEnvironment):
    """Ranks from ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NODEID``; main node = first of the node list.

    ``auto_requeue``: on ``requeue_signal`` the Trainer saves a checkpoint and ``requeue`` puts
    the job back in the queue with ``scontrol requeue``, so that the next run resumes from it.
    """

    def __init__(self, auto_requeue: bool = True, requeue_signal: signal.Signals | None = None) -> None:
        super().__init__()
        self.auto_requeue = auto_requeue
        self._requeue_signal = requeue_signal if requeue_signal is not None else signal.SIGUSR1

    @property
    def requeue_signal(self) -> signal.Signals:
        return self._requeue_signal

    @requeue_signal.setter
    def requeue_signal(self, signum: signal.Signals) -> None:
        self._requeue_signal = signum

    def requeue(self, signum: int) -> bool:
        """``scontrol requeue JOB`` when ``auto_requeue`` is on and ``signum`` is the requeue signal."""
        if not self.auto_requeue or signum != self.requeue_signal:
            return False
        job_id = self.job_id()
        try:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning(f"Requeueing SLURM job {job_id} failed: {err}")
            return False
        if result.returncode != 0:
            log.warning(f"`scontrol requeue {job_id}` failed ({result.returncode}): {result.stderr.strip()}")
            return False
        log.info(f"Requeued SLURM job {job_id}.")
        return True

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in os.environ:
            return os.environ["MASTER_ADDR"]
        nodelist = os.environ.get("SLURM_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        return expand_hostlist(nodelist)[0]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        # Every task derives the same port from the job id, in the unprivileged range.
        return 10_000 + int(self.job_id()[-4:])

    @staticmethod
    def detect() -> bool:
        return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in _INTERACTIVE_JOB_NAMES

    @staticmethod
    def job_id() -> str:
        """The id to requeue: an array task's own id where there is one."""
        array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
        array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
        if array_job and array_task:
            return f"{array_job}_{array_task}"
        return os.environ.get("SLURM_JOB_ID", "0")

    def world_size(self) -> int:
        return int(os.environ["SLURM_NTASKS"])

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return int(os.environ["SLURM_PROCID"])

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return int(os.environ["SLURM_LOCALID"])

    def node_rank(self) -> int:
        return int(os.environ["SLURM_NODEID"])

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
        if per_node is not None and per_node.split("(")[0].isdigit() and int(per_node.split("(")[0]) != num_devices:
            raise MisconfigurationException(
                f"`devices={num_devices}` does not match SLURM's --ntasks-per-node={per_node}. "
                "Request one task per device, or pass the same number to both."
            )
        nnodes = os.environ.get("SLURM_NNODES")
        if nnodes is not None and int(nnodes) != num_nodes:
            raise MisconfigurationException(
                f"`num_nodes={num_nodes}` does not match SLURM's --nodes={nnodes}. Pass the same number to both."
            )


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list: ``"gpu[01-03,07],cpu1"`` -> gpu01 gpu02 gpu03 gpu07 cpu1."""
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain.strip())
            continue
        for part in ranges.split(","):
            if "-" in part:
                low, high = part.split("-")
                hosts.extend(f"{prefix}{number:0{len(low)}d}" for number in range(int(low), int(high) + 1))
            else:
                hosts.append(f"{prefix}{part}")
    return hosts
