"""A small classifier for the CLI example: every ``__init__`` argument becomes ``--model.<name>``.

It has no ``configure_optimizers``: the optimizer and the LR scheduler come from the config
(``optimizer:`` and ``lr_scheduler:``), built by ``LightningCLI``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import fulmen as L


class Classifier(L.LightningModule):
    """``num_features`` inputs -> ``hidden_dim`` units -> ``num_classes`` scores."""

    def __init__(self, num_features: int = 2, num_classes: int = 3, hidden_dim: int = 32, dropout: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y))
        self.log(f"{stage}_acc", (logits.argmax(dim=1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).argmax(dim=1)


class WideClassifier(Classifier):
    """The same classifier, wider by default: choose it with ``--model=WideClassifier`` (subclass mode)."""

    def __init__(self, num_features: int = 2, num_classes: int = 3, hidden_dim: int = 128, dropout: float = 0.1):
        super().__init__(num_features, num_classes, hidden_dim, dropout)
