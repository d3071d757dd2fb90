"""Profilers in the Trainer: the phases by name, files per call, the cost of a profiler that is off."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

import fulmen
from fulmen import Trainer
from fulmen.callbacks import Callback, LambdaCallback
from fulmen.profilers import AdvancedProfiler, PassThroughProfiler, PyTorchProfiler, SimpleProfiler
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import BoringDataModule, BoringModel, loader, quiet


class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        with self.trainer.profiler.profile("my_training_code"):
            return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self):
        pass


class Probe(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with trainer.profiler.profile("my_callback_code"):
            pass


class DataModule(BoringDataModule):
    def setup(self, stage):
        pass


def _rows(report: str) -> dict[str, int]:
    """Action -> number of calls, read from a SimpleProfiler table."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 5 and cells[0] not in ("Action", "Total"):
            rows[cells[0]] = int(cells[2])
    return rows


def test_fit_reports_the_trainer_phases_by_name_with_their_call_counts(tmp_path):
    profiler = SimpleProfiler(dirpath=tmp_path, filename="perf")
    callbacks = [Probe(), LambdaCallback(on_train_epoch_start=lambda trainer, module: None)]
    flags = quiet(max_epochs=2, limit_val_batches=2, num_sanity_val_steps=0)
    trainer = Trainer(**flags, profiler=profiler, callbacks=callbacks)
    trainer.fit(Model(), datamodule=DataModule(length=32, batch_size=8))  # 4 batches per epoch
    rows = _rows((tmp_path / "fit-perf.txt").read_text())
    assert rows["run_training_epoch"] == 2
    assert rows["run_training_batch"] == 8
    assert rows["[Strategy]SingleDeviceStrategy.training_step"] == 8
    assert rows["[Strategy]SingleDeviceStrategy.backward"] == 8
    assert rows["[Strategy]SingleDeviceStrategy.optimizer_step"] == 8
    assert rows["[_TrainingEpochLoop].train_dataloader_next"] >= 8
    assert rows["[Callback]Probe.on_train_batch_end"] == 8
    assert rows["[Callback]LambdaCallback.on_train_epoch_start"] == 2
    assert rows["[LightningModule]Model.on_train_epoch_end"] == 2
    assert rows["[LightningDataModule]DataModule.setup"] == 1
    assert rows["[Strategy]SingleDeviceStrategy.validation_step"] == 4  # 2 batches, 2 epochs
    assert rows["[_EvaluationLoop].val_next"] >= 4
    assert rows["my_training_code"] == 8 and rows["my_callback_code"] == 8
    assert trainer.global_step == 8  # profiling changed nothing about training

    trainer.validate(Model(), datamodule=BoringDataModule(length=32, batch_size=8), verbose=False)
    rows = _rows((tmp_path / "validate-perf.txt").read_text())
    assert rows["[Strategy]SingleDeviceStrategy.validation_step"] == 2
    assert "run_training_batch" not in rows  # each call reports its own actions


def test_profiler_by_name_prints_the_table_after_fit(capsys):
    trainer = Trainer(**quiet(max_steps=3), profiler="Simple")
    assert isinstance(trainer.profiler, SimpleProfiler)
    trainer.fit(BoringModel(), loader(32))
    out = capsys.readouterr().out
    assert "FIT Profiler Report" in out and "run_training_batch" in out


def test_the_report_file_defaults_to_the_log_dir(tmp_path):
    trainer = Trainer(**quiet(max_steps=2, default_root_dir=str(tmp_path)), profiler=SimpleProfiler(filename="perf"))
    trainer.fit(BoringModel(), loader(32))
    assert (tmp_path / "fit-perf.txt").exists()


