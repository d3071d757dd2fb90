"""TQDMProgressBar on the real Trainer: what it prints, and how rarely it reads (and syncs) metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import fulmen as L
from fulmen.callbacks.progress import ProgressBar, TQDMProgressBar, _format_value
from fulmen.loggers import CSVLogger
from fulmen.strategies.strategy import Strategy
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        self.log("my_metric", 0.25, prog_bar=True)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_metric", 4.0, prog_bar=True)

    def test_step(self, batch, batch_idx):
        pass

    def predict_step(self, batch, batch_idx):
        return batch[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class Counting(TQDMProgressBar):
    """Counts metric reads from the per-batch path separately from the epoch-end ones."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batch_reads = []
        self.other_reads = 0
        self._batch = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batch = batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._batch = None

    def get_metrics(self, trainer, pl_module):
        if self._batch is None:
            self.other_reads += 1
        else:
            self.batch_reads.append(self._batch)
        return super().get_metrics(trainer, pl_module)


def loader(n):
    return DataLoader(TensorDataset(torch.ones(n, 2)), batch_size=1)


def trainer(tmp_path, callbacks, max_epochs=2, logger=False, **kwargs):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


@pytest.mark.parametrize(("n", "refresh_rate"), [(10, 3), (9, 3), (5, 1), (4, 10)])
def test_metrics_are_read_only_when_the_bar_redraws(tmp_path, capsys, monkeypatch, n, refresh_rate):
    reads = []
    original = L.Trainer.progress_bar_metrics

    def counted(self):
        reads.append(self.current_epoch)
        return original.fget(self)

    # progress_bar_metrics is where values become Python numbers (a device sync each)
    monkeypatch.setattr(L.Trainer, "progress_bar_metrics", property(counted))
    bar = Counting(refresh_rate=refresh_rate)
    bar.min_interval = 0.0  # count by batches alone
    trainer(tmp_path, [bar]).fit(Model(), loader(n))
    per_epoch = [i - 1 for i in range(1, n + 1) if i % refresh_rate == 0 or i == n]
    assert len(per_epoch) == math.ceil(n / refresh_rate)
    assert bar.batch_reads == per_epoch * 2
    assert bar.other_reads == 2  # once at each epoch end, for the epoch-level values
    assert len(reads) == len(bar.batch_reads) + bar.other_reads
    out = capsys.readouterr().out
    assert "my_metric=0.250" in out
    assert "Epoch 1: 100%" in out and f"{n}/{n}" in out


def test_redraws_are_throttled_in_time_but_the_last_batch_is_drawn(tmp_path, capsys):
    bar = Counting(refresh_rate=1)
    bar.min_interval = 3600.0  # nothing but each epoch's first and last batch can redraw
    trainer(tmp_path, [bar]).fit(Model(), loader(20))
    assert bar.batch_reads == [0, 19, 19]  # first batch ever, then only the last of each epoch
    assert "20/20" in capsys.readouterr().out


def test_validation_and_sanity_bars(tmp_path, capsys):
    trainer(tmp_path, [TQDMProgressBar()], max_epochs=1).fit(Model(), loader(2), loader(3))
    out = capsys.readouterr().out
    assert "Sanity Checking" in out and "2/2" in out
    assert "Validation" in out and "3/3" in out
    assert "val_metric=4.000" in out  # validation values join the training bar's postfix


def test_several_validation_dataloaders_are_named(tmp_path, capsys):
    trainer(tmp_path, [TQDMProgressBar()], max_epochs=1, num_sanity_val_steps=0).fit(
        Model(), loader(2), [loader(1), loader(2)]
    )
    out = capsys.readouterr().out
    assert "Validation DataLoader 0" in out and "Validation DataLoader 1" in out


def test_test_and_predict_bars(tmp_path, capsys):
    t = trainer(tmp_path, [TQDMProgressBar()])
    t.test(Model(), loader(3), verbose=False)
    t.predict(Model(), loader(2))
    out = capsys.readouterr().out
    assert "Testing" in out and "3/3" in out
    assert "Predicting" in out and "2/2" in out


