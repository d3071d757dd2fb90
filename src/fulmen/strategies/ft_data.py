"""Every sample exactly once across failures: the epoch's order is fixed; each committed step takes its next slice.

torchft alone shards data by replica group, so a dead group's shard is skipped. Here the
position in the epoch (``cursor``) is one number that every process of every group holds
identically (it travels with the healed state) and that advances only when a step commits. A
step's slice is split among the groups of that step's quorum, and each group's part among the
group's own processes; a step that does not commit leaves the cursor where it was, so the next
step takes the same samples again.

An epoch has a fixed number of steps (``N // (groups * group_size * batch_size)`` for the
configured number of groups, at least one), so that the loops can count them; the last one takes
whatever is left, which includes the tail that does not fill a step and the slices of steps that
did not commit, so that every process of a quorum always has at least one sample. If that last
step does not commit either, the epoch is not over: its samples come in one more step (which a
loop that counts its batches takes as the first batch of its next epoch).

Which samples a step needs is known only once its quorum is. With ``num_workers > 0`` worker
processes load the batches predicted for the coming steps (the same quorum, every step
committing); a step whose assignment differs from the prediction is loaded in this process and
the prediction starts over. The assignment is always the quorum's: a wrong guess costs time only.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from fulmen.utilities.processes import worker_dies_with


@dataclass
class EpochPosition:
    """Where the job stands in its data: the same on every live group."""

    epoch: int = 0
    cursor: int = 0  # samples of this epoch in committed steps
    steps: int = 0  # steps taken in this epoch, committed or not

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor, self.steps = state["epoch"], state["cursor"], state["steps"]


def step_slice(cursor: int, total: int, step_size: int, last_step: bool) -> tuple[int, int]:
    """The samples ``[start, stop)`` of the epoch's order that the next step takes."""
    stop = total if last_step else min(cursor + step_size, total)
    return cursor, stop


def share(start: int, stop: int, rank: int, participants: int) -> tuple[int, int]:
    """Group ``rank``'s contiguous part of ``[start, stop)`` split among ``participants`` (sizes differ by ≤ 1)."""
    if not 0 <= rank < participants:
        raise ValueError(f"rank={rank} is not in 0..{participants - 1}")
    size, extra = divmod(stop - start, participants)
    first = start + rank * size + min(rank, extra)
    return first, first + size + (1 if rank < extra else 0)


