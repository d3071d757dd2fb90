"""Iterating a loader in the loops: ``(batch_idx, batch, is_last)`` under a batch limit.

The sampler gets its epoch first (``set_sampler_epoch``); the last batch is known from the
length where there is one, else by reading one batch ahead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from fulmen.strategies import set_sampler_epoch
from fulmen.utilities.combined_loader import CombinedLoader


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
    if limit != math.inf and _ends_its_own_epochs(loader, limit):
        for batch_idx, batch in enumerate(loader):
            yield batch_idx, batch, loader.last_of_epoch
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


def _ends_its_own_epochs(loader: Any, limit: int | float) -> bool:
    """``strategy="fault_tolerant"``'s exactly-once loader, unlimited: an epoch whose last step did not
    commit has one more batch than ``len()``, and the loader flags each epoch's last batch itself."""
    return hasattr(loader, "last_of_epoch") and limit >= len(loader)


def _batches(loader: CombinedLoader) -> Iterator[Any]:
    """The batches of a ``CombinedLoader``, without the ``batch_idx``/``dataloader_idx`` it adds."""
    for batch, _, _ in loader:
        yield batch
