"""Lite: the strategy layer under a raw PyTorch loop."""

from fulmen.lite.lite import LightningLite, Lite
from fulmen.lite.wrappers import is_wrapped

__all__ = ["LightningLite", "Lite", "is_wrapped"]
