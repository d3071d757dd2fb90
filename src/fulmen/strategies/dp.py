"""``strategy="dp"``: torch.nn.DataParallel, one process splitting each batch over the GPUs of a node."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from fulmen.checkpointing.checkpoint_io import CheckpointIO
from fulmen.strategies.accelerators import Accelerator
from fulmen.strategies.parallel import ParallelStrategy
from fulmen.strategies.precision import Precision
from fulmen.strategies.strategy import warn_no_backward_sync_unsupported


class DataParallelStrategy(ParallelStrategy):
    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision, checkpoint_io=checkpoint_io)
        self.parallel_devices = parallel_devices or [torch.device("cuda", 0)]

    @property
    def root_device(self) -> torch.device:
        return self._parallel_devices[0]

    def setup_module(self, module: nn.Module) -> nn.Module:
        return nn.DataParallel(module, device_ids=[d.index for d in self.parallel_devices])

    def backward(self, tensor: Tensor, module: nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        # Each replica returns its own loss; their mean is the loss of the whole batch.
        if tensor.dim() > 0:
            tensor = tensor.mean()
        super().backward(tensor, module, *args, **kwargs)

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Any:
        if enabled:
            warn_no_backward_sync_unsupported(self)
        yield
