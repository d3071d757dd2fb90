"""What the loggers receive: ``log_metrics(metrics=..., step=...)`` and the step of each kind of value."""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch

from fulmen import Trainer
from fulmen.trainer.metrics import log_to_loggers
from tests.trainer.helpers import BoringModel, RecordingLogger, loader, quiet


def test_loggers_are_called_with_keywords_and_the_epoch_only_when_given():
    logger = mock.Mock()
    log_to_loggers([logger], {"loss": torch.tensor(0.5)}, step=3, epoch=1)
    log_to_loggers([logger], {"val": 2}, step=0, epoch=None)
    assert logger.log_metrics.mock_calls == [
        mock.call(metrics={"loss": 0.5, "epoch": 1}, step=3),
        mock.call(metrics={"val": 2.0}, step=0),
    ]


class EvalStepLogs(BoringModel):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val_step_value", float(batch_idx), on_step=True, on_epoch=False)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("test_step_value", float(batch_idx), on_step=True, on_epoch=False)


def test_evaluation_step_values_count_that_dataloaders_batches_without_epoch():
    logger = RecordingLogger()
    flags = quiet(logger=logger, max_epochs=2, limit_train_batches=1, limit_val_batches=3, log_every_n_steps=1)
    trainer = Trainer(**flags)
    model = EvalStepLogs()
    trainer.fit(model, loader(32), [loader(32), loader(32)])
    rows = [(m, s) for m, s in logger.metrics if any(k.startswith("val_step_value") for k in m)]
    # within fit the count goes on across validation runs, one count per dataloader
    expected = [
        ({f"val_step_value/dataloader_idx_{idx}": float(batch)}, batch + 3 * epoch)
        for epoch in range(2)
        for idx in range(2)
        for batch in range(3)
    ]
    assert rows == expected

    logger.metrics.clear()
    trainer.test(model, loader(32), verbose=False)
    assert logger.metrics == [({"test_step_value": float(b)}, b) for b in range(4)]


class LogsAtTrainStart(BoringModel):
    def on_train_start(self) -> None:
        self.log("at_start", 123.0)


def test_values_logged_in_on_train_start_go_out_with_the_first_epoch_only():
    logger = RecordingLogger()
    trainer = Trainer(**quiet(logger=logger, max_epochs=2, limit_train_batches=2, log_every_n_steps=1))
    trainer.fit(LogsAtTrainStart(), loader(32))
    assert [(m, s) for m, s in logger.metrics if "at_start" in m] == [({"at_start": 123.0, "epoch": 0}, 1)]
