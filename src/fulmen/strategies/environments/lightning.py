"""The default environment: fulmen starts the processes, unless something else already did.

A process that finds ``LOCAL_RANK`` set was started by another launcher (torchrun without its
elastic variables, mpirun, a scheduler's script, two shells by hand) or by fulmen's own launcher
for a rank other than the first: either way it must not start processes of its own, as in
Lightning. Such a process takes its global rank from ``RANK`` and the job's size from
``WORLD_SIZE`` where they are set, and rank zero's address from ``MASTER_ADDR``/``MASTER_PORT``.
"""

from __future__ import annotations

import os
import socket

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.utilities.exceptions import MisconfigurationException


class LightningEnvironment(ClusterEnvironment):
    """Local ranks started by fulmen's launchers or by hand; rank zero's address from MASTER_ADDR."""

    def __init__(self) -> None:
        super().__init__()
        self._main_port: int | None = None

    @property
    def creates_processes_externally(self) -> bool:
        """True when ``LOCAL_RANK`` is set: this process was started as one rank of a job."""
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self._main_port is None:
            port = os.environ.get("MASTER_PORT")
            self._main_port = int(port) if port else find_free_network_port()
        return self._main_port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        # Children started by fulmen's launchers, and processes started by hand, learn it from WORLD_SIZE.
        return int(os.environ.get("WORLD_SIZE", self._world_size))

    def global_rank(self) -> int:
        # A launcher that numbered the processes itself (RANK) is believed over the flags' arithmetic.
        rank = os.environ.get("RANK") if self.creates_processes_externally else None
        return int(rank) if rank is not None else self._global_rank

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        world = os.environ.get("WORLD_SIZE")
        if world is not None and int(world) != num_devices * num_nodes:
            raise MisconfigurationException(
                f"This process was started as one of WORLD_SIZE={world} processes (LOCAL_RANK is set), but "
                f"`devices={num_devices}` × `num_nodes={num_nodes}` makes {num_devices * num_nodes}. Pass the "
                "number of processes per node as `devices` (or devices='auto'), and the number of nodes as `num_nodes`."
                + _RAY_ADVICE
            )

    def teardown(self) -> None:
        if "WORLD_SIZE" in os.environ:
            del os.environ["WORLD_SIZE"]


#: Inside a Ray Train worker these variables come from Ray: its strategy and environment read them.
_RAY_ADVICE = (
    " Under Ray Train pass strategy=RayDDPStrategy() and plugins=[RayLightningEnvironment()] from "
    "fulmen.integrations.ray, which take the job's shape from Ray."
)


def find_free_network_port() -> int:
    """Ask the OS for a free port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
