"""Continuing an epoch from a mid-epoch checkpoint, and the signal that ends fit with one.

A checkpoint records how many batches of the epoch are done (``state.batch_idx``), where inside
the last one it was taken (``state.phase``) and the training loader's place in its epoch order
(``ResumableSampler.state_dict``, one per rank). The resumed epoch redraws its data order from
the generators it had at its start, skips the finished samples by index (none is loaded again;
on another number of processes the unfed rest is spread over the new ones), then takes the
generators of the moment of saving and finishes what that moment still had pending.

A loader that cannot skip by index (an iterable dataset, a custom batch sampler, a DataLoader
subclass, a ``CombinedLoader``) reads the finished batches again instead, without training on
them, so that its workers and dataset draw exactly as before.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from fulmen.strategies import resumable_sampler, set_sampler_epoch
from fulmen.trainer import data
from fulmen.trainer.rng import restore_rng
from fulmen.trainer.signals import hpc_checkpoint_path
from fulmen.utilities.exceptions import CheckpointError, MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.run import Run

#: Where inside an epoch a checkpoint was taken (``state.phase``); None: between batches.
PHASE_BATCH_END = "train_batch_end"
PHASE_VALIDATION = "validation"
PHASE_EPOCH_END = "train_epoch_end"


def restore_epoch_start_rng(run: Run) -> None:
    """Before the epoch draws its data order: the generators its first run had at that point."""
    if run.state.batch_idx > 0 and run.resume_epoch_start_rng is not None:
        restore_rng(run.resume_epoch_start_rng)
    run.resume_epoch_start_rng = None


def restore_resume_rng(run: Run) -> None:
    """Take the generators of the moment the checkpoint was saved (once, after catching up)."""
    if run.resume_rng is not None:
        restore_rng(run.resume_rng)
        run.resume_rng = None


def catch_up(
    run: Run,
    batches: Iterator[tuple[int, Any, bool]],
    limit: int | float,
    finish_pending: Callable[[int, bool], None],
) -> tuple[Iterator[tuple[int, Any, bool]], bool]:
    """Skip what a resumed epoch already did; returns the batches left and whether the epoch is done.

    Called once the epoch has started (``on_train_epoch_start`` ran, the data order is drawn)
    when the checkpoint was taken inside it.

    ``finish_pending(batch_idx, is_last)`` completes a batch whose checkpoint was taken in
    ``on_train_batch_end`` or during the validation it triggered.
    """
    skip, phase = run.state.batch_idx, run.state.phase
    if phase == PHASE_EPOCH_END:
        # Taken in on_train_epoch_end: only the epoch's tail is left.
        restore_resume_rng(run)
        return iter(()), skip >= limit
    if skip == 0:
        return batches, False
    resumed = _fast_forward(run, skip, limit)
    if resumed is not None:
        batches, limit = resumed
    else:
        for _ in range(skip):  # replay the finished batches' data draws, without training on them
            if next(batches, None) is None:
                break
        restore_resume_rng(run)
    if phase is None:
        return batches, False
    last = skip - 1
    is_last = limit != math.inf and last == int(limit) - 1
    finish_pending(last, is_last)
    return batches, is_last


def _fast_forward(run: Run, skip: int, limit: int | float) -> tuple[Iterator[tuple[int, Any, bool]], int] | None:
    """The rest of the epoch from batch ``skip``, by sample index; None when the loader or checkpoint cannot say.

    The data order is drawn where the uninterrupted epoch drew it (after the loader's iterator
    drew its workers' base seed, unless persistent workers were started in an earlier epoch),
    then the generators of the moment of saving come back, before any remaining batch is loaded.
    """
    loader, states, strategy = run.train_dataloader, run.resume_loader, run.strategy
    run.resume_loader = None
    sampler = resumable_sampler(loader)
    if sampler is None or not states:
        return None
    saved = states[strategy.global_rank] if len(states) == strategy.world_size else states[0]
    epoch = run.state.current_epoch
    if saved is None or saved["epoch"] != epoch:
        return None
    set_sampler_epoch(loader, epoch)
    whole_epoch = limit >= len(loader)  # no limit_train_batches cutting this run's epochs short
    left = sampler.resume(saved, skip)
    rest = skip + left if whole_epoch else min(limit, skip + left)
    if _iterator_started_earlier(run, loader, epoch):
        sampler.draw()
        iterator = iter(loader)
    else:
        iterator = iter(loader)
        sampler.draw()  # on one process: workers (if any) have drawn it while prefetching
    restore_resume_rng(run)
    batches = data.iterate_from(iterator, skip, rest)
    if rest != limit:  # another number of processes: this epoch has another length
        batches = _with_epoch_length(run, batches, rest)
    return batches, rest


def _iterator_started_earlier(run: Run, loader: Any, epoch: int) -> bool:
    """Whether, uninterrupted, this epoch reused persistent workers started in an earlier one (no seed drawn)."""
    if not (getattr(loader, "persistent_workers", False) and loader.num_workers > 0):
        return False
    every = run.config.reload_dataloaders_every_n_epochs
    first = (epoch // every) * every if every else 0
    return epoch != first


def _with_epoch_length(run: Run, batches: Iterator[Any], length: int) -> Iterator[Any]:
    """``trainer.num_training_batches`` is the resumed epoch's length while it runs, the loader's after."""
    full, run.num_training_batches = run.num_training_batches, length
    try:
        yield from batches
    finally:
        run.num_training_batches = full


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
