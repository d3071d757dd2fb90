"""``DataHooks``: where a LightningModule's data comes from and how a batch reaches the device.

The ``prepare_data``/``setup``/``teardown`` stages, the ``*_dataloader`` sources and the three
batch-transfer hooks, kept apart from the model's own hooks (:mod:`fulmen.module.hooks`) and
steps. The Trainer calls only those a module overrides (``transfer_batch_to_device`` aside,
whose default moves the batch).
"""

from __future__ import annotations

from typing import Any

import torch

from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import MisconfigurationException


class DataHooks:
    def prepare_data(self) -> None:
        """Download or write data once per node (see ``prepare_data_per_node``); no state here."""

    def setup(self, stage: str) -> None:
        """Per process, before the loops: ``stage`` is "fit", "validate", "test" or "predict"."""

    def teardown(self, stage: str) -> None:
        """Per process, after the loops."""

    def train_dataloader(self) -> Any:
        raise MisconfigurationException(
            "No training data: pass `train_dataloaders` or a datamodule to `Trainer.fit`, "
            f"or implement `train_dataloader` in {type(self).__name__}."
        )

    def val_dataloader(self) -> Any:
        raise MisconfigurationException(f"`val_dataloader` is not implemented in {type(self).__name__}.")

    def test_dataloader(self) -> Any:
        raise MisconfigurationException(
            "No test data: pass `dataloaders` or a datamodule to `Trainer.test`, "
            f"or implement `test_dataloader` in {type(self).__name__}."
        )

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException(
            "No prediction data: pass `dataloaders` or a datamodule to `Trainer.predict`, "
            f"or implement `predict_dataloader` in {type(self).__name__}."
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device``; override for custom batch types."""
        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch before it moves to the device; return it."""
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch after it moved to the device; return it."""
        return batch
