"""Accelerators: one class per kind of device."""

from fulmen.strategies.accelerators.accelerator import Accelerator
from fulmen.strategies.accelerators.cpu import CPUAccelerator
from fulmen.strategies.accelerators.cuda import CUDAAccelerator
from fulmen.strategies.accelerators.mps import MPSAccelerator

ACCELERATORS: dict[str, type[Accelerator]] = {
    "cpu": CPUAccelerator,
    "cuda": CUDAAccelerator,
    "gpu": CUDAAccelerator,
    "mps": MPSAccelerator,
}

__all__ = ["ACCELERATORS", "Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator"]
