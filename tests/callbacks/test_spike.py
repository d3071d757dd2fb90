"""SpikeDetection: a loss far above its recent mean stops training and records the batches to skip."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.callbacks import SpikeDetection
from fulmen.lite import Lite
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.spike import SpikeDetection as LoopSpikeDetection
from fulmen.utilities.spike import TrainingSpikeException


class Scripted(L.LightningModule):
    """Its loss is ``losses[batch_idx]`` (times a weight fixed at 1 that still gets a gradient)."""

    def __init__(self, losses, as_dict=False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.losses, self.as_dict = losses, as_dict

    def training_step(self, batch, batch_idx):
        loss = self.weight * 0 + self.losses[batch_idx]
        return {"loss": loss.sum()} if self.as_dict else loss.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(tmp_path, callback):
    return L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.mark.parametrize("as_dict", [False, True])
def test_trainer_stops_at_the_spike_and_writes_the_batches(tmp_path, as_dict):
    losses = [1.0, 0.9, 1.0, 0.95, 10.0, 1.0]
    callback = SpikeDetection(exclude_batches_path=tmp_path)
    trainer = _trainer(tmp_path, callback)
    with pytest.raises(TrainingSpikeException, match="Training spike detected in batch 4"):
        trainer.fit(Scripted(losses, as_dict), DataLoader(torch.zeros(6, 1)))
    assert json.loads((tmp_path / "skip_batches.json").read_text()) == [3, 4]
    assert callback.bad_batches == [3, 4]


def test_no_spike_below_the_tolerances_and_improvements_never_spike(tmp_path):
    losses = [1.0, 2.5, 0.1, 0.2, 0.25, 1.0]  # 2.5 < 1.0 + 2 * 1.0; the drop is an improvement
    trainer = _trainer(tmp_path, SpikeDetection(exclude_batches_path=tmp_path / "x.json", atol=0.5))
    trainer.fit(Scripted(losses), DataLoader(torch.zeros(6, 1)))
    assert trainer.global_step == 6 and not (tmp_path / "x.json").exists()


def test_non_finite_loss_is_a_spike_unless_finite_only_is_off(tmp_path):
    losses = [1.0, 1.0, float("nan"), 1.0]
    with pytest.raises(TrainingSpikeException, match="batch 2"):
        _trainer(tmp_path, SpikeDetection(exclude_batches_path=tmp_path)).fit(
            Scripted(losses), DataLoader(torch.zeros(4, 1))
        )
    lenient = SpikeDetection(exclude_batches_path=tmp_path / "b", finite_only=False)
    trainer = _trainer(tmp_path, lenient)
    trainer.fit(Scripted(losses), DataLoader(torch.zeros(4, 1)))
    assert trainer.global_step == 4 and list(lenient._recent) == [1.0, 1.0, 1.0]


def test_trainer_callback_needs_the_loss(tmp_path):
    class NoLoss(Scripted):
        def training_step(self, batch, batch_idx):
            self.manual_backward(self.weight.sum())
            return None

        def __init__(self):
            super().__init__([0.0])
            self.automatic_optimization = False

    with pytest.raises(TypeError, match="SpikeDetection needs the loss"):
        _trainer(tmp_path, SpikeDetection()).fit(NoLoss(), DataLoader(torch.zeros(1, 1)))


def test_lite_callback_and_state(tmp_path):
    detection = LoopSpikeDetection(mode="max", window=2, warmup=0, rtol=None, atol=1.0, exclude_batches_path=tmp_path)
    lite = Lite(accelerator="cpu", devices=1, callbacks=[detection])
    for batch_idx, value in enumerate([5.0, 6.0, 4.5]):  # max mode: rising is better; 4.5 falls by >= 1
        if batch_idx < 2:
            lite.call("on_train_batch_end", lite, torch.tensor(value), None, batch_idx)
    state = detection.state_dict()
    assert state["recent"] == [5.0, 6.0] and state["last_val"] == 6.0
    with pytest.raises(TrainingSpikeException):
        lite.call("on_train_batch_end", fabric=lite, loss=torch.tensor(4.5), batch=None, batch_idx=2)
    restored = LoopSpikeDetection(window=2)
    restored.load_state_dict(detection.state_dict())
    assert restored.bad_batches == [1, 2] and restored.mode == "max" and list(restored._recent) == [5.0, 6.0]
    with pytest.raises(MisconfigurationException, match="mode"):
        LoopSpikeDetection(mode="up")
