"""Dataloaders for many processes: each rank gets its own shard, in the order the user asked for.

The user's DataLoader is rebuilt with a ``DistributedSampler`` that keeps its shuffle,
``drop_last`` and the global seed. A custom sampler is not dropped: its indices are split
between the ranks by ``DistributedSamplerWrapper``.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.seed import seed_workers_requested, worker_init_function

# DataLoader arguments that can be read back from an instance.
_LOADER_ATTRIBUTES = (
    "num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
    "generator", "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order",
)  # fmt: skip


class DistributedSamplerWrapper(DistributedSampler):
    """Splits the indices of any sampler between ranks: rank r takes every world_size-th one."""

    def __init__(self, sampler: Sampler, num_replicas: int, rank: int, drop_last: bool = False) -> None:
        super().__init__(
            _SamplerAsDataset(sampler), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=drop_last
        )
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)
        if not self.drop_last:
            padding = self.total_size - len(indices)
            indices += (indices * (padding // max(len(indices), 1) + 1))[:padding]
        else:
            indices = indices[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


class _SamplerAsDataset:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def global_seed() -> int:
    return int(os.environ.get("FULMEN_GLOBAL_SEED", 0))


def distributed_sampler(dataloader: DataLoader, num_replicas: int, rank: int) -> Sampler:
    """The sampler that gives this rank its shard of what ``dataloader`` would have produced."""
    sampler = dataloader.sampler
    if isinstance(sampler, DistributedSampler):
        return sampler
    drop_last = dataloader.drop_last
    if isinstance(sampler, (RandomSampler, SequentialSampler)):
        shuffle = isinstance(sampler, RandomSampler)
        return DistributedSampler(
            dataloader.dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=global_seed(),
            drop_last=drop_last,
        )
    return DistributedSamplerWrapper(sampler, num_replicas=num_replicas, rank=rank, drop_last=drop_last)


def prepare_dataloader(
    dataloader: DataLoader,
    sampler_kwargs: dict[str, int] | None,
    use_distributed_sampler: bool = True,
) -> DataLoader:
    """Shard ``dataloader`` for this rank and seed its workers when ``seed_everything(workers=True)`` ran.

    Returns the same object when nothing needs to change.
    """
    changes: dict[str, Any] = {}
    if seed_workers_requested() and dataloader.worker_init_fn is None and dataloader.num_workers > 0:
        rank = sampler_kwargs["rank"] if sampler_kwargs else 0
        changes["worker_init_fn"] = functools.partial(worker_init_function, rank=rank)
    shard = (
        sampler_kwargs is not None
        and use_distributed_sampler
        and not isinstance(dataloader.dataset, IterableDataset)
        and not isinstance(dataloader.sampler, DistributedSampler)
    )
    if shard:
        if dataloader.batch_sampler is not None and type(dataloader.batch_sampler) is not BatchSampler:
            raise ValueError(
                f"The dataloader uses a custom batch_sampler ({type(dataloader.batch_sampler).__name__}), which "
                "fulmen cannot split between processes. Pass `use_distributed_sampler=False` and shard it yourself."
            )
        changes["sampler"] = distributed_sampler(dataloader, **sampler_kwargs)
    if not changes:
        return dataloader
    return rebuild_dataloader(dataloader, **changes)


def rebuild_dataloader(dataloader: DataLoader, sampler: Sampler | None = None, **overrides: Any) -> DataLoader:
    """A copy of ``dataloader`` with ``sampler`` (and other arguments) replaced."""
    kwargs: dict[str, Any] = {n: getattr(dataloader, n) for n in _LOADER_ATTRIBUTES if hasattr(dataloader, n)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
    kwargs.update(overrides)
    if dataloader.batch_sampler is None:  # batch_size=None: samples, not batches
        kwargs.update(batch_size=None, sampler=sampler or dataloader.sampler)
    else:
        kwargs.update(
            batch_size=dataloader.batch_size,
            drop_last=dataloader.drop_last,
            sampler=sampler if sampler is not None else dataloader.sampler,
        )
    loader_type = type(dataloader)
    if loader_type is not DataLoader:
        accepted = inspect.signature(loader_type.__init__).parameters
        if not all(name in accepted for name in ("dataset", "sampler")):
            rank_zero_warn(
                f"{loader_type.__name__} cannot be rebuilt with a new sampler; a plain DataLoader replaces it."
            )
            loader_type = DataLoader
    return loader_type(dataloader.dataset, **kwargs)


def has_len(dataloader: Any) -> bool:
    if not isinstance(dataloader, Sized):
        return False
    try:
        return len(dataloader) is not None
    except (TypeError, NotImplementedError):
        return False


def set_sampler_epoch(dataloader: DataLoader, epoch: int) -> None:
    """Give the (batch) sampler its epoch so that a shuffled order changes between epochs."""
    for obj in (getattr(dataloader, "sampler", None), getattr(dataloader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    inner = getattr(getattr(dataloader, "batch_sampler", None), "sampler", None)
    if inner is not None and hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)


__all__ = [
    "DistributedSamplerWrapper",
    "distributed_sampler",
    "has_len",
    "prepare_dataloader",
    "rebuild_dataloader",
    "set_sampler_epoch",
]
