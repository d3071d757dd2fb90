"""Apple silicon GPUs through torch.backends.mps (a single device)."""

from __future__ import annotations

from typing import Any

import torch

from fulmen.strategies.accelerators.accelerator import Accelerator


class MPSAccelerator(Accelerator):
    name = "mps"

    @staticmethod
    def is_available() -> bool:
        mps = getattr(torch.backends, "mps", None)
        return bool(mps and mps.is_available())

    @staticmethod
    def auto_device_count() -> int:
        return 1 if MPSAccelerator.is_available() else 0

    @staticmethod
    def available_device_count() -> int:
        return MPSAccelerator.auto_device_count()

    def device(self, index: int) -> torch.device:
        return torch.device("mps", index)

    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        return {"mps_memory_allocated_mb": torch.mps.current_allocated_memory() / 2**20}
