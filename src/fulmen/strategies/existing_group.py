"""Joining a torch.distributed process group that fulmen did not create in this process.

Ray Train, or a user's own ``init_process_group``, may have set up the group before the
Trainer or Lite starts. fulmen then starts no process and creates no group: it joins the one
there when the flags describe the same job (``devices`` × ``num_nodes`` = the group's size, the
environment's rank = the group's rank), and otherwise says what to pass instead. A group that
fulmen created itself (a second Trainer in the same script) is not foreign.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from fulmen.strategies.environments import ClusterEnvironment
from fulmen.utilities.exceptions import MisconfigurationException

_created_here = False


def mark_created() -> None:
    """Called right after fulmen's own ``init_process_group`` in this process."""
    global _created_here
    _created_here = True


def found() -> bool:
    """Whether this process is in a group that something other than fulmen created."""
    return dist.is_available() and dist.is_initialized() and not _created_here


def join(env: ClusterEnvironment, num_nodes: int, num_processes: int) -> None:
    """Take this process's place in the group, or raise saying what to pass instead.

    Runs before the device is chosen: a rank the flags do not account for has no device.
    """
    _check_size(env, num_nodes, num_processes)  # first: flags that disagree number nothing
    _adopt_ranks(env, num_processes)
    _check_rank(env)


def _adopt_ranks(env: ClusterEnvironment, num_processes: int) -> None:
    # An environment that reads ranks from its own variables (Ray, SLURM, torchrun) ignores
    # `set_global_rank`; `_check_rank` compares what it reports with the group.
    rank, size = dist.get_rank(), dist.get_world_size()
    env.set_global_rank(rank)
    env.set_world_size(size)
    if not env.creates_processes_externally:
        # Numbered as fulmen's launchers would have numbered them, so that each picks its device.
        os.environ.setdefault("LOCAL_RANK", str(rank % max(num_processes, 1)))
        os.environ.setdefault("NODE_RANK", str(rank // max(num_processes, 1)))


def _check_size(env: ClusterEnvironment, num_nodes: int, num_processes: int) -> None:
    size = dist.get_world_size()
    # An environment that started the processes knows the job's size; otherwise the flags say it.
    expected = env.world_size() if env.creates_processes_externally else num_nodes * num_processes
    if expected != size:
        devices = size // num_nodes if size % num_nodes == 0 else size
        nodes = num_nodes if size % num_nodes == 0 else 1
        raise MisconfigurationException(
            f"A torch.distributed process group of {size} processes exists already (created outside fulmen: "
            f"by Ray Train or by your own `init_process_group`), but this strategy describes {expected} "
            f"(devices={num_processes} × num_nodes={num_nodes}, {env!r}). fulmen joins an existing group when they "
            f"agree: pass devices={devices} and num_nodes={nodes}. Under Ray Train pass "
            "strategy=RayDDPStrategy() and plugins=[RayLightningEnvironment()] from fulmen.integrations.ray, "
            "which take the job's shape from Ray."
        )


def _check_rank(env: ClusterEnvironment) -> None:
    rank = dist.get_rank()
    if env.global_rank() != rank:
        raise MisconfigurationException(
            f"This process is rank {rank} of the existing process group, but its cluster environment "
            f"({env!r}) says rank {env.global_rank()}. Pass a ClusterEnvironment that reports the group's "
            "ranks (under Ray Train: RayLightningEnvironment from fulmen.integrations.ray), or set the "
            "environment's variables (RANK, LOCAL_RANK, NODE_RANK) to match the group."
        )
