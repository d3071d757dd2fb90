"""Timer on the real Trainer: it measures each stage, stops a run when the budget is spent, resumes counting."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.timer import Timer
from fulmen.utilities.exceptions import MisconfigurationException


class Slow(L.LightningModule):
    def __init__(self, delay=0.0):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.delay = delay

    def training_step(self, batch, batch_idx):
        time.sleep(self.delay)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("v", self.layer(batch[0]).sum())

    def test_step(self, batch, batch_idx):
        self.log("t", self.layer(batch[0]).sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n=8):
    return DataLoader(TensorDataset(torch.ones(n, 2)), batch_size=1)


def trainer(tmp_path, timer, max_epochs=100):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[timer],
    )


def test_stops_the_run_when_the_duration_is_spent(tmp_path, caplog):
    timer = Timer(duration=timedelta(seconds=0.2), interval="step")
    t = trainer(tmp_path, timer)
    with caplog.at_level("INFO", logger="fulmen"):
        t.fit(Slow(delay=0.02), loader())
    # at 20 ms a step, 0.2 s is about 10 steps: far from the 800 that 100 epochs would take
    assert 5 <= t.global_step <= 30
    assert t.current_epoch < 5
    assert timer.time_elapsed("train") >= 0.2
    assert timer.time_remaining() <= 0
    assert "Time limit reached" in caplog.text


def test_epoch_interval_finishes_the_epoch(tmp_path):
    timer = Timer(duration={"seconds": 0.05}, interval="epoch")
    t = trainer(tmp_path, timer)
    t.fit(Slow(delay=0.01), loader())
    assert t.global_step == 8  # checked only at the end of the first epoch
    assert t.current_epoch == 1


def test_measures_every_stage(tmp_path):
    timer = Timer()
    t = trainer(tmp_path, timer, max_epochs=1)
    assert timer.start_time("train") is None and timer.time_elapsed("train") == 0.0
    t.fit(Slow(), loader(), loader(2))
    t.test(t.lightning_module, loader(2), verbose=False)
    for stage in ("train", "validate", "test"):
        assert timer.start_time(stage) is not None
        assert timer.end_time(stage) >= timer.start_time(stage)
        assert timer.time_elapsed(stage) == pytest.approx(timer.end_time(stage) - timer.start_time(stage))
    assert timer.time_elapsed("train") >= timer.time_elapsed("validate")  # fit includes its validation
    assert timer.time_remaining() is None
    assert timer.start_time("predict") is None


def test_resumed_timer_keeps_counting(tmp_path):
    timer = Timer(duration="00:00:01:00")
    timer.load_state_dict({"time_elapsed": {"train": 61.0}})
    assert timer.time_elapsed() == 61.0
    t = trainer(tmp_path, timer)
    t.fit(Slow(), loader())
    # the budget was spent before this process started: no step is taken
    assert t.global_step == 0
    assert timer.state_dict()["time_elapsed"]["train"] >= 61.0


def test_state_round_trip_through_a_checkpoint(tmp_path):
    timer = Timer(duration={"hours": 1})
    t = trainer(tmp_path, timer, max_epochs=1)
    t.fit(Slow(), loader())
    spent = timer.time_elapsed()
    path = tmp_path / "t.ckpt"
    t.save_checkpoint(path)
    resumed = Timer(duration={"hours": 1})
    t2 = trainer(tmp_path, resumed, max_epochs=2)
    t2.fit(Slow(), loader(), ckpt_path=str(path))
    assert resumed.time_elapsed() > spent
    assert resumed._offset == pytest.approx(spent)


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("01:02:03:04", 93784), (" 00:00:00:05 ", 5), (timedelta(minutes=2), 120), ({"hours": 1, "minutes": 1}, 3660)],
)
def test_duration_forms(duration, seconds):
    assert Timer(duration).duration == seconds


@pytest.mark.parametrize("duration", ["1:00:00", "00:00:00:xx", {"weeks": "x"}, 10])
def test_invalid_duration(duration):
    with pytest.raises(MisconfigurationException, match="`duration=.*DD:HH:MM:SS"):
        Timer(duration)


def test_invalid_string_duration_says_what_lightning_says():
    with pytest.raises(MisconfigurationException, match="Expected a string in the format DD:HH:MM:SS"):
        Timer("60 minutes")


def test_invalid_interval_and_stage():
    with pytest.raises(MisconfigurationException, match="Unsupported parameter value `Timer.interval=batch.`"):
        Timer(interval="batch")
    with pytest.raises(MisconfigurationException, match="`interval='batch'`.*'step', 'epoch'"):
        Timer(interval="batch")
    with pytest.raises(MisconfigurationException, match="`stage='fit'`"):
        Timer().time_elapsed("fit")


def test_validate_time_counts_the_sanity_check_when_no_validation_follows(tmp_path):
    timer = Timer()
    t = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[timer],
    )
    t.fit(Slow(delay=0.01), loader(), loader(2))  # max_steps ends fit before its first validation
    assert timer.time_elapsed("sanity_check") > 0
    assert timer.time_elapsed("validate") > 0  # as in Lightning: the latest validation run, sanity check included
