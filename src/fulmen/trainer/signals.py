"""Signals that should end training with a checkpoint instead of a lost run.

SIGTERM (a scheduler preempting the job) and SLURM's requeue signal (SIGUSR1 by default,
sent ahead of the time limit with ``#SBATCH --signal=USR1@90``) only set a flag here: the
training loop checks it between batches, where a checkpoint is consistent, saves one and
stops on every rank. A cluster environment that requeues (SLURM with ``auto_requeue``) then
puts the job back in the queue (``ClusterEnvironment.requeue``), and the next run resumes from
that checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from fulmen.utilities.exceptions import CheckpointError, MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.run import Run

log = logging.getLogger("fulmen")

HPC_CHECKPOINT_PREFIX = "hpc_ckpt_"


class SignalWatch:
    """Handlers for the given signals while training runs; the previous handlers come back after."""

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.signals = tuple(dict.fromkeys(signals))
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only delivers signals to the main thread
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(signum, frame)


@contextlib.contextmanager
def watch_signals(run: Run) -> Iterator[SignalWatch]:
    """While fit trains: SIGTERM, and the cluster's requeue signal (SLURM: SIGUSR1 unless set),
    end it with a checkpoint. This module is the one writer of the run's ``signals``,
    ``received_signal`` and ``stop_now``."""
    environment = run.strategy.cluster_environment
    requeue = environment.requeue_signal if environment is not None else signal.SIGUSR1
    with SignalWatch((signal.SIGTERM, requeue)) as watch:
        run.signals = watch
        try:
            yield watch
        finally:
            run.signals = None


def hpc_checkpoint_path(directory: str) -> str:
    """The next ``hpc_ckpt_N.ckpt`` in ``directory`` (N one past the highest present)."""
    numbers = [int(n) for n in _hpc_numbers(directory)]
    return os.path.join(directory, f"{HPC_CHECKPOINT_PREFIX}{max(numbers, default=0) + 1}.ckpt")


def latest_hpc_checkpoint(directory: str) -> str | None:
    numbers = [int(n) for n in _hpc_numbers(directory)]
    if not numbers:
        return None
    return os.path.join(directory, f"{HPC_CHECKPOINT_PREFIX}{max(numbers)}.ckpt")


def _hpc_numbers(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    names = os.listdir(directory)
    return [
        name[len(HPC_CHECKPOINT_PREFIX) : -len(".ckpt")]
        for name in names
        if name.startswith(HPC_CHECKPOINT_PREFIX)
        and name.endswith(".ckpt")
        and name[len(HPC_CHECKPOINT_PREFIX) : -len(".ckpt")].isdigit()
    ]


#: About how often (seconds of training) the processes of a run ask each other whether one got a
#: signal; ``FULMEN_SIGNAL_CHECK_SECONDS=0`` asks after every batch.
SIGNAL_CHECK_SECONDS = 1.0
_MAX_CHECK_INTERVAL = 10_000


def _check_seconds() -> float:
    value = os.environ.get("FULMEN_SIGNAL_CHECK_SECONDS")
    if value is None:
        return SIGNAL_CHECK_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise MisconfigurationException(
            f"`FULMEN_SIGNAL_CHECK_SECONDS={value!r}` is not valid. Accepted: a number of seconds >= 0 "
            "(0 checks for signals after every batch)."
        )
    return seconds


class SignalPoll:
    """When the processes of a run agree on whether one of them got a signal, without a collective per batch.

    A signal may reach one rank only (a scheduler's kill) or all of them at slightly different
    batches (srun), yet every rank must checkpoint and stop after the same batch. The ranks ask
    each other at batch counts they all know: the epoch's first batch, then every ``countdown``
    batches. That one all-reduce also carries the slowest rank's seconds per batch, from which
    every rank computes the same next interval (about ``SIGNAL_CHECK_SECONDS`` of training): a
    signal is acted on within about a second plus a batch, and batches in between only count down.
    """

    def __init__(self, run: Run) -> None:
        self.watch, self.strategy = run.signals, run.strategy
        self.every = _check_seconds()
        #: Batches until the next check; the loop counts it down.
        self.countdown = 1
        self._interval = 1
        self._since = time.monotonic()

    def check(self) -> bool:
        """Every rank calls it at the same batch: whether any rank got a signal."""
        now = time.monotonic()
        seconds_per_batch = (now - self._since) / self._interval
        received = 1.0 if self.watch.received is not None else 0.0
        flags = torch.tensor([received, seconds_per_batch], dtype=torch.float32, device=self.strategy.root_device)
        received, slowest = self.strategy.all_reduce(flags, reduce_op="max").tolist()
        interval = int(self.every / slowest) if slowest > 0 else _MAX_CHECK_INTERVAL
        self._interval = self.countdown = min(max(interval, 1), _MAX_CHECK_INTERVAL)
        self._since = now
        return received > 0


def save_and_stop_on_signal(run: Run) -> None:
    """Checkpoint at this batch boundary, requeue the job when the cluster does so, and end fit on every rank."""
    trainer, strategy = run.trainer, run.strategy
    # Any rank may be the one that got it (srun signals all, a kill one): take the first seen.
    received = strategy.all_gather_object(run.signals.received)
    signum = next(s for s in received if s is not None)
    run.received_signal = signum
    path = strategy.broadcast(hpc_checkpoint_path(trainer.default_root_dir))
    try:  # a pending asynchronous save is published first; its failure must not cost this checkpoint
        strategy.wait_for_checkpoint_saves()
    except CheckpointError as err:
        rank_zero_warn(str(err))
    trainer.save_checkpoint(path)
    rank_zero_info(f"Signal {signal.Signals(signum).name} received: saved {path} and stopping.")
    if strategy.is_global_zero and strategy.cluster_environment is not None:
        strategy.cluster_environment.requeue(signum)
    trainer.should_stop = True
    run.stop_now = True
