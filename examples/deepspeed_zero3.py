"""ZeRO-3 through the Trainer: a model built already partitioned, trained on two CPU processes.

    python examples/deepspeed_zero3.py                 # 2 processes, ZeRO-3, a few seconds
    python examples/deepspeed_zero3.py --offload       # optimizer state and parameters in CPU memory

Under ZeRO-3 every rank holds a slice of each parameter, gradient and Adam state; layers are
gathered just in time for forward and backward. ``trainer.init_module()`` builds the model in
that form from the start, so no process ever holds all of it. Checkpoints are directories with
one shard per rank; ``consolidate_checkpoint`` (or ``fulmen checkpoint consolidate DIR OUT``)
merges one into an ordinary file that loads on one process without DeepSpeed.

Needs ``pip install fulmen[deepspeed]``. The first run on a machine builds a DeepSpeed op (about
a minute and a half on a CPU).
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.strategies import DeepSpeedStrategy, consolidate_checkpoint


class Classifier(L.LightningModule):
    def __init__(self, width: int = 256, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(32, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 4)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        accuracy = (self.net(x).argmax(dim=1) == y).float().mean()
        self.log("val_acc", accuracy, sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def make_data(samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 32, generator=generator)
    y = (x[:, :4] * torch.tensor([1.0, -2.0, 3.0, 0.5])).argmax(dim=1)
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--offload", action="store_true", help="ZeRO-3 with optimizer and parameter offload")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="deepspeed_zero3_logs")
    args = parser.parse_args()

    L.seed_everything(7)
    strategy = DeepSpeedStrategy(stage=3, offload_optimizer=args.offload, offload_parameters=args.offload)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        precision="bf16-mixed",
        max_epochs=args.epochs,
        gradient_clip_val=1.0,  # DeepSpeed clips inside its step
        default_root_dir=args.out,
        callbacks=[ModelCheckpoint(monitor="val_acc", mode="max", save_last=True)],
        enable_progress_bar=False,
        logger=False,
    )
    with trainer.init_module():  # partitioned as it is built
        model = Classifier()
    local = sum(p.ds_tensor.numel() for p in model.parameters())
    total = sum(p.ds_numel for p in model.parameters())
    print(f"rank {trainer.global_rank} holds {local} of {total} parameters")

    train = DataLoader(make_data(4096), batch_size=64, shuffle=True)
    val = DataLoader(make_data(512), batch_size=128)
    trainer.fit(model, train, val)

    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path  # a directory: one shard per rank
        merged = os.path.join(args.out, "best.ckpt")
        consolidate_checkpoint(best, merged)
        restored = Classifier.load_from_checkpoint(merged)  # one process, no DeepSpeed needed
        x, y = make_data(512).tensors
        accuracy = (restored.net(x).argmax(dim=1) == y).float().mean().item()
        print(f"best checkpoint {best} -> {merged}: val accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