def test_loader_without_length(tmp_path, capsys):
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.ones(5, 2))

    bar = TQDMProgressBar()
    trainer(tmp_path, [bar], max_epochs=1).fit(Model(), DataLoader(Stream(), batch_size=1))
    assert "5it" in capsys.readouterr().out


def test_bars_stay_readable_after_the_run_and_max_steps_is_the_total_without_a_length(tmp_path):
    class Endless(IterableDataset):
        def __iter__(self):
            while True:
                yield torch.ones(2)

    bar = TQDMProgressBar()
    t = trainer(tmp_path, [bar], max_epochs=-1, max_steps=7)
    t.fit(Model(), DataLoader(Endless(), batch_size=1))
    assert bar.train_progress_bar.total == 7 and bar.train_progress_bar.n == 7
    assert bar.train_progress_bar.disable  # closed: nothing redraws it
    t.test(Model(), loader(3), verbose=False)
    assert bar.test_progress_bar.total == 3 and bar.test_progress_bar.n == 3


def test_total_val_batches_is_zero_in_epochs_that_do_not_validate(tmp_path):
    class Totals(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.seen.append(trainer.progress_bar_callback.total_val_batches)

    totals = Totals()
    t = trainer(tmp_path, [TQDMProgressBar(), totals], max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=0)
    t.fit(Model(), loader(2), loader(3))
    assert totals.seen == [0, 3, 0, 3]


@pytest.mark.parametrize("switch", ["refresh_rate_zero", "disable", "other_rank"])
def test_nothing_is_drawn_when_off(tmp_path, capsys, monkeypatch, switch):
    if switch == "refresh_rate_zero":
        bar = Counting(refresh_rate=0)
    else:
        bar = Counting()
    if switch == "disable":
        bar.disable()
        assert bar.is_disabled
    if switch == "other_rank":
        monkeypatch.setattr(Strategy, "is_global_zero", property(lambda self: False))
    trainer(tmp_path, [bar]).fit(Model(), loader(3))
    assert "Epoch" not in capsys.readouterr().out
    assert bar.batch_reads == [] and bar.other_reads == 0
    bar.enable()
    assert bar.is_enabled == (switch != "refresh_rate_zero")


def test_get_metrics_shows_the_logger_version(tmp_path):
    seen = {}

    class Peek(TQDMProgressBar):
        def on_train_end(self, trainer, pl_module):
            seen.update(self.get_metrics(trainer, pl_module))
            super().on_train_end(trainer, pl_module)

    t = trainer(tmp_path, [Peek()], max_epochs=1, logger=CSVLogger(tmp_path, version=7), log_every_n_steps=1)
    t.fit(Model(), loader(2))
    assert seen == {"v_num": 7, "my_metric": 0.25}
    seen.clear()
    t = trainer(tmp_path, [Peek()], max_epochs=1, logger=CSVLogger(tmp_path, version="run_abcdef"), log_every_n_steps=1)
    t.fit(Model(), loader(2))
    assert seen["v_num"] == "cdef"


def test_leave_keeps_one_finished_bar_per_epoch(tmp_path, capsys):
    trainer(tmp_path, [TQDMProgressBar(leave=True)], max_epochs=2).fit(Model(), loader(2))
    lines = capsys.readouterr().out.split("\n")
    finished = [line.rsplit("\r", 1)[-1] for line in lines if "2/2" in line]
    assert [line.split(":")[0] for line in finished] == ["Epoch 0", "Epoch 1"]


def test_base_class_is_a_replaceable_progress_bar(tmp_path):
    class Quiet(ProgressBar):
        pass

    t = trainer(tmp_path, [Quiet()], max_epochs=1)
    t.fit(Model(), loader(2))
    assert isinstance(t.progress_bar_callback, Quiet)
    assert not any(isinstance(cb, TQDMProgressBar) for cb in t.callbacks)


def test_formatting():
    assert [_format_value(v) for v in (2.0, 0.25, 123456.0, 1e-5, 7, "x", math.nan)] == [
        "2.000", "0.250", "1.23e+05", "1e-05", "7", "x", "nan"
    ]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "name"), [({"refresh_rate": -1}, "refresh_rate"), ({"leave": 1}, "leave")])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        TQDMProgressBar(**kwargs)
