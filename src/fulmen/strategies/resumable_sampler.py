"""The training loader's place in its epoch, by sample index: what a checkpoint records and a resume skips to.

An epoch feeds one global order ``G`` of sample indices: the user's sampler on one process, the
order ``DistributedSampler`` shuffles from ``seed + epoch`` on many. A *layout* spreads what is
left of ``G`` from position ``start`` over ``replicas`` processes as ``DistributedSampler`` does
(padded with its own head to a multiple of ``replicas``, or cut with ``drop_last``; rank ``r``
takes every ``replicas``-th index). A fresh epoch is the layout ``start=0`` over the world size,
which is exactly what the sharded loader yields.

A checkpoint records the epoch, how ``G`` is made, the layout and the batch size; the loop's
``batch_idx`` says how many batches every rank finished. Resumed on as many processes, each rank
skips the indices it finished: no sample is loaded again, so resuming costs the same at 5 % and
at 90 % of an epoch. Resumed on another number of processes, the indices nobody was fed become a
new layout over the new processes: every sample of the epoch's order is fed once across both runs.

The sampler sits inside the loader's ``BatchSampler``: ``loader.sampler`` stays the user's (or
the ``DistributedSampler``), as Lightning shows it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sized
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, Sampler

from fulmen.strategies.dataloaders import DistributedSamplerWrapper, rebuild_dataloader
from fulmen.strategies.sample_seeds import SeededIndex, SeedSamples, epoch_seed
from fulmen.utilities.rank_zero import rank_zero_warn

#: How the epoch's global order is made: ``seeded`` (DistributedSampler's shuffle of
#: ``seed + epoch``), ``sampler`` (the user's sampler, under the generators of the epoch's start)
#: or None (a sampler fulmen cannot redraw: resumable on as many processes only).
ORDER_SEEDED, ORDER_SAMPLER = "seeded", "sampler"


@dataclass
class Layout:
    """The rest of ``G`` from ``start``, spread over ``replicas`` processes since the epoch's batch ``first_batch``.

    ``order`` says how ``G`` is made (``kind`` and, for ``seeded``, ``seed`` and ``shuffle``),
    ``size`` is its length, ``drop_last`` whether the spread cuts instead of padding.
    """

    order: dict[str, Any]
    size: int
    drop_last: bool
    start: int = 0
    replicas: int = 1
    first_batch: int = 0


def shard_length(remaining: int, replicas: int, drop_last: bool) -> int:
    """How many indices each rank gets when ``remaining`` are spread over ``replicas`` (DistributedSampler's rule)."""
    if drop_last:
        return remaining // replicas
    return math.ceil(remaining / replicas)


def spread(order: list[int], layout: Layout, rank: int) -> list[int]:
    """Rank ``rank``'s share of ``order[layout.start:]``."""
    rest = order[layout.start :]
    total = shard_length(len(rest), layout.replicas, layout.drop_last) * layout.replicas
    if total > len(rest):  # pad with the rest's own head, as DistributedSampler pads with the order's
        rest = (rest * math.ceil(total / len(rest)))[:total]
    return rest[rank : total : layout.replicas]


def seeded_order(size: int, seed: int, shuffle: bool, epoch: int) -> list[int]:
    """DistributedSampler's global order for ``epoch``."""
    if not shuffle:
        return list(range(size))
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(size, generator=generator).tolist()


_LAYOUT_FIELDS = tuple(field.name for field in fields(Layout))


class ResumableSampler(Sampler[int]):
    """Yields what ``inner`` yields; after ``resume`` the rest of a checkpointed epoch, without loading what was done.

    ``origin`` is the user's own sampler (the global order on one process); ``seed_samples``
    tags the first index of every batch with the epoch's seed for the workers
    (:mod:`fulmen.strategies.sample_seeds`).
    """

    def __init__(
        self,
        inner: Sampler,
        origin: Sampler | None,
        batch_size: int,
        drop_last_batch: bool,
        seed_samples: bool,
        run_seed: int,
    ) -> None:
        self.inner = inner
        self.batch_size = batch_size
        self.drop_last_batch = drop_last_batch
        self.seed_samples = seed_samples
        self.run_seed = run_seed
        self.epoch = 0
        self.origin = origin
        if type(inner) is DistributedSampler:
            self.order: dict[str, Any] = {"kind": ORDER_SEEDED, "seed": inner.seed, "shuffle": inner.shuffle}
            self.size = len(inner.dataset)
            self.replicas, self.rank, self.drop_last = inner.num_replicas, inner.rank, inner.drop_last
        elif isinstance(inner, DistributedSamplerWrapper):
            self.order = {"kind": ORDER_SAMPLER}
            self.origin = inner.sampler
            self.size = len(inner.sampler)
            self.replicas, self.rank, self.drop_last = inner.num_replicas, inner.rank, inner.drop_last
        elif isinstance(inner, DistributedSampler):  # a subclass: its global order is its own
            self.order = {"kind": None}
            self.size = len(inner) * inner.num_replicas
            self.replicas, self.rank, self.drop_last = inner.num_replicas, inner.rank, inner.drop_last
        else:
            self.order = {"kind": ORDER_SAMPLER}
            self.origin = inner
            self.size = len(inner)
            self.replicas, self.rank, self.drop_last = 1, 0, False
        self.layout = self._fresh_layout()
        self._plan: _Plan | None = None

    def _fresh_layout(self) -> Layout:
        return Layout(dict(self.order), self.size, self.drop_last, 0, self.replicas, 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        self.layout = self._fresh_layout()
        self._plan = None

    def __len__(self) -> int:
        if self._plan is not None:
            return self._plan.skip + self._plan.count
        return len(self.inner)

    def __iter__(self) -> Iterator[int]:
        # A plain function, not a generator: the loader's BatchSampler calls it with its first batch,
        # where the inner sampler would have drawn its order; no fulmen frame runs per index.
        plan, self._plan = self._plan, None
        if plan is None and not self.seed_samples:
            return iter(self.inner)
        indices = list(self.inner) if plan is None else plan.draw()
        if self.seed_samples:  # a plan starts at a batch boundary too
            indices = list(indices)
            seed = epoch_seed(self.run_seed, self.epoch)
            indices[:: self.batch_size] = [SeededIndex(index, seed) for index in indices[:: self.batch_size]]
        return iter(indices)

    # ----------------------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """Where this epoch's order stands, for the checkpoint (the batches done come from the loop)."""
        return {**asdict(self.layout), "epoch": self.epoch, "batch_size": self.batch_size, "run_seed": self.run_seed}

    def resume(self, saved: dict[str, Any], batches_done: int) -> int:
        """Continue the epoch ``saved`` describes, ``batches_done`` batches in; returns the batches this rank has left.

        Call it after ``set_epoch`` and before the loader's iterator is created.
        """
        saved_layout = Layout(**{name: saved[name] for name in _LAYOUT_FIELDS})
        done = (batches_done - saved_layout.first_batch) * saved["batch_size"]  # each rank's positions in the layout
        self.run_seed = saved["run_seed"]
        if saved_layout == self._fresh_layout():
            # The layout this run starts every epoch with: skip the inner sampler's first indices.
            inner = self.inner
            self._plan = _Plan(lambda: list(itertools.islice(iter(inner), done, None)), done, len(inner) - done)
        elif self._can_redraw(saved_layout):
            self.layout = saved_layout
            skip = done
            if saved_layout.replicas != self.replicas:  # what nobody was fed becomes a new layout over this run's
                fed = min(done * saved_layout.replicas, saved_layout.size - saved_layout.start)
                self.layout = replace(
                    saved_layout, start=saved_layout.start + fed, replicas=self.replicas, first_batch=batches_done
                )
                skip = 0
            self._plan = self._layout_plan(skip)
        else:
            rank_zero_warn(
                f"The checkpoint's epoch order ({saved['order']}, {saved['size']} samples over {saved['replicas']} "
                f"process(es)) cannot be redrawn here ({self.order}, {self.size} samples over {self.replicas}): "
                "each rank skips the batches it finished, so samples of this epoch may be fed twice or not at all."
            )
            inner = self.inner
            self._plan = _Plan(lambda: list(itertools.islice(iter(inner), done, None)), done, len(inner) - done)
        count = self._plan.count
        return count // self.batch_size if self.drop_last_batch else math.ceil(count / self.batch_size)

    def draw(self) -> None:
        """Draw the resumed epoch's indices now (on one process the loader asks for them with the first batch)."""
        if self._plan is not None:
            self._plan.draw()

    def _can_redraw(self, layout: Layout) -> bool:
        kind = layout.order.get("kind")
        if kind == ORDER_SEEDED:
            return True
        return kind == ORDER_SAMPLER and self.origin is not None and len(self.origin) == layout.size

    def _layout_plan(self, skip: int) -> _Plan:
        layout, epoch, rank, origin = self.layout, self.epoch, self.rank, self.origin
        order = layout.order

        def draw() -> list[int]:
            if order["kind"] == ORDER_SEEDED:
                full = seeded_order(layout.size, order["seed"], order["shuffle"], epoch)
            else:
                if hasattr(origin, "set_epoch"):
                    origin.set_epoch(epoch)
                full = list(origin)
            return spread(full, layout, rank)[skip:]

        remaining = layout.size - layout.start
        return _Plan(draw, skip, shard_length(remaining, layout.replicas, layout.drop_last) - skip)


class _Plan:
    """The indices one resumed iteration yields, drawn once, when first asked for."""

    def __init__(self, make: Callable[[], list[int]], skip: int, count: int) -> None:
        self.make, self.skip, self.count = make, skip, max(count, 0)
        self.indices: list[int] | None = None

    def draw(self) -> list[int]:
        if self.indices is None:
            self.indices = self.make()
        return self.indices


def make_resumable(loader: DataLoader, origin: Sampler | None = None) -> DataLoader:
    """A copy of ``loader`` whose epochs can be resumed by sample index; ``loader`` itself where that cannot be.

    Only a plain ``DataLoader`` over a map-style dataset with its own ``BatchSampler`` qualifies;
    anything else is resumed by reading the finished batches again. With workers, each sample
    draws from its own seed (:mod:`fulmen.strategies.sample_seeds`).
    """
    if (
        type(loader) is not DataLoader
        or type(loader.batch_sampler) is not BatchSampler
        or isinstance(loader.dataset, IterableDataset)
        or not _has_len(loader.sampler)
    ):
        return loader
    seed_samples = loader.num_workers > 0
    if seed_samples:
        copy = rebuild_dataloader(loader, worker_init_fn=SeedSamples(loader.worker_init_fn))
    else:
        copy = rebuild_dataloader(loader)
    if origin is not None and not _has_len(origin):
        origin = None
    # The copy's BatchSampler is its own: swapping the sampler it draws from leaves ``copy.sampler``
    # (what users and Lightning code look at) as it was.
    copy.batch_sampler.sampler = ResumableSampler(
        copy.sampler,
        origin,
        batch_size=copy.batch_size,
        drop_last_batch=copy.drop_last,
        seed_samples=seed_samples,
        run_seed=torch.initial_seed(),
    )
    return copy


def resumable_sampler(loader: Any) -> ResumableSampler | None:
    """The ``ResumableSampler`` inside ``loader``, if ``make_resumable`` put one there."""
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    return sampler if isinstance(sampler, ResumableSampler) else None


def _has_len(sampler: Any) -> bool:
    if not isinstance(sampler, Sized):
        return False
    try:
        len(sampler)
    except (TypeError, NotImplementedError):
        return False
    return True


__all__ = ["Layout", "ResumableSampler", "make_resumable", "resumable_sampler", "seeded_order", "spread"]
