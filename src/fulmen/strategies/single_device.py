"""One process, one device: no process group, no wrapping."""

from __future__ import annotations

import torch

from fulmen.checkpointing.checkpoint_io import CheckpointIO
from fulmen.strategies.accelerators import Accelerator
from fulmen.strategies.precision import Precision
from fulmen.strategies.strategy import Strategy


class SingleDeviceStrategy(Strategy):
    def __init__(
        self,
        device: torch.device | str | int = "cpu",
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision, checkpoint_io=checkpoint_io)
        self._root_device = torch.device(device) if not isinstance(device, torch.device) else device

    @property
    def root_device(self) -> torch.device:
        return self._root_device

    def __repr__(self) -> str:
        return f"SingleDeviceStrategy(device={self._root_device}, precision={self.precision!r})"
