"""lr_find as a callback under ddp_spawn (2 CPU processes): each rank writes what it ended with to OUT/rank<N>.json."""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback, LearningRateFinder


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Report(Callback):
    def __init__(self, out):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        finder = trainer.callbacks[0].optimal_lr
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(
                {
                    "lr": pl_module.hparams.lr,
                    "n": len(finder.results["lr"]),
                    "step": trainer.global_step,
                    "opt_lr": trainer.optimizers[0].param_groups[0]["lr"],
                },
                f,
            )


if __name__ == "__main__":
    out = sys.argv[1]
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    loader = DataLoader(TensorDataset(x, 3 * x[:, :1]), batch_size=16)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LearningRateFinder(num_training_steps=30), Report(out)],
    )
    trainer.fit(Regressor(), loader)
