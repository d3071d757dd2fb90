"""Gaussian blobs, one per class, made from a seed: no download, the same data on every machine."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen as L


class BlobsDataModule(L.LightningDataModule):
    """``num_samples`` points around ``num_classes`` centres; ``val_fraction`` of them for validation and test."""

    def __init__(
        self,
        num_samples: int = 600,
        num_features: int = 2,
        num_classes: int = 3,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        spread: float = 1.5,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.num_features = num_features
        self.num_classes = num_classes
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        centres = torch.randn(hp.num_classes, hp.num_features, generator=generator) * 3
        labels = torch.randint(0, hp.num_classes, (hp.num_samples,), generator=generator)
        points = centres[labels] + hp.spread * torch.randn(hp.num_samples, hp.num_features, generator=generator)
        dataset = TensorDataset(points, labels)
        held_out = int(hp.num_samples * hp.val_fraction)
        self.train_set, self.val_set = random_split(
            dataset, [hp.num_samples - held_out, held_out], generator=torch.Generator().manual_seed(hp.seed)
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
