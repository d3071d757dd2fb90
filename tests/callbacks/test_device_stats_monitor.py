"""DeviceStatsMonitor on the real Trainer: values read back from a CSVLogger's metrics.csv."""

from __future__ import annotations

import csv

import pytest
import torch
from tests.callbacks.resume_helpers import loaders, quiet_trainer, stop_and_resume
from torch import nn

import fulmen as L
from fulmen.callbacks import DeviceStatsMonitor
from fulmen.callbacks import device_stats_monitor as module_under_test
from fulmen.loggers import CSVLogger
from fulmen.utilities.exceptions import MisconfigurationException

PREFIX = "DeviceStatsMonitor.on_train_batch_end/"


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def rows(tmp_path):
    with open(tmp_path / "stats" / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def fit(tmp_path, monitor, **flags):
    logger = CSVLogger(tmp_path, name="stats", version=0)
    trainer = quiet_trainer(tmp_path, [monitor], logger=logger, max_epochs=1, **flags)
    trainer.fit(Net(), *loaders())
    return trainer


def test_cpu_stats_logged_on_logging_steps(tmp_path):
    fit(tmp_path, DeviceStatsMonitor(), log_every_n_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    logged = rows(tmp_path)
    train = [r for r in logged if r.get(PREFIX + "cpu_peak_rss_mb")]
    # 8 batches, logged when (batches_that_stepped + 1) % 2 == 0: before steps 1, 3, 5, 7 (0-based)
    assert [int(r["step"]) for r in train] == [1, 3, 5, 7]
    for row in train:
        assert float(row[PREFIX + "cpu_peak_rss_mb"]) > 10  # a Python process with torch holds more
        assert 0 <= float(row[PREFIX + "cpu_vm_percent"]) <= 100
        assert 0 <= float(row[PREFIX + "cpu_percent"]) <= 100 * torch.get_num_threads() * 64
        assert row[PREFIX + "cpu_swap_percent"] != ""
    names = {k for r in logged for k, v in r.items() if v}
    assert "DeviceStatsMonitor.on_train_batch_start/cpu_vm_percent" in names
    assert "DeviceStatsMonitor.on_validation_batch_end/cpu_vm_percent" in names


def test_filter_keys_and_cpu_stats_off(tmp_path):
    with pytest.warns(UserWarning, match="no statistics named \\['nope'\\]"):
        fit(tmp_path, DeviceStatsMonitor(filter_keys={"cpu_vm_percent", "nope"}), log_every_n_steps=1)
    names = {k for r in rows(tmp_path) for k, v in r.items() if v and k.startswith("DeviceStats")}
    assert names and all(k.endswith("/cpu_vm_percent") for k in names)
    off = tmp_path / "off"
    fit(off, DeviceStatsMonitor(cpu_stats=False), log_every_n_steps=1, limit_val_batches=0)
    assert not (off / "stats" / "version_0" / "metrics.csv").exists() or not any(
        k.startswith("DeviceStats") for r in rows(off) for k, v in r.items() if v
    )


def test_test_loop_is_monitored(tmp_path):
    logger = CSVLogger(tmp_path, name="stats", version=0)
    quiet_trainer(tmp_path, [DeviceStatsMonitor()], logger=logger, log_every_n_steps=1).test(Net(), loaders()[1])
    names = {k for r in rows(tmp_path) for k, v in r.items() if v}
    assert "DeviceStatsMonitor.on_test_batch_end/cpu_peak_rss_mb" in names


def test_needs_a_logger_and_psutil_when_asked(tmp_path, monkeypatch):
    with pytest.raises(MisconfigurationException, match="logger"):
        quiet_trainer(tmp_path, [DeviceStatsMonitor()], logger=False).fit(Net(), *loaders())
    monkeypatch.setattr(module_under_test, "psutil_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fulmen\[psutil\]'"):
        fit(tmp_path, DeviceStatsMonitor(cpu_stats=True))
    with pytest.warns(UserWarning, match="psutil"):  # on the CPU it falls back to the process's peak memory
        fit(tmp_path / "fallback", DeviceStatsMonitor(), log_every_n_steps=1, limit_val_batches=0)


@pytest.mark.filterwarnings("ignore:Experiment logs directory")  # the resumed run logs where the first did
def test_does_not_disturb_exact_resume(tmp_path):
    stop_and_resume(
        tmp_path,
        Net,
        lambda: [DeviceStatsMonitor(cpu_stats=True)],
        stops=[("batch", 5), ("validation", 12)],
        make_logger=lambda root: CSVLogger(root, name="stats", version=0),
        log_every_n_steps=1,
        val_check_interval=4,
    )


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"cpu_stats": "yes"}, "cpu_stats"), ({"filter_keys": "cpu_percent"}, "filter_keys")]
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        DeviceStatsMonitor(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_stats(tmp_path):
    logger = CSVLogger(tmp_path, name="stats", version=0)
    trainer = quiet_trainer(
        tmp_path, [DeviceStatsMonitor(cpu_stats=True)], logger=logger, accelerator="cuda", max_epochs=1
    )
    trainer.fit(Net(), *loaders())
    train = [r for r in rows(tmp_path) if r.get(PREFIX + "cuda_memory_allocated_mb")]
    assert train
    assert all(float(r[PREFIX + "cuda_memory_allocated_mb"]) > 0 for r in train)
    assert all(r[PREFIX + "cpu_vm_percent"] for r in train)
