"""The seed documents' Trainer examples, with only the import lines changed.

Seed 000 (Lite to Lightning): ``LiftModel`` / ``BoringDataModule``. Seed 004 (SLURM course):
``IrisClassifier``, ``TrainingLogger``, ``IrisDataModule``, ``EpochTimingCallback``; it asks for
``accelerator="gpu"``, which runs here with ``accelerator="cpu"`` (and ``"gpu"`` must fail
clearly on a machine without one). Seed 003 (Ray): its ``ImageClassifier``, on a small conv
net when torchvision is not installed.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.optim import Adam
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen import LightningDataModule, LightningModule, Trainer, seed_everything
from fulmen.callbacks import Callback
from fulmen.utilities.exceptions import MisconfigurationException
from tests.seeds.lite_seed_subclass import BoringModel, configure_optimizers, train_dataloader, val_dataloader

# ------------------------------------------------------------------------------- seed 000
# The raw-PyTorch half of seed 000 (BoringModel, its data and optimizer) is shared with the
# Lite seed test, imported above.


class LiftModel(LightningModule):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)

    def training_step(self, batch, batch_idx):
        x = self.forward(batch)
        self.log("train_loss", x)
        return x

    def validation_step(self, batch, batch_idx):
        x = self.forward(batch)
        self.log("val_loss", x)
        return x

    def configure_optimizers(self):
        return configure_optimizers(self)


class BoringDataModule(LightningDataModule):
    def train_dataloader(self):
        return train_dataloader()

    def val_dataloader(self):
        return val_dataloader()


def test_seed_000_lift_model_with_boring_datamodule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_everything(42)
    model = BoringModel()
    lightning_module = LiftModel(model)
    datamodule = BoringDataModule()
    trainer = Trainer(max_epochs=10)
    trainer.fit(lightning_module, datamodule)

    assert trainer.current_epoch == 10 and trainer.global_step == 640
    assert {"train_loss", "val_loss"} <= set(trainer.callback_metrics)
    assert (tmp_path / "lightning_logs" / "version_0").is_dir()
    checkpoints = list((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 1


# ------------------------------------------------------------------------------- seed 004


class IrisClassifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        # Input: 4 features (sepal/petal measurements)
        # Hidden: 16 neurons
        # Output: 3 classes (Setosa, Versicolour, Virginica)
        self.layer_1 = nn.Linear(4, 16)
        self.layer_2 = nn.Linear(16, 3)

    def forward(self, x):
        # Standard Forward Pass
        x = F.relu(self.layer_1(x))
        x = self.layer_2(x)
        return x

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return Adam(self.parameters(), lr=0.01)


class TrainingLogger(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        # This runs automatically at the end of every epoch
        # We access the logged metrics from the module via trainer.callback_metrics
        loss = trainer.callback_metrics.get("train_loss")
        print(f"Spy Report: Epoch {trainer.current_epoch} ended. Loss: {loss:.4f}")


class IrisDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir="./data",
        batch_size=16,
        num_workers=0,
        val_size=0.2,
        random_state=42,
        shuffle=True,
    ):
        super().__init__()
        self.data_dir = data_dir
        self.data_file = os.path.join(self.data_dir, "iris.npz")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.random_state = random_state
        self.shuffle = shuffle

        self.train_ds = None
        self.val_ds = None

        self.save_hyperparameters(ignore=["num_workers"])

    def prepare_data(self):
        if not os.path.exists(self.data_file):
            raise FileNotFoundError(
                f"Expected dataset at {self.data_file}. Run the download script provided to create it."
            )

    def setup(self, stage=None):
        data = np.load(self.data_file)
        X = data["X"].astype(np.float32)  # shape (150, 4)
        y = data["y"].astype(np.int64)  # shape (150,)

        # Train/val split (stratified to keep class balance)
        X_train, X_val, y_train, y_val = train_test_split(
            X, y, test_size=self.val_size, random_state=self.random_state, stratify=y
        )

        # Convert to tensors
        X_train = torch.from_numpy(X_train)
        y_train = torch.from_numpy(y_train)
        X_val = torch.from_numpy(X_val)
        y_val = torch.from_numpy(y_val)

        self.train_ds = TensorDataset(X_train, y_train)
        self.val_ds = TensorDataset(X_val, y_val)

    def train_dataloader(self):
        return DataLoader(
            self.train_ds,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            num_workers=self.num_workers,
        )

    def val_dataloader(self):
        return DataLoader(
            self.val_ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )


class EpochTimingCallback(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start_time = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        duration = time.time() - self.epoch_start_time
        trainer.logger.log_metrics({"epoch_time_sec": duration}, step=trainer.current_epoch)
        print(f"[Timing] Epoch {trainer.current_epoch} took {duration:.2f} seconds")


@pytest.fixture
def iris_dir(tmp_path, monkeypatch):
    """``./data/iris.npz`` in a fresh working directory, written from scikit-learn's bundled copy."""
    from sklearn.datasets import load_iris

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    iris = load_iris()
    np.savez(tmp_path / "data" / "iris.npz", X=iris.data, y=iris.target)
    return tmp_path


