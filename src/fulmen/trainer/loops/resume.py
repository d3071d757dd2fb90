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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fulmen.strategies import resumable_sampler, set_sampler_epoch
from fulmen.trainer.loaders import with_epoch_length
from fulmen.trainer.loops import batches as batch_iteration
from fulmen.trainer.rng import restore_rng

if TYPE_CHECKING:
    from fulmen.trainer.run import Run

#: Where inside an epoch a checkpoint was taken (``state.phase``); None: between batches.
PHASE_BATCH_END = "train_batch_end"
PHASE_VALIDATION = "validation"
PHASE_EPOCH_END = "train_epoch_end"


class ResumePoint:
    """Where a restored checkpoint left off, for the resumed epoch to consume once.

    ``trainer.checkpoint_state`` creates it when it restores a checkpoint; the functions below take
    each part when the resumed epoch reaches the point where it applies, and only they do.
    """

    def __init__(
        self,
        rng: dict[str, Any] | None = None,
        epoch_start_rng: dict[str, Any] | None = None,
        loader: list[dict[str, Any] | None] | None = None,
    ) -> None:
        #: The generators at the moment of saving (restored once the resumed epoch has caught up).
        self.rng = rng
        #: The generators when the saved epoch drew its data order.
        self.epoch_start_rng = epoch_start_rng
        #: Each rank's training-loader position (``ResumableSampler.state_dict``).
        self.loader = loader

    def take(self, part: str) -> Any:
        value = getattr(self, part)
        setattr(self, part, None)
        return value


def _take(run: Run, part: str) -> Any:
    point = run.resume_point
    return None if point is None else point.take(part)


def restore_epoch_start_rng(run: Run) -> None:
    """Before the epoch draws its data order: the generators its first run had at that point."""
    states = _take(run, "epoch_start_rng")
    if run.state.batch_idx > 0 and states is not None:
        restore_rng(states)


def restore_resume_rng(run: Run) -> None:
    """Take the generators of the moment the checkpoint was saved (once, after catching up)."""
    states = _take(run, "rng")
    if states is not None:
        restore_rng(states)


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
    loader, states, strategy = run.train_dataloader, _take(run, "loader"), run.strategy
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
    batches = batch_iteration.iterate_from(iterator, skip, rest)
    if rest != limit:  # another number of processes: this epoch has another length
        batches = with_epoch_length(run, batches, rest)
    return batches, rest


def _iterator_started_earlier(run: Run, loader: Any, epoch: int) -> bool:
    """Whether, uninterrupted, this epoch reused persistent workers started in an earlier one (no seed drawn)."""
    if not (getattr(loader, "persistent_workers", False) and loader.num_workers > 0):
        return False
    every = run.config.reload_dataloaders_every_n_epochs
    first = (epoch // every) * every if every else 0
    return epoch != first
