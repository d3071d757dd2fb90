"""What a kind of device can do: count, pick and prepare devices, report memory."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Accelerator(ABC):
    """One kind of device (cpu, cuda, mps). Stateless: the strategy decides which devices."""

    name: str = ""

    @staticmethod
    @abstractmethod
    def is_available() -> bool: ...

    @staticmethod
    @abstractmethod
    def auto_device_count() -> int:
        """How many devices ``devices="auto"`` means on this machine."""

    @staticmethod
    @abstractmethod
    def available_device_count() -> int:
        """How many devices exist; bounds explicit requests."""

    @abstractmethod
    def device(self, index: int) -> torch.device: ...

    def setup_device(self, device: torch.device) -> None:
        """Prepare ``device`` for this process (select the CUDA device, ...)."""

    def teardown(self) -> None:
        """Release what ``setup_device`` took."""

    def get_device_stats(self, device: torch.device) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
