"""CometLogger in offline mode: a Trainer's parameters and metrics end up in Comet's offline archive."""

from __future__ import annotations

import importlib.util
import json
import zipfile

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.demos import BoringModel, RandomDataset
from fulmen.utilities.exceptions import MisconfigurationException

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comet_ml") is None, reason="needs comet_ml")


class Logged(BoringModel):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()

    def training_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("train_loss", loss)
        return loss


def _archive_records(folder) -> tuple[dict, list[dict]]:
    [archive] = list(folder.glob("*.zip"))
    with zipfile.ZipFile(archive) as zipped:
        lines = [json.loads(line) for line in zipped.read("messages.json").decode().splitlines() if line.strip()]
    params = {}
    metrics = []
    for record in lines:
        payload = record.get("payload", record)
        if "param" in payload:
            params[payload["param"]["paramName"]] = payload["param"]["paramValue"]
        if "metric" in payload:
            metrics.append(payload["metric"])
    return params, metrics


def test_offline_trainer_run_writes_params_and_metrics(tmp_path, monkeypatch):
    from fulmen.loggers import CometLogger

    monkeypatch.setenv("COMET_API_KEY", "offline-no-key")
    quiet = dict(log_code=False, log_git_metadata=False, log_git_patch=False, log_env_details=False)
    logger = CometLogger(
        project="fulmen-test",
        online=False,
        offline_directory=str(tmp_path),
        prefix="run",
        display_summary_level=0,
        **quiet,
    )
    assert logger.save_dir == str(tmp_path) and logger.name == "fulmen-test" and logger.version is None
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=4,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Logged(lr=0.25), DataLoader(RandomDataset(32, 8), batch_size=2))
    assert logger.version is not None and logger._experiment is None  # ended by finalize
    params, metrics = _archive_records(tmp_path)
    assert params.get("lr") in ("0.25", 0.25)
    names = [m["metricName"] for m in metrics]
    assert names.count("run-train_loss") == 4
    steps = sorted(m["step"] for m in metrics if m["metricName"] == "run-train_loss")
    assert steps == [0, 1, 2, 3]


def test_argument_checks():
    from fulmen.loggers import CometLogger

    with pytest.raises(MisconfigurationException, match="mode"):
        CometLogger(mode="sometimes")
    with pytest.raises(MisconfigurationException, match="online"):
        CometLogger(online="no")
    with pytest.raises(MisconfigurationException, match="prefix"):
        CometLogger(prefix=3)
    assert torch.is_tensor(torch.zeros(1))  # imports stay light: comet_ml is loaded only by `experiment`
