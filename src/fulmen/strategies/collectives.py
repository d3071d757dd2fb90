"""torch.distributed collectives as fulmen exposes them: any shape, any picklable object.

Every function is a no-op pass-through when no process group is initialised, so that code
written for many processes runs unchanged on one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

_REDUCE_OPS = ("sum", "mean", "max", "min", "avg")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_gather(tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor | list[Tensor]:
    """Gather ``tensor`` from every rank.

    Equal shapes give one tensor of shape ``(world_size, *shape)``. Uneven shapes (a short last
    batch) cannot be stacked: they come back as a list with each rank's tensor at its own shape.
    With one process (no group, or a group of one) the tensor comes back as it is, without a
    leading dimension, as Lightning and Fabric document it.
    """
    if not is_initialized():
        return tensor
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    local_shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    # Ranks may differ in the number of dimensions too (a 0-dim tensor vs a 1-dim one).
    ndims = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world_size)]
    dist.all_gather(ndims, torch.tensor([tensor.dim()], device=tensor.device), group=group)
    max_dim = int(max(int(n) for n in ndims))
    padded_shape = torch.full((max_dim,), -1, dtype=torch.long, device=tensor.device)
    padded_shape[: tensor.dim()] = local_shape
    shapes = [torch.empty_like(padded_shape) for _ in range(world_size)]
    dist.all_gather(shapes, padded_shape, group=group)
    shapes_list = [tuple(int(d) for d in s if d >= 0) for s in shapes]

    if all(s == shapes_list[0] for s in shapes_list):
        if sync_grads:
            return torch.stack(torch.distributed.nn.functional.all_gather(tensor, group=group))
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor, group=group)
        return torch.stack(gathered)

    if len({len(s) for s in shapes_list}) != 1:
        raise ValueError(f"all_gather needs tensors with the same number of dimensions; got shapes {shapes_list}")
    max_shape = [max(s[d] for s in shapes_list) for d in range(len(shapes_list[0]))]
    padded = tensor.new_zeros(max_shape)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=group)
    return [g[tuple(slice(0, n) for n in shape)] for g, shape in zip(gathered, shapes_list)]


def all_reduce(tensor: Tensor, group: Any = None, reduce_op: str | Any = "mean") -> Tensor:
    """Reduce ``tensor`` over all ranks with ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``; returns a new tensor."""
    op_name = reduce_op.lower() if isinstance(reduce_op, str) else None
    if op_name is not None and op_name not in _REDUCE_OPS:
        raise ValueError(f"`reduce_op={reduce_op!r}` is not valid. Accepted: 'sum', 'mean', 'max', 'min'.")
    if not is_initialized():
        return tensor
    result = tensor.clone()
    if op_name is None:
        dist.all_reduce(result, op=reduce_op, group=group)
        return result
    if op_name in ("mean", "avg"):
        if not torch.is_floating_point(result):
            result = result.to(torch.get_default_dtype())
        dist.all_reduce(result, op=dist.ReduceOp.SUM, group=group)
        return result / dist.get_world_size(group)
    op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op_name]
    dist.all_reduce(result, op=op, group=group)
    return result


def broadcast(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Send any picklable object from rank ``src`` to every rank."""
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, group=group)
    return holder[0]


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's picklable ``obj``, indexed by rank."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def barrier(group: Any = None) -> None:
    if is_initialized():
        dist.barrier(group=group)
