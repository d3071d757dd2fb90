"""EarlyStopping on the real Trainer: scripted values, the epoch it stops at, its state, its errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.early_stopping import EarlyStopping
from fulmen.utilities.exceptions import MisconfigurationException


class Scripted(L.LightningModule):
    """Logs ``values[current_epoch]`` as ``name`` in validation (or at train epoch end)."""

    def __init__(self, values, name="val_loss", in_validation=True):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.values = values
        self.name = name
        self.in_validation = in_validation
        self.checks = 0

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        if self.in_validation:
            self.log(self.name, float(self.values[self.current_epoch]))

    def on_train_epoch_end(self):
        if not self.in_validation:
            self.log(self.name, float(self.values[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def loader(n=4):
    return DataLoader(TensorDataset(torch.ones(n, 2)), batch_size=2)


def trainer(tmp_path, callbacks, max_epochs=10, **kwargs):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


def test_stops_at_the_epoch_patience_runs_out(tmp_path):
    es = EarlyStopping("val_loss", patience=2)
    t = trainer(tmp_path, [es])
    # improve, improve, worse (wait 1), worse (wait 2 -> stop), never reached
    t.fit(Scripted([1.0, 0.9, 0.95, 0.96, 0.1, 0.1]), loader(), loader())
    assert es.stopped_epoch == 3
    assert t.current_epoch == 4  # epochs 0..3 completed
    assert es.wait_count == 2
    assert es.best_score.item() == pytest.approx(0.9)
    assert t.should_stop


def test_improvement_resets_the_wait(tmp_path):
    es = EarlyStopping("val_loss", patience=2)
    t = trainer(tmp_path, [es], max_epochs=6)
    t.fit(Scripted([1.0, 1.1, 0.5, 0.6, 0.4, 0.45]), loader(), loader())
    assert not t.should_stop
    assert t.current_epoch == 6
    assert es.wait_count == 1
    assert es.best_score.item() == pytest.approx(0.4)


def test_mode_max_with_min_delta(tmp_path):
    es = EarlyStopping("acc", mode="max", min_delta=0.05, patience=1)
    t = trainer(tmp_path, [es])
    # 0.55 is not 0.05 better than 0.5, so the first non-improvement stops at epoch 1
    t.fit(Scripted([0.5, 0.55, 0.9], name="acc"), loader(), loader())
    assert es.stopped_epoch == 1
    assert t.current_epoch == 2
    assert es.best_score.item() == pytest.approx(0.5)


def test_checks_at_train_epoch_end_without_validation(tmp_path):
    es = EarlyStopping("train_metric", patience=1)
    t = trainer(tmp_path, [es])
    t.fit(Scripted([3.0, 2.0, 2.5, 1.0], name="train_metric", in_validation=False), loader())
    assert es.stopped_epoch == 2
    assert t.current_epoch == 3


def test_checks_after_each_validation_when_it_runs_mid_epoch(tmp_path):
    es = EarlyStopping("val_loss", patience=3)
    seen = []

    class Recording(Scripted):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", 1.0)  # never improves after the first check

        def on_validation_end(self):
            seen.append((self.current_epoch, es.wait_count))

    t = trainer(tmp_path, [es], val_check_interval=0.5)
    t.fit(Recording([0]), loader(8), loader())
    # two validations per epoch, one check after each: 1 improvement then 3 waits -> stop in epoch 1
    assert es.stopped_epoch == 1
    assert t.current_epoch == 2
    assert [w for _, w in seen] == [0, 1, 2, 3]


def test_validation_turned_off_checks_at_train_epoch_end(tmp_path):
    es = EarlyStopping("train_metric", patience=1)
    t = trainer(tmp_path, [es], val_check_interval=0.5, limit_val_batches=0)
    t.fit(Scripted([3.0, 2.0, 2.5, 1.0], name="train_metric", in_validation=False), loader(8), loader())
    assert es.stopped_epoch == 2


def test_forced_check_point(tmp_path):
    es = EarlyStopping("val_loss", patience=1, check_on_train_epoch_end=False)
    t = trainer(tmp_path, [es])
    t.fit(Scripted([1.0, 2.0, 0.5]), loader(), loader())
    assert es.stopped_epoch == 1
    assert es._check_on_train_epoch_end is False


def test_strict_missing_monitor_names_key_and_available_metrics(tmp_path):
    es = EarlyStopping("val_acc")
    t = trainer(tmp_path, [es], max_epochs=2)
    with pytest.raises(RuntimeError, match="val_acc") as err:
        t.fit(Scripted([1.0, 1.0]), loader(), loader())
    assert "`val_loss`" in str(err.value)  # the available metric is listed
    assert "strict=False" in str(err.value)


def test_non_strict_missing_monitor_is_skipped(tmp_path):
    es = EarlyStopping("val_acc", strict=False)
    t = trainer(tmp_path, [es], max_epochs=3)
    t.fit(Scripted([1.0, 1.0, 1.0]), loader(), loader())
    assert t.current_epoch == 3
    assert es.wait_count == 0


def test_non_finite_value_stops_at_once(tmp_path):
    es = EarlyStopping("val_loss", patience=10)
    t = trainer(tmp_path, [es])
    t.fit(Scripted([1.0, math.nan, 0.5]), loader(), loader())
    assert es.stopped_epoch == 1
    assert t.current_epoch == 2


@pytest.mark.parametrize(
    ("kwargs", "values", "epoch"),
    [
        ({"stopping_threshold": 0.5}, [1.0, 0.7, 0.4, 0.3], 2),
        ({"divergence_threshold": 5.0}, [1.0, 0.7, 6.0, 0.3], 2),
    ],
)
def test_thresholds(tmp_path, kwargs, values, epoch):
    es = EarlyStopping("val_loss", patience=10, **kwargs)
    t = trainer(tmp_path, [es])
    t.fit(Scripted(values), loader(), loader())
    assert es.stopped_epoch == epoch


def test_verbose_logs_the_reason(tmp_path, caplog):
    es = EarlyStopping("val_loss", patience=1, verbose=True)
    t = trainer(tmp_path, [es])
    with caplog.at_level("INFO", logger="fulmen"):
        t.fit(Scripted([1.0, 2.0]), loader(), loader())
    assert "did not improve in the last 1 records" in caplog.text
    assert "Best score: 1.000" in caplog.text


def test_state_round_trip():
    es = EarlyStopping("val_loss", patience=4)
    es.wait_count, es.stopped_epoch, es.best_score = 2, 7, torch.tensor(0.25)
    other = EarlyStopping("val_loss")
    other.load_state_dict(es.state_dict())
    assert (other.wait_count, other.stopped_epoch, other.patience) == (2, 7, 4)
    assert other.best_score.item() == 0.25
    assert es.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"


def test_resumed_run_continues_counting(tmp_path):
    values = [1.0, 0.5, 0.6, 0.7, 0.1]
    es = EarlyStopping("val_loss", patience=2)
    t = trainer(tmp_path, [es], max_epochs=3)
    module = Scripted(values)
    t.fit(module, loader(), loader())
    assert es.wait_count == 1
    path = tmp_path / "resume.ckpt"
    t.save_checkpoint(path)

    resumed = EarlyStopping("val_loss", patience=2)
    t2 = trainer(tmp_path, [resumed], max_epochs=5)
    t2.fit(Scripted(values), loader(), loader(), ckpt_path=str(path))
    # a fresh callback would take 0.7 as its first best; the restored one counts its second miss
    assert resumed.stopped_epoch == 3
    assert resumed.best_score.item() == pytest.approx(0.5)
    assert t2.current_epoch == 4


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "avg"}, "mode"),
        ({"patience": -1}, "patience"),
        ({"min_delta": math.inf}, "min_delta"),
        ({"check_on_train_epoch_end": "yes"}, "check_on_train_epoch_end"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        EarlyStopping("val_loss", **kwargs)


def test_invalid_mode_says_what_lightning_says():
    with pytest.raises(MisconfigurationException, match="`mode` can be min, max, got avg"):
        EarlyStopping("val_loss", mode="avg")
