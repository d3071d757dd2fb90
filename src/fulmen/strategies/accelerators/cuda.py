"""NVIDIA GPUs through torch.cuda; never initialises CUDA before it is asked to."""

from __future__ import annotations

from typing import Any

import torch

from fulmen.strategies.accelerators.accelerator import Accelerator


class CUDAAccelerator(Accelerator):
    name = "cuda"

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    @staticmethod
    def auto_device_count() -> int:
        return torch.cuda.device_count()

    @staticmethod
    def available_device_count() -> int:
        return torch.cuda.device_count()

    def device(self, index: int) -> torch.device:
        return torch.device("cuda", index)

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDAAccelerator cannot set up device {device}")
        torch.cuda.set_device(device)

    def teardown(self) -> None:
        torch.cuda.empty_cache()

    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        return {
            "cuda_memory_allocated_mb": torch.cuda.memory_allocated(device) / 2**20,
            "cuda_max_memory_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "cuda_memory_reserved_mb": torch.cuda.memory_reserved(device) / 2**20,
        }
