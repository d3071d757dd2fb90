"""Walk nested batches (dicts, lists, tuples, namedtuples, dataclasses) and transform tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def apply_to_collection(
    data: Any, dtype: type | tuple[type, ...], function: Callable, *args: Any, **kwargs: Any
) -> Any:
    """Apply ``function`` to every element of ``data`` that is an instance of ``dtype``."""
    if isinstance(data, dtype):
        return function(data, *args, **kwargs)
    if isinstance(data, (str, bytes)) or not _is_collection(data):
        return data
    return _map_one_level(data, lambda child: apply_to_collection(child, dtype, function, *args, **kwargs))


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Move every tensor (or custom object with a ``to`` method) in ``batch`` to ``device``."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    # Non-blocking only pays off (and is only safe) for host-to-accelerator copies.
    non_blocking = device.type not in ("cpu", "mps")

    def move(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.to(device, non_blocking=non_blocking)
        if _is_collection(obj) or not callable(getattr(obj, "to", None)) or isinstance(obj, type):
            return _map_children(obj, move)
        moved = obj.to(device)
        return obj if moved is None else moved  # some custom ``to`` methods work in place

    return move(batch)


def _is_collection(obj: Any) -> bool:
    return isinstance(obj, (Mapping, Sequence)) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))


def _map_children(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, (str, bytes)) or not _is_collection(obj):
        return obj
    return _map_one_level(obj, fn)


def _map_one_level(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, Mapping):
        return type(obj)({k: fn(v) for k, v in obj.items()})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(fn(v) for v in obj))
    if isinstance(obj, Sequence):
        return type(obj)([fn(v) for v in obj])
    changes = {f.name: fn(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    return dataclasses.replace(obj, **changes)
