"""Fabric's Throughput and ThroughputMonitor: rates over a rolling window, MFU, logged through Lite."""

from __future__ import annotations

import pytest

from fulmen.lite import Lite
from fulmen.utilities import Throughput, ThroughputMonitor
from fulmen.utilities.exceptions import MisconfigurationException


class Recorder:
    def __init__(self) -> None:
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def finalize(self, status):
        pass


def test_throughput_rates_and_mfu():
    throughput = Throughput(available_flops=100.0, world_size=2, window_size=3)
    for i in range(3):
        throughput.update(time=float(i), batches=i + 1, samples=(i + 1) * 8, flops=50.0)
    metrics = throughput.compute()
    assert metrics["device/batches_per_sec"] == 1.0 and metrics["batches_per_sec"] == 2.0
    assert metrics["device/samples_per_sec"] == 8.0 and metrics["samples_per_sec"] == 16.0
    assert metrics["device/flops_per_sec"] == 50.0 and metrics["device/mfu"] == metrics["mfu"] == 0.5
    with pytest.raises(MisconfigurationException, match="available_flops"):
        Throughput(available_flops=0)


def test_throughput_monitor_logs_through_lite():
    recorder = Recorder()
    lite = Lite(accelerator="cpu", devices=1, loggers=[recorder])
    monitor = ThroughputMonitor(lite, window_size=2)
    assert monitor.world_size == 1
    for i in range(3):
        monitor.update(time=float(i), batches=i + 1, samples=(i + 1) * 4)
        metrics = monitor.compute_and_log()
    assert [step for step, _ in recorder.calls] == [0, 1, 2]
    assert metrics["samples_per_sec"] == 4.0 and recorder.calls[-1][1]["samples_per_sec"] == 4.0
    monitor.compute_and_log(step=10)
    assert recorder.calls[-1][0] == 10
    with pytest.raises(MisconfigurationException, match="fabric"):
        ThroughputMonitor(object())
