"""Classify iris flowers with a LightningModule, a LightningDataModule and a Callback.

The data is scikit-learn's bundled copy of the iris measurements (no download): the script
writes it to ``<data dir>/iris.npz`` and the datamodule reads it from there, as a real project
would read its own files. Run it with ``make demo`` or ``python examples/iris.py --help``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from torch.optim import Adam
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback


class IrisClassifier(L.LightningModule):
    """4 measurements -> 16 hidden units -> 3 species."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer_1 = nn.Linear(4, 16)
        self.layer_2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_2(F.relu(self.layer_1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return Adam(self.parameters(), lr=self.hparams.lr)


class IrisDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "./data",
        batch_size: int = 16,
        num_workers: int = 0,
        val_size: float = 0.2,
        random_state: int = 42,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.data_file = os.path.join(data_dir, "iris.npz")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.random_state = random_state
        self.shuffle = shuffle
        self.train_ds = None
        self.val_ds = None
        self.save_hyperparameters(ignore=["num_workers"])

    def prepare_data(self) -> None:
        if not os.path.exists(self.data_file):
            raise FileNotFoundError(f"Expected the dataset at {self.data_file}; `write_iris` creates it.")

    def setup(self, stage: str | None = None) -> None:
        data = np.load(self.data_file)
        x, y = data["X"].astype(np.float32), data["y"].astype(np.int64)
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=self.val_size, random_state=self.random_state, stratify=y
        )
        self.train_ds = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
        self.val_ds = TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_ds, batch_size=self.batch_size, shuffle=self.shuffle, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


class TrainingLogger(Callback):
    """Prints the training loss after every epoch, from ``trainer.callback_metrics``."""

    def on_train_epoch_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("train_loss")
        print(f"Spy Report: Epoch {trainer.current_epoch} ended. Loss: {loss:.4f}")


class EpochTimingCallback(L.Callback):
    """Logs each epoch's wall time to the logger."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start_time = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        duration = time.time() - self.epoch_start_time
        trainer.logger.log_metrics({"epoch_time_sec": duration}, step=trainer.current_epoch)


def write_iris(data_dir: str) -> str:
    """Save scikit-learn's bundled iris data as ``iris.npz`` (what a download script would do)."""
    from sklearn.datasets import load_iris

    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "iris.npz")
    iris = load_iris()
    np.savez(path, X=iris.data, y=iris.target)
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root-dir", default="fulmen_logs/iris", help="logs, checkpoint and data go here")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument("--resume", default=None, help="a checkpoint to continue from, e.g. the last run's iris.ckpt")
    args = parser.parse_args(argv)

    L.seed_everything(42)
    data_dir = os.path.join(args.root_dir, "data")
    write_iris(data_dir)
    datamodule = IrisDataModule(data_dir=data_dir, batch_size=16, val_size=0.2, random_state=42)
    model = IrisClassifier()
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        default_root_dir=args.root_dir,
        callbacks=[TrainingLogger(), EpochTimingCallback()],
        enable_progress_bar=not args.no_progress_bar,
        log_every_n_steps=5,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=args.resume)
    # Saved right after fit: weights, optimizer state and progress, so that training can go on from it.
    checkpoint = os.path.join(args.root_dir, "iris.ckpt")
    trainer.save_checkpoint(checkpoint)
    results = trainer.validate(model, datamodule=datamodule)[0]

    print(f"TensorBoard logs: {trainer.log_dir}  (view with `tensorboard --logdir {args.root_dir}`)")
    print(f"Checkpoint:       {os.path.abspath(checkpoint)}")
    print(f"  holds:          weights, optimizer state and progress after {trainer.current_epoch} epochs")
    print(f"  train on:       python examples/iris.py --resume {checkpoint} --max-epochs {args.max_epochs + 10}")
    print(f"  load to use:    IrisClassifier.load_from_checkpoint({checkpoint!r})")
    print(f"Validation accuracy: {results['val_acc']:.3f}")
    return results


if __name__ == "__main__":
    main()
