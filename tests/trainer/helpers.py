"""Small models, data and a recording logger shared by the trainer, module and datamodule tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fulmen import LightningDataModule, LightningModule
from fulmen.loggers import Logger


def quiet(**overrides: Any) -> dict[str, Any]:
    """Trainer flags for tests: no logger, bar, summary or checkpoints unless asked for."""
    flags = dict(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    flags.update(overrides)
    return flags


class RandomDataset(Dataset):
    def __init__(self, length: int = 64, size: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, size, generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


def loader(length: int = 64, batch_size: int = 8, seed: int = 0, **kwargs: Any) -> DataLoader:
    return DataLoader(RandomDataset(length, seed=seed), batch_size=batch_size, **kwargs)


class BoringModel(LightningModule):
    """Linear(32, 2) pulled towards ones; logs its losses."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 2)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        out = self(batch)
        return nn.functional.mse_loss(out, torch.ones_like(out))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        loss = self.loss(batch)
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        loss = self.loss(batch)
        self.log("test_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class BoringDataModule(LightningDataModule):
    def __init__(self, length: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.length = length
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return loader(self.length, self.batch_size, seed=1)

    def val_dataloader(self) -> DataLoader:
        return loader(self.length, self.batch_size, seed=2)

    def test_dataloader(self) -> DataLoader:
        return loader(self.length, self.batch_size, seed=3)

    def predict_dataloader(self) -> DataLoader:
        return loader(self.length, self.batch_size, seed=4)


class RecordingLogger(Logger):
    """Keeps what the Trainer sends it, in order."""

    def __init__(self) -> None:
        self.metrics: list[tuple[dict[str, float], int | None]] = []
        self.hparams: list[dict[str, Any]] = []
        self.statuses: list[str] = []
        self.saves = 0

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.append(dict(params))

    def save(self) -> None:
        self.saves += 1

    def finalize(self, status: str) -> None:
        self.statuses.append(status)

    def values(self, key: str) -> list[tuple[float, int | None]]:
        """Every (value, step) logged under ``key``."""
        return [(m[key], step) for m, step in self.metrics if key in m]
