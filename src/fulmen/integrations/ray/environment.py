"""``RayLightningEnvironment``: ranks and world size as Ray Train assigned them."""

from __future__ import annotations

import os

from fulmen.integrations.ray._require import train_context
from fulmen.strategies.environments import ClusterEnvironment


class RayLightningEnvironment(ClusterEnvironment):
    """The cluster as Ray Train set it up: Ray started every worker and their process group.

    Ranks, node rank and world size come from ``ray.train.get_context()``; rank zero's address
    from the ``MASTER_ADDR``/``MASTER_PORT`` that Ray's torch backend exported. fulmen starts no
    process under it and sets no rank.
    """

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        port = os.environ.get("MASTER_PORT")
        if port is None:
            raise RuntimeError(
                "MASTER_PORT is not set: Ray Train's torch backend exports it on its workers. Run this inside the "
                "training function of `ray.train.torch.TorchTrainer`."
            )
        return int(port)

    @staticmethod
    def detect() -> bool:
        """Whether this process is a Ray Train worker (false, without importing Ray, when it is not loaded)."""
        import sys

        if "ray.train" not in sys.modules:
            return False
        try:
            train_context()
        except RuntimeError:
            return False
        return True

    def world_size(self) -> int:
        return train_context().get_world_size()

    def set_world_size(self, size: int) -> None:
        pass  # Ray decides

    def global_rank(self) -> int:
        return train_context().get_world_rank()

    def set_global_rank(self, rank: int) -> None:
        pass  # Ray decides

    def local_rank(self) -> int:
        return train_context().get_local_rank()

    def local_world_size(self) -> int:
        """How many of the job's workers run on this node."""
        return train_context().get_local_world_size()

    def node_rank(self) -> int:
        return train_context().get_node_rank()
