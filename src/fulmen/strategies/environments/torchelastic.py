"""torchrun / TorchElastic: every rank was started by torchrun, which exported the variables."""

from __future__ import annotations

import os

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.utilities.exceptions import MisconfigurationException

_REQUIRED = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class TorchElasticEnvironment(ClusterEnvironment):
    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        return int(os.environ["MASTER_PORT"])

    @staticmethod
    def detect() -> bool:
        return all(name in os.environ for name in _REQUIRED)

    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def set_world_size(self, size: int) -> None:
        pass  # torchrun decides

    def global_rank(self) -> int:
        return int(os.environ["RANK"])

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return int(os.environ["LOCAL_RANK"])

    def node_rank(self) -> int:
        return int(os.environ.get("GROUP_RANK", 0))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", num_devices))
        if local_world != num_devices:
            raise MisconfigurationException(
                f"`devices={num_devices}` does not match torchrun's --nproc-per-node ({local_world}). "
                "Pass the same number to both, or devices='auto'."
            )
        world = int(os.environ.get("WORLD_SIZE", num_devices * num_nodes))
        if world != num_devices * num_nodes:
            raise MisconfigurationException(
                f"`num_nodes={num_nodes}` with `devices={num_devices}` makes {num_devices * num_nodes} processes, "
                f"but torchrun started WORLD_SIZE={world}."
            )
