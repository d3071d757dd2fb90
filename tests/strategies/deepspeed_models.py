"""The model and data the DeepSpeed tests train (imported by the worker and by the tests)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fulmen as L


class NoisyDataset(Dataset):
    """Fixed points plus noise drawn in ``__getitem__`` (like an augmentation: resuming must replay it)."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=generator)
        self.y = torch.randn(n, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index] + 0.01 * torch.randn(8), self.y[index]


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.02, dropout: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 1))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.detach().float().item())
        self.log("train_loss", loss)
        self.log("progress", float(self.trainer.global_step))  # a monitor whose top-k is known in advance
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)}


def train_loader(per_rank: int = 64) -> DataLoader:
    return DataLoader(NoisyDataset(2 * per_rank), batch_size=4, shuffle=True)


def eval_loader() -> DataLoader:
    return DataLoader(NoisyDataset(32), batch_size=4)
