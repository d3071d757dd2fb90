"""``strategy="ddp_spawn"``: start every rank with torch.multiprocessing and return rank 0's result.

Works from notebooks and from functions defined in the script. ``ProcessContext.join`` already
does what a watcher must: when one process fails it terminates the others and raises with the
failing process's own traceback.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

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

    @property
    def pickles_function(self) -> bool:
        return True

    def _launch_description(self) -> str:
        names = {"spawn": "`strategy='ddp_spawn'`", "fork": "`strategy='ddp_fork'` (or 'ddp_notebook')"}
        return f"{names.get(self.start_method, 'A DDP strategy')} with start_method={self.start_method!r}"

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
        except mp.ProcessRaisedException as err:
            errors = _rank_errors(process_context.error_files)
            if len(errors) > 1:  # report every rank's error, the root cause before its echoes
                details = "\n".join(f"--- rank {rank} ---\n{text}" for rank, text in errors)
                message = f"{len(errors)} ranks failed; the first is the likely cause:\n{details}"
                raise DistributedError(message) from err
            raise
        except mp.ProcessExitedException as err:
            how = f"signal {err.signal_name}" if getattr(err, "signal_name", None) else f"code {err.exit_code}"
            raise DistributedError(
                f"Rank {err.error_index} exited with {how} before finishing; the other ranks were stopped."
            ) from err
        if not received and not results.empty():
            result = results.get()
        # Our own child wrote these bytes a moment ago: trusted, so a full unpickle.
        return torch.load(io.BytesIO(result), weights_only=False) if result is not None else None


def _run_rank(
    process_index: int,
    setup_rank: RankSetup,
    function: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    results: Any,
) -> None:
    setup_rank(process_index)
    _unshare_tensors((args, kwargs))
    result = function(*args, **kwargs)
    if process_index == 0:
        # As bytes: tensors sent through the queue as shared memory would need this process
        # to stay alive until the main process has read them.
        buffer = io.BytesIO()
        torch.save(result, buffer)
        results.put(buffer.getvalue())  # written to the pipe when put returns
    # Leave without interpreter finalisation: destroying the communication library's threads
    # at shutdown can abort a rank that finished its work (std::terminate, seen with gloo).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_ECHO_MARKERS = ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "Timed out")


def _rank_errors(error_files: list[str]) -> list[tuple[int, str]]:
    """(rank, traceback) of every rank that raised, the errors that are not a peer's echo first."""
    errors = []
    for rank, path in enumerate(error_files):
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as f:
                errors.append((rank, str(pickle.load(f))))  # written by torch in our own child
    return sorted(errors, key=lambda item: any(marker in item[1] for marker in _ECHO_MARKERS))


def _unshare_tensors(obj: Any) -> None:
    """Spawning moves CPU tensors into shared memory; each rank needs its own copy of a model.

    Without it every rank would update the same parameters of a module passed as an argument.
    """
    if isinstance(obj, nn.Module):
        for tensor in [*obj.parameters(), *obj.buffers()]:
            if tensor.is_shared():
                tensor.data = tensor.data.clone()
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _unshare_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            _unshare_tensors(item)
