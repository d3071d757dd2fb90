"""Distributed data parallel over torch.distributed: one process per device, gradients all-reduced.

``start_method="popen"`` (``strategy="ddp"``) re-runs the script per rank; ``"spawn"``
(``strategy="ddp_spawn"``) starts ranks with torch.multiprocessing from inside the script.
Processes started outside (torchrun, srun, Ray) are joined as they are.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fulmen.checkpointing.checkpoint_io import CheckpointIO
from fulmen.strategies import existing_group, group_exit
from fulmen.strategies.accelerators import Accelerator
from fulmen.strategies.environments import ClusterEnvironment, LightningEnvironment
from fulmen.strategies.launchers import MultiprocessingLauncher, SubprocessScriptLauncher
from fulmen.strategies.parallel import ParallelStrategy
from fulmen.strategies.precision import Precision
from fulmen.strategies.wrapped import find_wrapped
from fulmen.utilities import rank_zero
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.seed import reset_seed

#: Seconds a collective waits for a missing rank before every rank fails with a timeout error.
TIMEOUT_ENV = "FULMEN_DIST_TIMEOUT"
DEFAULT_TIMEOUT = timedelta(minutes=30)
_START_METHODS = ("popen", "spawn", "fork", "forkserver")


_checkpoint_groups: dict[int, Any] = {}


def default_timeout() -> timedelta:
    value = os.environ.get(TIMEOUT_ENV)
    return timedelta(seconds=float(value)) if value else DEFAULT_TIMEOUT


class DDPStrategy(ParallelStrategy):
    supports_no_backward_sync = True

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | float | None = None,
        start_method: str = "popen",
        num_nodes: int = 1,
        **ddp_kwargs: Any,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            precision=precision,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
        )
        if start_method not in _START_METHODS:
            raise invalid_argument("start_method", start_method, _START_METHODS)
        if isinstance(timeout, (int, float)):
            timeout = timedelta(seconds=timeout)
        self.parallel_devices = parallel_devices
        self.num_nodes = num_nodes
        self.process_group_backend = process_group_backend
        self.timeout = timeout
        self.start_method = start_method
        self.ddp_kwargs = ddp_kwargs

    @property
    def num_processes(self) -> int:
        return max(len(self._parallel_devices), 1)

    @property
    def root_device(self) -> torch.device:
        if not self._parallel_devices:  # not resolved yet
            return torch.device("cpu")
        return self._parallel_devices[self.local_rank]

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.num_nodes * self.num_processes, "rank": self.global_rank}

    def configure_launcher(self) -> None:
        """Choose who starts the ranks; called once flags are resolved."""
        if self.cluster_environment is None:
            self.cluster_environment = LightningEnvironment()
        if self.cluster_environment.creates_processes_externally or existing_group.found():
            self.launcher = None
            return
        # Known before launching, so that the launching process reports the job's size too.
        self.cluster_environment.set_world_size(self.num_nodes * self.num_processes)
        if self.start_method == "popen":
            self.launcher = SubprocessScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
        else:
            self.launcher = MultiprocessingLauncher(
                self.cluster_environment, self.num_processes, self._setup_spawned_rank, self.start_method
            )

    def _setup_spawned_rank(self, process_index: int) -> None:
        os.environ["LOCAL_RANK"] = str(process_index)
        reset_seed()

    def setup_environment(self) -> None:
        self._set_ranks()
        super().setup_environment()
        self._init_process_group()

    def _set_ranks(self) -> None:
        env = self.cluster_environment
        env.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
        env.set_world_size(self.num_nodes * self.num_processes)
        if existing_group.found():  # Ray Train or the user's own init_process_group made it
            existing_group.join(env, self.num_nodes, self.num_processes)
        rank_zero.rank_zero_only.rank = env.global_rank()

    def _init_process_group(self) -> None:
        env = self.cluster_environment
        if existing_group.found():
            group_exit.register(created=False)  # joined in _set_ranks
            return
        if dist.is_initialized():
            if dist.get_world_size() != env.world_size():
                raise RuntimeError(
                    f"A process group of {dist.get_world_size()} processes exists already, but this strategy "
                    f"needs {env.world_size()}. Use the same devices and num_nodes for every Trainer/Lite in a script."
                )
            return
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        backend = self.process_group_backend or ("nccl" if self.root_device.type == "cuda" else "gloo")
        dist.init_process_group(
            backend,
            rank=env.global_rank(),
            world_size=env.world_size(),
            timeout=self.timeout or default_timeout(),
        )
        existing_group.mark_created()
        group_exit.register(created=True)

    def setup_module(self, module: nn.Module) -> nn.Module:
        if self.root_device.type == "cpu" and any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()):
            # torch's DDP refuses it too, but without saying which flag put the layers there.
            raise MisconfigurationException(
                "The model holds SyncBatchNorm layers (from `sync_batchnorm=True` or its own code), which need "
                "GPUs: torch synchronises BatchNorm statistics of CUDA tensors only, and this DDP strategy runs "
                "on the CPU. Leave sync_batchnorm=False (and use nn.BatchNorm) on the CPU, or train with "
                "accelerator='cuda'."
            )
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Any:
        ddp = _find_ddp(module)
        if not enabled or ddp is None:
            yield
            return
        with ddp.no_sync():
            yield

    def barrier(self, name: str | None = None) -> None:
        if dist.is_initialized():
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.root_device.index])
            else:
                dist.barrier()

    def checkpoint_process_group(self) -> Any:
        """A gloo group for background checkpoint writes, so that their collectives never interleave
        with training's; one per process group (created by every rank at the same save)."""
        world = dist.group.WORLD
        group = _checkpoint_groups.get(id(world))
        if group is None:
            group = dist.new_group(backend="gloo", timeout=self.timeout or default_timeout())
            _checkpoint_groups.clear()  # a group of an earlier, destroyed process group is dead
            _checkpoint_groups[id(world)] = group
        return group

    def publish_checkpoint_dir(self, staging: str, filepath: str, group: Any = None) -> None:
        """Once every rank has written its files into ``staging`` (a barrier on ``group``, or on the
        training group when ``None``), rank zero publishes the directory as ``filepath``."""
        if group is None:
            self.barrier("checkpoint_dir")
        else:
            dist.barrier(group=group)
        if self.is_global_zero:
            from fulmen.checkpointing import sharded_dir

            sharded_dir.publish(staging, filepath, sync=getattr(self, "sync_files", True))

    def teardown(self) -> None:
        # The process group outlives one fit: a script that fits, then validates, joins it once.
        # Re-creating it on the same port races with the old store; it goes at exit instead.
        super().teardown()

    def __repr__(self) -> str:
        return (
            f"DDPStrategy(start_method={self.start_method!r}, devices={self.num_processes}, "
            f"num_nodes={self.num_nodes}, precision={self.precision!r})"
        )


def _find_ddp(module: nn.Module) -> DistributedDataParallel | None:
    return find_wrapped(module, DistributedDataParallel)
