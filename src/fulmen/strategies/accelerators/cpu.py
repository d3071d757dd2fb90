"""The CPU: always present; "devices" means processes on this machine."""

from __future__ import annotations

import os

import torch

from fulmen.strategies.accelerators.accelerator import Accelerator


class CPUAccelerator(Accelerator):
    name = "cpu"

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def available_device_count() -> int:
        # What ``devices=-1`` means on a CPU: one process per core. More may be asked for.
        return os.cpu_count() or 1

    def device(self, index: int) -> torch.device:
        return torch.device("cpu")

    def get_device_stats(self, device: torch.device) -> dict[str, float]:
        try:
            import resource

            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return {"cpu_peak_rss_mb": peak_kib / 1024}
        except ImportError:  # pragma: no cover - not on POSIX
            return {}
