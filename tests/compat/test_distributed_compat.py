"""Two real processes (ddp_spawn over gloo): loggers are called on every rank, only rank 0 writes files."""

from __future__ import annotations

import os

import pytest
import torch

from fulmen import Trainer
from fulmen.callbacks import ModelCheckpoint
from fulmen.loggers import Logger
from tests.trainer.helpers import BoringModel, loader


class PerRankLogger(Logger):
    """Appends one line per call to a file named after the process: no interleaved output."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @property
    def name(self) -> str:
        return "per_rank"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None):
        with open(os.path.join(self.folder, f"logged_by_{os.getpid()}"), "a") as f:
            f.write(f"{step}\n")

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class FileWriteSpy(ModelCheckpoint):
    """Records, per process, every checkpoint file this process wrote itself."""

    def _save_checkpoint(self, trainer, filepath):
        real_save = torch.save
        written = []

        def spy(obj, f, *args, **kwargs):
            if not hasattr(f, "getvalue"):  # a file, not an in-memory buffer used by a collective
                written.append(str(f))
            return real_save(obj, f, *args, **kwargs)

        torch.save = spy
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            torch.save = real_save
        with open(os.path.join(self.dirpath, f"writes_of_rank_{trainer.global_rank}"), "a") as f:
            f.write(f"{len(written)}\n")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loggers_on_every_rank_files_from_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("FULMEN_DIST_TIMEOUT", "30")
    logs, checkpoints = tmp_path / "logs", tmp_path / "ckpts"
    logs.mkdir()
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, log_every_n_steps=1,
        logger=PerRankLogger(str(logs)), callbacks=[FileWriteSpy(dirpath=str(checkpoints))],
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(BoringModel(), loader(32))
    assert len(os.listdir(logs)) == 2  # both processes called the logger, as Lightning does
    assert (checkpoints / "writes_of_rank_0").read_text().split() == ["1"]
    assert (checkpoints / "writes_of_rank_1").read_text().split() == ["0"]
    assert [p.name for p in checkpoints.glob("*.ckpt")] == ["epoch=0-step=2.ckpt"]
