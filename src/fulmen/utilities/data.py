"""Lightning's data helpers: ``extract_batch_size`` and ``suggested_max_num_workers``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor

from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_warn


def _sizes(batch: Any) -> Iterator[int]:
    if isinstance(batch, Tensor):
        yield batch.size(0) if batch.dim() else 1
    elif isinstance(batch, (str, bytes)):
        return  # a lone string is a label, not a batch dimension
    elif isinstance(batch, Mapping):
        for value in batch.values():
            yield from _sizes(value)
    elif isinstance(batch, (list, tuple)):
        if batch and all(isinstance(item, str) for item in batch):
            yield len(batch)  # a batch of texts
            return
        for value in batch:
            yield from _sizes(value)
    elif hasattr(batch, "__dataclass_fields__"):
        for field in batch.__dataclass_fields__:
            yield from _sizes(getattr(batch, field))


def extract_batch_size(batch: Any) -> int:
    """The batch size ``self.log`` would use: the first dimension of the first tensor found in ``batch``
    (dicts, lists, tuples and dataclasses are searched; a 0-d tensor counts 1, a list of strings its length).

    Warns when tensors of different first dimensions make the answer ambiguous; raises
    ``MisconfigurationException`` when the batch holds no tensor.
    """
    sizes = list(_sizes(batch))
    if not sizes:
        raise MisconfigurationException(
            "We could not infer the batch_size from the batch. Either simplify its structure or provide the "
            "batch_size as `self.log(..., batch_size=batch_size)`."
        )
    if any(size != sizes[0] for size in sizes[1:]):
        rank_zero_warn(
            f"Trying to infer the `batch_size` from an ambiguous collection. The batch size we found is {sizes[0]}. "
            "To avoid any miscalculations, use `self.log(..., batch_size=batch_size)`."
        )
    return sizes[0]


def _num_cpus_available() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def suggested_max_num_workers(local_world_size: int) -> int:
    """A ``num_workers`` for each process's DataLoader: the CPUs this process may use, shared by the
    ``local_world_size`` processes of the node, less one each for the main process (at least 1)."""
    if isinstance(local_world_size, bool) or not isinstance(local_world_size, int) or local_world_size < 1:
        raise ValueError(f"`local_world_size` should be >= 1, got {local_world_size!r}.")
    return max(1, _num_cpus_available() // local_world_size - 1)
