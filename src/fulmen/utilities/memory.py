"""``garbage_collection_cuda``: give memory back to the CUDA driver (after an out-of-memory trial)."""

from __future__ import annotations

import gc

import torch


def is_oom_error(exception: BaseException) -> bool:
    """Whether ``exception`` is an out-of-memory error of CUDA, cuDNN or the CPU allocator."""
    if isinstance(exception, torch.cuda.OutOfMemoryError):
        return True
    if not isinstance(exception, RuntimeError) or len(exception.args) != 1:
        return False
    message = str(exception.args[0])
    return any(
        part in message
        for part in ("CUDA out of memory.", "CUDNN_STATUS_NOT_SUPPORTED.", "DefaultCPUAllocator: can't allocate memory")
    )


def garbage_collection_cuda() -> None:
    """Collect Python's garbage, then empty CUDA's cache; an out-of-memory error while emptying is ignored."""
    gc.collect()
    try:
        torch.cuda.empty_cache()  # a no-op without CUDA
    except RuntimeError as error:
        if not is_oom_error(error):
            raise
