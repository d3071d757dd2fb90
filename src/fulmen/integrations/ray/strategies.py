"""Ray's versions of the distributed strategies: the job's shape and device come from Ray Train.

Under ``ray.train.torch.TorchTrainer`` Ray starts the workers, pins each to its device and sets
up the torch.distributed process group before ``train_func`` runs. These strategies are the
plain ones with that taken into account: no launcher, ranks from ``RayLightningEnvironment``,
the device from ``ray.train.torch.get_device()``, the distributed sampler split over Ray's
world size. Everything else (wrapping, sharding, checkpoints) is the base strategy's.
"""

from __future__ import annotations

from typing import Any

import torch

from fulmen.integrations.ray._require import require_ray_train
from fulmen.integrations.ray.environment import RayLightningEnvironment
from fulmen.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from fulmen.strategies.environments import ClusterEnvironment
from fulmen.utilities.exceptions import MisconfigurationException

#: Arguments of the base strategies that Ray decides instead, and where to set them there.
_DECIDED_BY_RAY = {
    "start_method": "Ray starts the workers: ScalingConfig(num_workers=...)",
    "parallel_devices": "Ray gives each worker its device: ScalingConfig(use_gpu=..., resources_per_worker=...)",
    "num_nodes": "Ray places the workers on nodes: ScalingConfig(num_workers=...)",
    "process_group_backend": "Ray creates the process group: TorchTrainer(torch_config=TorchConfig(backend=...))",
    "timeout": "Ray creates the process group: TorchTrainer(torch_config=TorchConfig(timeout_s=...))",
}


def _refuse_ray_decided(cls_name: str, kwargs: dict[str, Any]) -> None:
    for name, where in _DECIDED_BY_RAY.items():
        if kwargs.get(name) is not None:
            raise MisconfigurationException(
                f"`{cls_name}({name}={kwargs[name]!r})` is not accepted: {where}. Leave `{name}` out."
            )


class _RayJob:
    """What the three Ray strategies share: shape and device from Ray, no launcher."""

    cluster_environment: ClusterEnvironment | None

    def _init_ray_environment(self) -> None:
        require_ray_train()
        if self.cluster_environment is None:
            self.cluster_environment = RayLightningEnvironment()

    @property
    def root_device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    @property
    def num_processes(self) -> int:
        """Workers on this node, as Ray placed them."""
        env = self.cluster_environment
        return env.local_world_size() if isinstance(env, RayLightningEnvironment) else 1

    @property
    def num_nodes(self) -> int:
        env = self.cluster_environment
        if not isinstance(env, RayLightningEnvironment):
            return 1
        return max(env.world_size() // max(env.local_world_size(), 1), 1)

    @num_nodes.setter
    def num_nodes(self, value: int) -> None:
        pass  # the resolver passes the num_nodes flag on; Ray's placement decides

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}


class RayDDPStrategy(_RayJob, DDPStrategy):
    """``DDPStrategy`` inside a Ray Train worker: takes the same arguments, less those Ray decides
    (``start_method``, ``parallel_devices``, ``num_nodes``, ``process_group_backend``, ``timeout``)."""

    def __init__(self, **kwargs: Any) -> None:
        _refuse_ray_decided(type(self).__name__, kwargs)
        super().__init__(**kwargs)
        self._init_ray_environment()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r})"


class RayFSDPStrategy(_RayJob, FSDPStrategy):
    """``FSDPStrategy`` inside a Ray Train worker (``sharding_strategy``, ``cpu_offload``,
    ``auto_wrap_policy`` as there); the mesh spans Ray's workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _refuse_ray_decided(type(self).__name__, kwargs)
        super().__init__(*args, **kwargs)
        self._init_ray_environment()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sharding_strategy={self.sharding_strategy!r}, precision={self.precision!r})"


class RayDeepSpeedStrategy(_RayJob, DeepSpeedStrategy):
    """``DeepSpeedStrategy`` inside a Ray Train worker (``stage``, offloading, ``config`` as there);
    DeepSpeed joins the process group Ray created."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _refuse_ray_decided(type(self).__name__, kwargs)
        super().__init__(*args, **kwargs)
        self._init_ray_environment()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stage={self.zero_stage}, precision={self.precision!r})"
