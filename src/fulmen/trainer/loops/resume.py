"""Continuing an epoch from a mid-epoch checkpoint, and the signal that ends fit with one.

A checkpoint records how many batches of the epoch are done (``state.batch_idx``) and where
inside the last one it was taken (``state.phase``). The resumed epoch redraws its data order
from the generators it had at its start, discards the finished batches (so dataloader workers
and datasets draw exactly as before), then takes the generators of the moment of saving and
finishes what that moment still had pending.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fulmen.trainer.rng import restore_rng
from fulmen.trainer.signals import hpc_checkpoint_path
from fulmen.utilities.rank_zero import rank_zero_info

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


def signal_received(run: Run, distributed: bool) -> bool:
    received = run.signals.received is not None
    if distributed:  # every rank stops at the same batch
        received = run.strategy.reduce_boolean_decision(received, all=False)
    return received


def save_and_stop_on_signal(run: Run) -> None:
    """Checkpoint at this batch boundary, requeue the job when the cluster does so, and end fit on every rank."""
    trainer, strategy = run.trainer, run.strategy
    # Any rank may be the one that got it (srun signals all, a kill one): take the first seen.
    received = strategy.all_gather_object(run.signals.received)
    signum = next(s for s in received if s is not None)
    run.received_signal = signum
    path = strategy.broadcast(hpc_checkpoint_path(trainer.default_root_dir))
    trainer.save_checkpoint(path)
    rank_zero_info(f"Signal {signal.Signals(signum).name} received: saved {path} and stopping.")
    if strategy.is_global_zero and strategy.cluster_environment is not None:
        strategy.cluster_environment.requeue(signum)
    trainer.should_stop = True
    run.stop_now = True