def epoch_order(num_samples: int, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The same order on every group: drawn from ``seed + epoch``, never from a group's own generators."""
    if not shuffle:
        return list(range(num_samples))
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


class ExactlyOnceLoader:
    """Batches of a map-style DataLoader's dataset, assigned per step by the quorum (see the module docstring).

    ``quorum()`` opens the step and returns ``(rank, participants)`` of this group in it;
    ``on_assigned(size)`` tells the strategy how many samples the step takes in all (the cursor
    advances by that much if it commits). ``group_rank``/``group_size``: this process's rank among
    its group's processes, and their number (each takes its part of the group's share).
    ``skip_first``: a loop resumed mid-epoch by healing replays that many batches first (they come
    as None).

    With the loader's ``num_workers > 0``, its workers (``collate_fn``, ``pin_memory``,
    ``prefetch_factor``, ...) load the predicted batches; ``prefetched`` and ``loaded_in_process``
    count where the batches came from.

    An epoch's length is its steps only if they all commit: when its last step does not, its
    samples come in one more batch. ``last_of_epoch`` says whether the batch just yielded ends the
    epoch if its step commits; the Trainer reads it instead of counting ``len()`` batches.
    """

    def __init__(
        self,
        dataloader: DataLoader,
        position: EpochPosition,
        num_groups: int,
        quorum: Callable[[], tuple[int, int]],
        on_assigned: Callable[[int], None],
        seed: int = 0,
        skip_first: int = 0,
        group_rank: int = 0,
        group_size: int = 1,
        pending: Callable[[], int] | None = None,
    ) -> None:
        if dataloader.batch_size is None:
            raise ValueError(
                "Exactly-once sampling needs a DataLoader with a batch_size (it takes a slice of the epoch's "
                "order per step); this one has batch_size=None."
            )
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size={group_size!r} must be a positive int (processes per replica group).")
        if isinstance(group_rank, bool) or not isinstance(group_rank, int) or not 0 <= group_rank < group_size:
            raise ValueError(
                f"group_rank={group_rank!r} must be an int in 0..{group_size - 1} (group_size={group_size})."
            )
        num_samples = len(dataloader.dataset)  # type: ignore[arg-type]
        if num_samples < num_groups * group_size:
            raise ValueError(
                f"Exactly-once sampling splits each step among up to {num_groups} replica groups, but the dataset "
                f"has {num_samples} samples: it needs at least one per process, {num_groups} groups x "
                f"{group_size} processes = {num_groups * group_size}."
            )
        self.dataloader = dataloader
        self.dataset = dataloader.dataset
        self.batch_size = dataloader.batch_size
        self.collate_fn = dataloader.collate_fn
        self.shuffle = isinstance(dataloader.sampler, RandomSampler)
        self.position = position
        self.num_groups = num_groups
        self.group_rank = group_rank
        self.group_size = group_size
        self.seed = seed
        self._quorum = quorum
        self._on_assigned = on_assigned
        self._skip_first = skip_first
        self._pending = pending or _nothing_pending
        #: The sample indices of the batch most recently handed out (this process's part; for tests and logging).
        self.last_indices: list[int] = []
        self.last_of_epoch = False
        #: Batches that came from the worker processes, and batches loaded in this process.
        self.prefetched = 0
        self.loaded_in_process = 0

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def step_size(self) -> int:
        """Samples in a step of the configured number of groups (the last step of an epoch takes more)."""
        return self.num_groups * self.group_size * self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return max(self.num_samples // self.step_size, 1)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def set_epoch(self, epoch: int) -> None:
        """The loops' epoch counter; the position (healed from a peer) decides which epoch is served."""

    def __iter__(self) -> Iterator[Any]:
        position = self.position
        if position.cursor >= self.num_samples:  # the loop stopped at the last step's batch, before the end
            self._next_epoch()
        if self._pending():
            raise RuntimeError(
                "This pass over the exactly-once loader starts inside a step that has not been stepped: the last "
                "pass ended while gradients were accumulating. Call optimizer.step() at the last batch of every "
                "pass (the loop ends early when an epoch's last step did not commit and its rest comes in one batch)."
            )
        skip, self._skip_first = self._skip_first, 0
        if 0 < position.steps < self.steps_per_epoch:
            # Healed before the loop, which resumes this epoch at batch `steps` (as from a mid-epoch
            # checkpoint): the batches it replays to get there are done already, so they are None.
            self.last_of_epoch = False
            for _ in range(min(skip, position.steps)):
                yield None
        workers = _Workers(self.dataloader) if self.dataloader.num_workers > 0 else None
        try:
            order_epoch, order = -1, []
            while position.cursor + self._pending() < self.num_samples:
                rank, participants = self._quorum()  # may heal: the position can move here
                if position.epoch != order_epoch:
                    order_epoch = position.epoch
                    order = epoch_order(self.num_samples, self.shuffle, self.seed, order_epoch)
                # An open step's earlier batches (accumulating gradients) took the samples before these.
                cursor, steps = position.cursor + self._pending(), position.steps
                stop, indices = self._assignment(order, cursor, steps, rank, participants)
                self._on_assigned(stop - cursor)
                position.steps += 1
                self.last_indices = indices
                self.last_of_epoch = stop >= self.num_samples
                if workers is None:
                    yield self._load(indices)
                elif workers.expects(indices):
                    self.prefetched += 1
                    yield workers.next()
                elif not workers.started:  # the first step of this pass: predict from it, as a DataLoader would
                    workers.start(self._predictions(order, cursor, steps, rank, participants))
                    self.prefetched += 1
                    yield workers.next()
                else:  # the quorum changed, a step did not commit or healing moved the position
                    workers.close()
                    if stop < self.num_samples:  # the workers load the coming steps while this one loads here
                        workers.start(self._predictions(order, stop, steps + 1, rank, participants))
                    yield self._load(indices)
        finally:  # also when the loop abandons this iterator: no worker outlives it
            if workers is not None:
                workers.close()
        self._next_epoch()

    def _assignment(
        self, order: list[int], cursor: int, steps: int, rank: int, participants: int
    ) -> tuple[int, list[int]]:
        """Where the step's slice ends, and this process's indices of it: its group's share, then its part."""
        last = steps >= self.steps_per_epoch - 1
        start, stop = step_slice(cursor, self.num_samples, self.step_size, last)
        first, end = share(start, stop, rank, participants)
        first, end = share(first, end, self.group_rank, self.group_size)
        return stop, order[first:end]

    def _predictions(
        self, order: list[int], cursor: int, steps: int, rank: int, participants: int
    ) -> Iterator[list[int]]:
        """The indices of the coming steps if nothing changes: the same quorum, every step committing.
        They end with the epoch (``order`` is this epoch's)."""
        while cursor < self.num_samples:
            cursor, indices = self._assignment(order, cursor, steps, rank, participants)
            steps += 1
            yield indices

    def _load(self, indices: list[int]) -> Any:
        """The batch loaded here, as a DataLoader's worker would (``__getitems__`` where the dataset has it)."""
        self.loaded_in_process += 1
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(indices) if getitems else [self.dataset[i] for i in indices]
        return self.collate_fn(samples)

    def _next_epoch(self) -> None:
        if self.position.cursor < self.num_samples:
            return  # the iteration ended inside a step that has not committed yet: the epoch goes on

        position = self.position
        position.epoch, position.cursor, position.steps = position.epoch + 1, 0, 0


class _Workers:
    """A DataLoader with the wrapped one's worker settings over predicted index lists, and those lists in order."""

    def __init__(self, dataloader: DataLoader) -> None:
        self.dataset = dataloader.dataset
        # Batches must arrive in the predicted order (`in_order=True`, the default): each is
        # matched against the step's indices, so the wrapped loader's `in_order=False` is not used.
        self.options = {
            "num_workers": dataloader.num_workers,
            "collate_fn": dataloader.collate_fn,
            "pin_memory": dataloader.pin_memory,
            "prefetch_factor": dataloader.prefetch_factor,
            "worker_init_fn": _DieWithTrainingProcess(os.getpid(), dataloader.worker_init_fn),
            "multiprocessing_context": dataloader.multiprocessing_context,
            "timeout": dataloader.timeout,
            "generator": dataloader.generator,
        }
        #: The index lists handed to the workers and not taken yet, oldest first.
        self.predicted: deque[list[int]] = deque()
        self.started = False
        self._batches: Iterator[Any] | None = None

    def start(self, predictions: Iterator[list[int]]) -> None:
        """Drop what the workers loaded so far and have new ones load ``predictions``."""
        self.close()
        self.started = True
        self._batches = iter(DataLoader(self.dataset, batch_sampler=self._recorded(predictions), **self.options))

    def _recorded(self, predictions: Iterator[list[int]]) -> Iterator[list[int]]:
        for indices in predictions:  # the DataLoader draws these as it hands them to its workers
            self.predicted.append(indices)
            yield indices

    def expects(self, indices: list[int]) -> bool:
        """Whether the workers' next batch is of exactly ``indices``."""
        return self._batches is not None and bool(self.predicted) and self.predicted[0] == indices

    def next(self) -> Any:
        assert self._batches is not None
        batch = next(self._batches)  # draws the next prediction, if any, before returning
        self.predicted.popleft()
        if not self.predicted:  # the predictions are all taken: the workers have nothing left to do
            self.close()
        return batch

    def close(self) -> None:
        """Shut the workers down now rather than whenever the iterator is collected."""
        batches, self._batches = self._batches, None
        self.predicted.clear()
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multiprocessing iterator
        if shutdown is not None:
            shutdown()


class _DieWithTrainingProcess:
    """A worker's init: die with the training process, then the loader's own ``worker_init_fn``.

    A forked worker holds copies of the training process's sockets (the cross-group all-reduce's among
    them). When the training process is killed, its peers would see those connections open until the
    worker noticed (DataLoader workers look every 5 s), and stall that long instead of failing the
    step at once.
    """

    def __init__(self, training_pid: int, user_init: Callable[[int], None] | None) -> None:
        self.training_pid, self.user_init = training_pid, user_init

    def __call__(self, worker_id: int) -> None:
        worker_dies_with(self.training_pid)
        if self.user_init is not None:
            self.user_init(worker_id)


def _nothing_pending() -> int:
    return 0
