"""Precision modes: ``Precision`` (32-true) and one class per other mode."""

from fulmen.strategies.precision.amp import MixedPrecision
from fulmen.strategies.precision.double import DoublePrecision
from fulmen.strategies.precision.half import HalfPrecision
from fulmen.strategies.precision.precision import Precision

__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision"]
