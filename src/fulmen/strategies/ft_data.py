"""Every sample exactly once across failures: the epoch's order is fixed; each committed step takes its next slice.

torchft alone shards data by replica group, so a dead group's shard is skipped. Here the
position in the epoch (``cursor``) is one number that every group holds identically (it travels
with the healed state) and that advances only when a step commits. A step's slice is split
among the groups of that step's quorum; a step that does not commit leaves the cursor where it
was, so the next step takes the same samples again.

An epoch has a fixed number of steps (``N // (groups * batch_size)`` for the configured number of
groups, at least one), so that the loops can count them; the last one takes whatever is left,
which includes the tail that does not fill a step and the slices of steps that did not commit, so
that every group of a quorum always has at least one sample. If that last step does not commit either, the
epoch is not over: its samples come in one more step (which a loop that counts its batches
takes as the first batch of its next epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler


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
    advances by that much if it commits). Batches are loaded in this process with the loader's
    ``collate_fn``: which samples a step needs is known only once its quorum is. ``skip_first``:
    a loop resumed mid-epoch by healing replays that many batches first (they come as None).
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
    ) -> None:
        if dataloader.batch_size is None:
            raise ValueError(
                "Exactly-once sampling needs a DataLoader with a batch_size (it takes a slice of the epoch's "
                "order per step); this one has batch_size=None."
            )
        if len(dataloader.dataset) < num_groups:  # type: ignore[arg-type]
            raise ValueError(
                f"Exactly-once sampling splits each step among up to {num_groups} replica groups, but the dataset "
                f"has {len(dataloader.dataset)} samples: give it at least one per group."  # type: ignore[arg-type]
            )
        self.dataloader = dataloader
        self.dataset = dataloader.dataset
        self.batch_size = dataloader.batch_size
        self.collate_fn = dataloader.collate_fn
        self.shuffle = isinstance(dataloader.sampler, RandomSampler)
        self.position = position
        self.num_groups = num_groups
        self.seed = seed
        self._quorum = quorum
        self._on_assigned = on_assigned
        self._skip_first = skip_first
        #: The sample indices of the batch most recently handed out (for tests and logging).
        self.last_indices: list[int] = []

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def steps_per_epoch(self) -> int:
        return max(self.num_samples // (self.num_groups * self.batch_size), 1)

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
        skip, self._skip_first = self._skip_first, 0
        if 0 < position.steps < self.steps_per_epoch:
            # Healed before the loop, which resumes this epoch at batch `steps` (as from a mid-epoch
            # checkpoint): the batches it replays to get there are done already, so they are None.
            for _ in range(min(skip, position.steps)):
                yield None
        order_epoch, order = -1, []
        while position.cursor < self.num_samples:
            rank, participants = self._quorum()  # may heal: the position can move here
            if position.epoch != order_epoch:
                order_epoch = position.epoch
                order = epoch_order(self.num_samples, self.shuffle, self.seed, order_epoch)
            last = position.steps >= self.steps_per_epoch - 1
            start, stop = step_slice(position.cursor, self.num_samples, self.num_groups * self.batch_size, last)
            first, end = share(start, stop, rank, participants)
            self._on_assigned(stop - start)
            position.steps += 1
            self.last_indices = order[first:end]
            yield self.collate_fn([self.dataset[i] for i in self.last_indices])
        self._next_epoch()

    def _next_epoch(self) -> None:
        position = self.position
        position.epoch, position.cursor, position.steps = position.epoch + 1, 0, 0
