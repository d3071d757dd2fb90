"""OnExceptionCheckpoint: a failing fit leaves a checkpoint to resume from, and the original error."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import fsspec
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import LightningModule, Trainer
from fulmen.callbacks import OnExceptionCheckpoint
from fulmen.callbacks.checkpoint import Checkpoint
from fulmen.checkpointing.safe_reading import safe_load
from fulmen.utilities.exceptions import MisconfigurationException


class FailingModel(LightningModule):
    """Raises in ``training_step`` when ``global_step`` reaches ``fail_at`` (never with ``None``)."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError(f"boom at step {self.global_step}")
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2)


def fit(root, callbacks, model, ckpt_path=None, max_epochs=2):
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, train_dataloaders=_loader(), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture
def tmp_path(tmp_path):
    return Path(os.path.realpath(tmp_path))


def test_arguments(tmp_path):
    callback = OnExceptionCheckpoint(dirpath=tmp_path)
    assert isinstance(callback, Checkpoint)
    assert callback.ckpt_path == str(tmp_path / "on_exception.ckpt")
    assert OnExceptionCheckpoint(tmp_path, filename="crash").ckpt_path == str(tmp_path / "crash.ckpt")
    assert OnExceptionCheckpoint("memory://b/run").ckpt_path == "memory://b/run/on_exception.ckpt"
    with pytest.raises(MisconfigurationException, match="filename=''"):
        OnExceptionCheckpoint(tmp_path, filename="")
    with pytest.raises(MisconfigurationException, match="dirpath=None"):
        OnExceptionCheckpoint(None)


def test_saves_when_training_raises_and_the_run_resumes_from_it(tmp_path):
    callback = OnExceptionCheckpoint(dirpath=tmp_path)
    with pytest.raises(RuntimeError, match="boom at step 5"):
        fit(tmp_path, [callback], FailingModel(fail_at=5))
    checkpoint = safe_load(callback.ckpt_path)
    assert checkpoint["global_step"] == 5
    assert checkpoint["optimizer_states"]

    trainer = fit(tmp_path, [OnExceptionCheckpoint(dirpath=tmp_path)], FailingModel(), ckpt_path=callback.ckpt_path)
    assert trainer.global_step == 8
    # The finished run makes the rescue file stale: it is removed.
    assert not os.path.exists(callback.ckpt_path)


def test_a_successful_fit_leaves_no_file(tmp_path):
    (tmp_path / "on_exception.ckpt").write_bytes(b"stale")
    fit(tmp_path, [OnExceptionCheckpoint(dirpath=tmp_path)], FailingModel(), max_epochs=1)
    assert os.listdir(tmp_path) == []


def test_memory_dirpath(tmp_path):
    root = f"memory://fulmen-test-{uuid.uuid4().hex}"
    callback = OnExceptionCheckpoint(dirpath=f"{root}/rescue", filename="crash")
    try:
        with pytest.raises(RuntimeError, match="boom"):
            fit(tmp_path, [callback], FailingModel(fail_at=2))
        assert safe_load(f"{root}/rescue/crash.ckpt")["global_step"] == 2
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)


def test_a_failed_save_does_not_hide_the_original_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    callback = OnExceptionCheckpoint(dirpath=blocker)  # a folder inside a file cannot be created
    with pytest.warns(UserWarning, match="could not save"), pytest.raises(RuntimeError, match="boom at step 1"):
        fit(tmp_path, [callback], FailingModel(fail_at=1))
