"""``strategy="ddp_spawn"``: start every rank with torch.multiprocessing and return rank 0's result.

Works from notebooks and from functions defined in the script. ``ProcessContext.join`` already
does what a watcher must: when one process fails it terminates the others and raises with the
failing process's own traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.strategies.launchers.launcher import Launcher
from fulmen.utilities.exceptions import DistributedError

#: Called in each started process before the user's function, to set ranks and the process group.
RankSetup = Callable[[int], None]


class MultiprocessingLauncher(Launcher):
    def __init__(
        self,
        cluster_environment: ClusterEnvironment,
        num_processes: int,
        setup_rank: RankSetup,
        start_method: str = "spawn",
    ) -> None:
        if start_method not in mp.get_all_start_methods():
            raise ValueError(
                f"`start_method={start_method!r}` is not available on this platform. "
                f"Accepted: {mp.get_all_start_methods()}."
            )
        self.cluster_environment = cluster_environment
        self.num_processes = num_processes
        self.setup_rank = setup_rank
        self.start_method = start_method

    @property
    def is_interactive_compatible(self) -> bool:
        return self.start_method == "fork"

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        context = mp.get_context(self.start_method)
        results = context.SimpleQueue()
        process_context = mp.start_processes(
            _run_rank,
            args=(self.setup_rank, function, args, kwargs, results),
            nprocs=self.num_processes,
            start_method=self.start_method,
            join=False,
        )
        result, received = None, False
        try:
            # Drain the queue while waiting: a large result would otherwise fill the pipe and
            # block rank 0 in ``put`` while we block in ``join``.
            while True:
                if not received and not results.empty():
                    result, received = results.get(), True
                if process_context.join(timeout=0.1):
                    break
        except mp.ProcessExitedException as err:
            raise DistributedError(
                f"Rank {err.error_index} (pid {err.pid}) exited with code {err.exit_code} before finishing."
            ) from err
        if not received and not results.empty():
            result = results.get()
        return result


def _run_rank(
    process_index: int,
    setup_rank: RankSetup,
    function: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    results: Any,
) -> None:
    setup_rank(process_index)
    result = function(*args, **kwargs)
    if process_index == 0:
        results.put(result)
