"""Randomness inside ``__getitem__`` in dataloader workers, drawn per sample so that a resumed epoch draws alike.

A worker's generators run on from sample to sample, so what sample ``i`` draws depends on every
sample that worker loaded before it: an epoch resumed without loading those samples again would
draw differently. For the training loader fulmen reseeds python's, numpy's and torch's generators
in the worker before each sample, from the run's seed, the epoch and the sample's index. The
uninterrupted run does the same, so both draw alike, whichever worker, process or world size
loads the sample.

The epoch's seed travels to the worker with the first index of each batch (:class:`SeededIndex`);
:class:`SeedSamples`, the worker's ``worker_init_fn``, makes the worker's copy of the dataset apply
it. The main process is left alone: with ``num_workers=0`` the samples draw from the main
process's generators, which a checkpoint restores.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fulmen.utilities.processes import worker_dies_with

_MASK64 = (1 << 64) - 1


def mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): nearby inputs give unrelated seeds."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state + (value & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def epoch_seed(run_seed: int, epoch: int) -> int:
    return mix(run_seed, epoch)


class SeededIndex(int):
    """A dataset index that carries its epoch's seed to the worker (the first index of each batch)."""

    epoch_seed: int

    def __new__(cls, index: int, epoch_seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.epoch_seed = epoch_seed
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return SeededIndex, (int(self), self.epoch_seed)


def seed_generators(seed: int) -> None:
    """Seed python's, torch's CPU and (when loaded) numpy's global generators in this process."""
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed & 0xFFFFFFFF)


class SeedSamples:
    """``worker_init_fn`` of the training loader: runs the user's, then seeds every sample of the worker's dataset.

    The worker's dataset is its own copy (forked or unpickled), so the instance attribute set
    here never reaches the main process's object. torch's fetcher prefers a dataset's
    ``__getitems__`` when it has one, which is where the seeding goes in.

    The worker also dies with the process it loads for: torch's own watchdog misses a parent
    killed while the worker was still starting (common when a run is killed right after an
    epoch's first batch), and such a worker would outlive the job.
    """

    def __init__(self, user_init: Callable[[int], Any] | None) -> None:
        self.user_init = user_init
        self.parent_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        worker_dies_with(self.parent_pid)
        if self.user_init is not None:
            self.user_init(worker_id)
        info = torch.utils.data.get_worker_info()
        if info is None:
            return
        dataset = info.dataset
        own = getattr(dataset, "__getitems__", None)
        try:
            dataset.__getitems__ = _SeededFetch(dataset, own or None)
        except (AttributeError, TypeError):  # __slots__ or a frozen class: its samples draw as torch seeds them
            pass


class _SeededFetch:
    def __init__(self, dataset: Any, own: Callable[[list[int]], Any] | None) -> None:
        self.dataset = dataset
        self.own = own

    def __call__(self, indices: Sequence[int]) -> Any:
        seed = getattr(indices[0], "epoch_seed", None) if len(indices) else None
        plain = [int(i) for i in indices]
        if self.own is not None:
            # The dataset fetches a batch at once: one seed for the batch, from its first index.
            if seed is not None:
                seed_generators(mix(seed, plain[0]))
            return self.own(plain)
        samples = []
        for index in plain:
            if seed is not None:
                seed_generators(mix(seed, index))
            samples.append(self.dataset[index])
        return samples
