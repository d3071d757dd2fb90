"""Lite: the strategy layer under a raw PyTorch loop."""

from fulmen.lite.lite import LightningLite, Lite

__all__ = ["LightningLite", "Lite"]