def test_predict_and_test_are_profiled_too(tmp_path):
    profiler = SimpleProfiler(dirpath=tmp_path, filename="p")
    trainer = Trainer(**quiet(limit_test_batches=3, limit_predict_batches=2), profiler=profiler)
    trainer.test(BoringModel(), loader(32), verbose=False)
    trainer.predict(BoringModel(), loader(32))
    test_rows = _rows((tmp_path / "test-p.txt").read_text())
    predict_rows = _rows((tmp_path / "predict-p.txt").read_text())
    assert test_rows["[Strategy]SingleDeviceStrategy.test_step"] == 3
    assert test_rows["[_EvaluationLoop].test_next"] >= 3
    assert predict_rows["[Strategy]SingleDeviceStrategy.predict_step"] == 2
    assert predict_rows["[_PredictionLoop].predict_next"] >= 2


def test_advanced_profiler_in_fit(tmp_path):
    trainer = Trainer(**quiet(max_steps=3), profiler=AdvancedProfiler(dirpath=tmp_path, filename="adv"))
    trainer.fit(BoringModel(), loader(32))
    report = (tmp_path / "fit-adv.txt").read_text()
    assert "Profile stats for: [Strategy]SingleDeviceStrategy.training_step" in report
    assert "Profile stats for: run_training_batch" in report
    assert "ncalls" in report and "cumulative" in report


def test_pytorch_profiler_in_fit_writes_a_trace_with_the_phases(tmp_path):
    profiler = PyTorchProfiler(dirpath=tmp_path, record_shapes=True, profile_memory=True)
    trainer = Trainer(**quiet(max_steps=6), profiler=profiler)
    trainer.fit(BoringModel(), loader(64))
    [trace] = profiler.trace_paths
    names = {event.get("name") for event in json.loads(open(trace).read())["traceEvents"]}
    phases = ("training_step", "backward", "optimizer_step")
    assert {"run_training_batch", *(f"[Strategy]SingleDeviceStrategy.{phase}" for phase in phases)} <= names
    assert any(name and name.startswith("aten::") for name in names)


def test_a_failed_fit_stops_recording(tmp_path):
    class Failing(BoringModel):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    profiler = PyTorchProfiler(dirpath=tmp_path)
    trainer = Trainer(**quiet(max_steps=4), profiler=profiler)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), loader(64))
    assert profiler._profiler is None and not profiler._ranges  # a later torch.profiler may start
    with torch.profiler.profile() as other:
        torch.ones(2) + 1
    assert other.events()


def test_invalid_profiler_arguments():
    with pytest.raises(MisconfigurationException, match="`profiler='fancy'`.*'simple', 'advanced', 'pytorch'"):
        Trainer(**quiet(), profiler="fancy")
    with pytest.raises(MisconfigurationException, match="`profiler=3`"):
        Trainer(**quiet(), profiler=3)
    with pytest.raises(MisconfigurationException, match="barebones"):
        Trainer(accelerator="cpu", devices=1, barebones=True, profiler="simple")


def _profiler_calls(steps: int, profiler) -> int:
    """Python calls into fulmen's profiling code while one fit of ``steps`` steps runs (one epoch)."""
    package = os.path.dirname(fulmen.__file__)
    watched = (os.path.join(package, "profilers"), os.path.join(package, "trainer", "profiling.py"))
    count = 0

    def tally(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_filename.startswith(watched):
            count += 1

    torch.manual_seed(0)
    trainer = Trainer(**quiet(max_steps=steps), profiler=profiler)
    module = BoringModel()
    data = loader(8 * (2 * steps + 4))
    sys.setprofile(tally)
    try:
        trainer.fit(module, data)
    finally:
        sys.setprofile(None)
    assert trainer.global_step == steps
    return count


def test_a_profiler_that_is_off_costs_no_call_per_step():
    _profiler_calls(2, None)  # warm-up: first-call work (lazy imports) stays out of the counts
    off = {steps: _profiler_calls(steps, None) for steps in (5, 10)}
    assert off[10] - off[5] == 0  # a fixed handful per call and per epoch, nothing per step
    assert off[5] < 40
    on = {steps: _profiler_calls(steps, SimpleProfiler()) for steps in (5, 10)}
    assert on[10] - on[5] >= 5 * 10  # the counter does see profiling when it is on
    assert isinstance(Trainer(**quiet()).profiler, PassThroughProfiler)
