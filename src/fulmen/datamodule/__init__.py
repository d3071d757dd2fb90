"""The ``LightningDataModule``: data preparation, splits and dataloaders in one object."""

from fulmen.datamodule.datamodule import LightningDataModule

__all__ = ["LightningDataModule"]
