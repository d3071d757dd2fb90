"""IBM Spectrum LSF (jsrun): ranks from JSM_NAMESPACE_*, rank zero's host from the rank file."""

from __future__ import annotations

import os

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.utilities.exceptions import MisconfigurationException


class LSFEnvironment(ClusterEnvironment):
    def __init__(self) -> None:
        super().__init__()
        self._hosts = _read_hosts()
        self._node_rank: int | None = None

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self._hosts[0]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        # Derived from the job id so that every rank computes the same port without talking.
        return 10_000 + int(os.environ["LSB_JOBID"][-4:])

    @staticmethod
    def detect() -> bool:
        names = ("LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE")
        return all(name in os.environ for name in names)

    def world_size(self) -> int:
        return int(os.environ["JSM_NAMESPACE_SIZE"])

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return int(os.environ["JSM_NAMESPACE_RANK"])

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return int(os.environ["JSM_NAMESPACE_LOCAL_RANK"])

    def node_rank(self) -> int:
        unique = list(dict.fromkeys(self._hosts))
        import socket

        name = socket.gethostname()
        return unique.index(name) if name in unique else 0


def _read_hosts() -> list[str]:
    path = os.environ.get("LSB_DJOB_RANKFILE")
    if not path:
        return ["127.0.0.1"]
    try:
        with open(path) as f:
            hosts = [line.strip() for line in f if line.strip()]
    except OSError as err:
        raise MisconfigurationException(f"LSB_DJOB_RANKFILE={path!r} cannot be read: {err}") from err
    # The first line is the launch node, which runs no rank.
    return hosts[1:] or hosts
