"""The default on one machine (or with MASTER_ADDR/NODE_RANK set by hand): fulmen starts the processes."""

from __future__ import annotations

import os
import socket

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment


class LightningEnvironment(ClusterEnvironment):
    """Local ranks started by fulmen's own launchers; rank zero's address from MASTER_ADDR."""

    def __init__(self) -> None:
        super().__init__()
        self._main_port: int | None = None

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
        # Children started by fulmen's launchers learn it from WORLD_SIZE.
        return int(os.environ.get("WORLD_SIZE", self._world_size))

    def teardown(self) -> None:
        if "WORLD_SIZE" in os.environ:
            del os.environ["WORLD_SIZE"]


def find_free_network_port() -> int:
    """Ask the OS for a free port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
