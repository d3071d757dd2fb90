"""Dataloaders for the loops: where they come from, how many batches each gives, how to iterate.

Plain functions: the Trainer asks for loaders at the documented points (train after the sanity
check, val at the first validation run, ...) and keeps what they return.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader, SequentialSampler

from fulmen.strategies import has_len, make_resumable, prepare_dataloader, rebuild_dataloader, set_sampler_epoch
from fulmen.utilities.combined_loader import CombinedLoader
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn


def as_loader_list(loaders: Any, name: str) -> list[Any]:
    """A loader, a list/tuple of loaders or a dict of them, as a list (dict order)."""
    if loaders is None:
        return []
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    elif isinstance(loaders, (list, tuple)):
        loaders = list(loaders)
    else:
        loaders = [loaders]
    for loader in loaders:
        if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
            raise invalid_argument(name, loader, "a DataLoader (or any iterable of batches), or a list of them")
    return loaders


def prepare(loader: Any, sampler_kwargs: dict[str, int] | None, use_distributed_sampler: bool) -> Any:
    """Shard a torch DataLoader between processes (and seed its workers); other iterables pass as they are."""
    if isinstance(loader, DataLoader):
        return prepare_dataloader(loader, sampler_kwargs, use_distributed_sampler)
    if isinstance(loader, CombinedLoader):
        prepared = CombinedLoader(loader.iterables, loader.mode)  # a copy: the user's object stays as it was
        prepared.flattened = [prepare(inner, sampler_kwargs, use_distributed_sampler) for inner in loader.flattened]
        return prepared
    return loader


def prepare_train(loader: Any, sampler_kwargs: dict[str, int] | None, use_distributed_sampler: bool) -> Any:
    """``prepare``, then make a DataLoader resumable by sample index (see ``strategies.resumable_sampler``)."""
    prepared = prepare(loader, sampler_kwargs, use_distributed_sampler)
    if isinstance(prepared, DataLoader):
        return make_resumable(prepared, origin=loader.sampler if isinstance(loader, DataLoader) else None)
    return prepared


def without_shuffle(loader: Any) -> Any:
    """``overfit_batches``: the same first batches every epoch."""
    if (
        isinstance(loader, DataLoader)
        and not isinstance(loader.sampler, SequentialSampler)
        and (loader.batch_sampler is None or type(loader.batch_sampler).__name__ == "BatchSampler")
    ):
        rank_zero_warn(
            "You requested to overfit but enabled train dataloader shuffling: `overfit_batches` turns off the "
            "shuffling of this dataloader, so the same batches come every epoch."
        )
        return rebuild_dataloader(loader, sampler=SequentialSampler(loader.dataset))
    return loader


def count_batches(loader: Any, limit: int | float, flag: str) -> int | float:
    """How many batches the loop takes from ``loader`` under ``limit`` (``inf`` when unknown)."""
    length = len(loader) if has_len(loader) else math.inf
    if isinstance(limit, int):
        return min(length, limit)
    if length == math.inf:
        if limit not in (0.0, 1.0):
            raise MisconfigurationException(
                f"`{flag}={limit}` is a fraction, but the dataloader has no length to take it of. "
                f"Pass an int (a number of batches) or 1.0."
            )
        return 0 if limit == 0.0 else math.inf
    batches = int(length * limit)
    if limit > 0 and batches == 0 and length > 0:
        minimum = 1.0 / length
        raise MisconfigurationException(
            f"`{flag}={limit}` of {length} batches is less than one batch. Pass at least `{flag}={minimum:.4g}` "
            "or an int."
        )
    return batches


def iterate(loader: Any, limit: int | float, epoch: int = 0) -> Iterator[tuple[int, Any, bool]]:
    """``(batch_idx, batch, is_last)`` for up to ``limit`` batches.

    With a known length the last batch is known from its index; otherwise one batch is read
    ahead to find out (only then, so that data and model randomness interleave as in a plain loop).
    """
    if isinstance(loader, CombinedLoader):
        for inner in loader.flattened:
            set_sampler_epoch(inner, epoch)
        loader = _batches(loader)
    else:
        set_sampler_epoch(loader, epoch)
    if limit == 0:
        return
    if limit != math.inf:
        last = int(limit) - 1
        for batch_idx, batch in enumerate(itertools.islice(loader, int(limit))):
            yield batch_idx, batch, batch_idx == last
        return
    iterator = iter(loader)
    try:
        upcoming = next(iterator)
    except StopIteration:
        return
    for batch_idx in itertools.count():
        batch = upcoming
        try:
            upcoming = next(iterator)
        except StopIteration:
            yield batch_idx, batch, True
            return
        yield batch_idx, batch, False


def iterate_from(iterator: Iterator[Any], start: int, limit: int | float) -> Iterator[tuple[int, Any, bool]]:
    """``iterate`` for an epoch resumed at batch ``start``: ``iterator`` yields that batch first.

    ``limit`` is the epoch's batch count (finite: a loader resumed by index has a length).
    """
    last = int(limit) - 1
    for batch_idx, batch in zip(range(start, int(limit)), iterator):
        yield batch_idx, batch, batch_idx == last


def _batches(loader: CombinedLoader) -> Iterator[Any]:
    """The batches of a ``CombinedLoader``, without the ``batch_idx``/``dataloader_idx`` it adds."""
    for batch, _, _ in loader:
        yield batch


def train_loader_from(value: Any) -> Any:
    """One training loader from what ``train_dataloader`` returned (several become a ``CombinedLoader``)."""
    if isinstance(value, (Mapping, list, tuple)):
        return CombinedLoader(value, "max_size_cycle")  # Lightning's default for training
    if isinstance(value, CombinedLoader) and value.mode == "sequential":
        raise invalid_argument(
            "train_dataloaders",
            value,
            "a CombinedLoader in mode 'min_size', 'max_size_cycle' or 'max_size' (training "
            "steps see one batch of every loader at once; 'sequential' is for evaluation)",
        )
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise invalid_argument("train_dataloaders", value, "a DataLoader, a list or a dict of DataLoaders")
    return value
