"""ThroughputMonitor on the real Trainer: rates in metrics.csv, FLOPs declared or measured, the window."""

from __future__ import annotations

import csv
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import fulmen as L
from fulmen.callbacks.throughput_monitor import RollingWindow, Throughput, ThroughputMonitor
from fulmen.loggers import CSVLogger
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self, val_delay=0.0):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.val_delay = val_delay

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        time.sleep(self.val_delay)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Declared(Model):
    flops_per_batch = 1000


def loader(n=6, batch_size=4):
    return DataLoader(TensorDataset(torch.ones(n * batch_size, 4)), batch_size=batch_size)


def fit(tmp_path, monitor, model, val=None, max_epochs=1, **kwargs):
    t = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=CSVLogger(tmp_path, name="tp", version=0),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[monitor],
        **kwargs,
    )
    t.fit(model, loader(), val)
    with open(tmp_path / "tp" / "version_0" / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f)]


def values(rows, name):
    return [float(r[name]) for r in rows if r.get(name)]


def test_rates_over_the_window(tmp_path):
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: batch[0].shape[0], window_size=3)
    rows = fit(tmp_path, monitor, Declared())
    assert values(rows, "train/batches") == [1, 2, 3, 4, 5, 6]
    assert values(rows, "train/samples") == [4, 8, 12, 16, 20, 24]
    batches_per_sec = values(rows, "train/batches_per_sec")
    assert len(batches_per_sec) == 4  # from the third batch on, once the window is full
    samples_per_sec = values(rows, "train/samples_per_sec")
    flops_per_sec = values(rows, "train/flops_per_sec")
    for b, s, f in zip(batches_per_sec, samples_per_sec, flops_per_sec):
        assert s == pytest.approx(4 * b)  # constant batch size
        assert f == pytest.approx(1000 * b)  # declared flops per batch
    assert values(rows, "train/device/samples_per_sec") == samples_per_sec  # one process
    times = values(rows, "train/time")
    assert times == sorted(times)
    assert batches_per_sec[-1] == pytest.approx(2 / (times[-1] - times[-3]), rel=1e-3)


def test_flops_are_measured_when_not_declared(tmp_path):
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: 4, window_size=2)
    model = Model()
    rows = fit(tmp_path, monitor, model)
    reference = Model()
    with FlopCounterMode(display=False) as counter:
        reference.layer(torch.ones(4, 4)).sum().backward()
    assert monitor._measured_flops == counter.get_total_flops() > 0
    flops = values(rows, "train/device/flops_per_sec")
    batches = values(rows, "train/device/batches_per_sec")
    # the first batch is measured before its update, so FLOP rates start with the other rates
    assert len(flops) == len(batches) == 5
    assert flops[-1] == pytest.approx(counter.get_total_flops() * batches[-1])


def test_items_per_sec_with_length_fn(tmp_path):
    monitor = ThroughputMonitor(batch_size_fn=lambda b: 4, length_fn=lambda b: 4 * 7, window_size=2)
    rows = fit(tmp_path, monitor, Declared())
    for items, samples in zip(values(rows, "train/items_per_sec"), values(rows, "train/samples_per_sec")):
        assert items == pytest.approx(7 * samples)
    assert values(rows, "train/lengths")[-1] == 6 * 28


def test_validation_is_logged_and_not_counted_as_training_time(tmp_path):
    monitor = ThroughputMonitor(batch_size_fn=lambda b: 4, window_size=2)
    rows = fit(tmp_path, monitor, Declared(val_delay=0.1), val=loader(2), max_epochs=2)
    assert values(rows, "validate/batches") == [1, 2, 1, 2]  # totals restart each validation run
    assert len(values(rows, "validate/samples_per_sec")) == 2
    # 4 validation batches sleep 0.4 s in all; 12 tiny training batches take far less
    assert values(rows, "train/time")[-1] < 0.3


def test_accumulation_logs_once_per_optimizer_step(tmp_path):
    monitor = ThroughputMonitor(batch_size_fn=lambda b: 4, window_size=2)
    rows = fit(tmp_path, monitor, Declared(), accumulate_grad_batches=3)
    assert values(rows, "train/batches") == [3, 6]


def test_throughput_class():
    tp = Throughput(world_size=2, window_size=3)
    for i in range(4):
        tp.update(time=float(i), batches=i + 1, samples=10 * (i + 1), flops=5.0)
    metrics = tp.compute()
    assert metrics["time"] == 3.0 and metrics["samples"] == 40
    assert metrics["device/batches_per_sec"] == 1.0 and metrics["batches_per_sec"] == 2.0
    assert metrics["device/samples_per_sec"] == 10.0 and metrics["samples_per_sec"] == 20.0
    assert metrics["device/flops_per_sec"] == 5.0 and metrics["flops_per_sec"] == 10.0
    window = RollingWindow(2)
    window.append(1.0)
    assert not window.full
    window.append(4.0)
    window.append(9.0)
    assert window.full and (window.first, window.last, window.span()) == (4.0, 9.0, 5.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size_fn": 4}, "batch_size_fn"),
        ({"batch_size_fn": len, "length_fn": 3}, "length_fn"),
        ({"batch_size_fn": len, "window_size": 1}, "window_size"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        ThroughputMonitor(**kwargs)