def test_seed_004_iris_classifier_with_training_logger(iris_dir, capsys):
    iris = np.load("./data/iris.npz")
    X = torch.tensor(iris["X"], dtype=torch.float32)  # Features
    y = torch.tensor(iris["y"], dtype=torch.long)  # Labels (0, 1, 2)

    dataset = TensorDataset(X, y)
    train_loader = DataLoader(dataset, batch_size=16, shuffle=True)

    model = IrisClassifier()

    logger_callback = TrainingLogger()
    trainer = L.Trainer(max_epochs=10, callbacks=[logger_callback], accelerator="cpu")

    trainer.fit(model, train_loader)

    # the progress bar shares stdout, so look for the reports anywhere in it
    reports = re.findall(r"Spy Report: Epoch (\d+) ended\. Loss: (\d+\.\d{4})\n", capsys.readouterr().out)
    assert [int(epoch) for epoch, _ in reports] == list(range(10))
    assert float(reports[-1][1]) < float(reports[0][1])


def test_seed_004_iris_datamodule_with_epoch_timing(iris_dir, capsys):
    dm = IrisDataModule(data_dir="./data", batch_size=16, val_size=0.2, random_state=42)
    logger_callback = TrainingLogger()
    trainer = L.Trainer(max_epochs=10, callbacks=[logger_callback, EpochTimingCallback()], accelerator="cpu")
    model = IrisClassifier()

    trainer.fit(model, datamodule=dm)

    assert dm.hparams == {"data_dir": "./data", "batch_size": 16, "val_size": 0.2, "random_state": 42,
                          "shuffle": True}  # fmt: skip
    assert trainer.num_training_batches == 8  # 120 training rows in batches of 16
    out = capsys.readouterr().out
    assert out.count("Spy Report") == 10 and out.count("[Timing] Epoch") == 10

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    assert [event.step for event in events.Scalars("epoch_time_sec")] == list(range(10))


def test_seed_004_asks_for_a_gpu_that_this_machine_lacks():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the seed's accelerator='gpu' is valid here")
    with pytest.raises(MisconfigurationException, match="accelerator='gpu'") as error:
        L.Trainer(max_epochs=10, callbacks=[TrainingLogger()], accelerator="gpu")
    assert "cpu" in str(error.value)


# ------------------------------------------------------------------------------- seed 003


class TinyResNet(nn.Module):
    """Stands in for torchvision's resnet18 when torchvision is not installed: same ``conv1`` slot."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv1(x)), 1).flatten(1))


try:
    from torchvision.models import resnet18
except ImportError:
    resnet18 = TinyResNet


class ImageClassifier(L.LightningModule):
    def __init__(self):
        super(ImageClassifier, self).__init__()  # noqa: UP008 - as the seed writes it
        self.model = resnet18(num_classes=10)
        self.model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
        self.criterion = torch.nn.CrossEntropyLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        outputs = self.forward(x)
        loss = self.criterion(outputs, y)
        self.log("loss", loss, on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=0.001)


def test_seed_003_image_classifier(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    train_dataloader = DataLoader(images, batch_size=8, shuffle=True)
    model = ImageClassifier()
    trainer = L.Trainer(max_epochs=2)
    trainer.fit(model, train_dataloaders=train_dataloader)
    assert trainer.global_step == 8 and "loss" in trainer.progress_bar_metrics
