"""LearningRateMonitor on the real Trainer; values read back from a CSVLogger's metrics.csv."""

from __future__ import annotations

import csv

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.lr_monitor import LearningRateMonitor
from fulmen.loggers import CSVLogger
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self, make_optimizers):
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 1)
        self.make_optimizers = make_optimizers

    def training_step(self, batch, batch_idx):
        return self.b(self.a(batch[0])).sum()

    def configure_optimizers(self):
        return self.make_optimizers(self)


def loader(n=8):
    return DataLoader(TensorDataset(torch.ones(n, 2)), batch_size=2)


def fit(tmp_path, make_optimizers, monitor, max_epochs=3, module=None, **kwargs):
    logger = CSVLogger(tmp_path, name="lr", version=0)
    t = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[monitor],
        **kwargs,
    )
    t.fit(module or Model(make_optimizers), loader())
    with open(tmp_path / "lr" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return t, rows


def column(rows, name):
    return [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]


def test_epoch_scheduler_logged_once_per_epoch(tmp_path):
    def opt(m):
        sgd = torch.optim.SGD(m.parameters(), lr=0.1)
        return [sgd], [torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)]

    monitor = LearningRateMonitor()
    t, rows = fit(tmp_path, opt, monitor)
    # 4 steps per epoch; logged at each epoch start with the step reached so far
    assert column(rows, "lr-SGD") == [(0, 0.1), (4, 0.05), (8, 0.025)]
    assert monitor.lrs == {"lr-SGD": [0.1, 0.05, 0.025]}
    assert t.callback_metrics["lr-SGD"].item() == pytest.approx(0.025)


def test_step_interval_logs_every_step(tmp_path):
    def opt(m):
        sgd = torch.optim.SGD(m.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1 / (step + 1))
        return {"optimizer": sgd, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    _, rows = fit(tmp_path, opt, LearningRateMonitor(logging_interval="step"), max_epochs=2)
    values = column(rows, "lr-SGD")
    assert [step for step, _ in values] == list(range(8))
    assert [v for _, v in values] == pytest.approx([1 / (s + 1) for s in range(8)])


def test_optimizer_without_scheduler_is_logged_at_epoch_starts_and_steps(tmp_path):
    monitor = LearningRateMonitor(log_momentum=True)
    _, rows = fit(
        tmp_path,
        lambda m: torch.optim.SGD(m.parameters(), lr=0.3, momentum=0.5),
        monitor,
        max_epochs=2,
        module=None,
    )
    # as in Lightning: at each epoch start (steps 0 and 4) and at every step that logs
    assert [s for s, _ in column(rows, "lr-SGD")] == [0, 0, 1, 2, 3, 4, 4, 5, 6, 7]
    assert monitor.last_momentum_values == {"lr-SGD-momentum": 0.5}


def test_two_optimizers_in_one_batch_log_once_per_batch(tmp_path):
    class TwoOptimizers(Model):
        def __init__(self):
            super().__init__(lambda m: [torch.optim.SGD(m.a.parameters(), 0.1), torch.optim.SGD(m.b.parameters(), 0.1)])
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(self.b(self.a(batch[0])).sum())
                opt.step()

    monitor = LearningRateMonitor(logging_interval="step")
    t, rows = fit(tmp_path, None, monitor, max_epochs=1, module=TwoOptimizers())
    assert t.global_step == 8  # two optimizer steps per batch
    assert [s for s, _ in column(rows, "lr-SGD")] == [0, 1, 2, 3]  # the step that logs counts batches


def test_every_other_step_with_log_every_n_steps(tmp_path):
    logger = CSVLogger(tmp_path, name="lr", version=0)
    t = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=logger,
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[LearningRateMonitor(logging_interval="step")],
    )
    t.fit(Model(lambda m: torch.optim.SGD(m.parameters(), lr=0.3)), loader())
    with open(tmp_path / "lr" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [s for s, _ in column(rows, "lr-SGD")] == [1, 3]


def test_param_groups_momentum_and_weight_decay(tmp_path):
    def opt(m):
        return torch.optim.SGD(
            [
                {"params": m.a.parameters(), "lr": 0.1},
                {"params": m.b.parameters(), "lr": 0.2, "weight_decay": 0.01},
            ],
            momentum=0.9,
        )

    monitor = LearningRateMonitor(logging_interval="epoch", log_momentum=True, log_weight_decay=True)
    _, rows = fit(tmp_path, opt, monitor, max_epochs=1)
    assert column(rows, "lr-SGD/pg1") == [(0, 0.1)]
    assert column(rows, "lr-SGD/pg2") == [(0, 0.2)]
    assert column(rows, "lr-SGD/pg1-momentum") == [(0, 0.9)]
    assert column(rows, "lr-SGD/pg2-weight_decay") == [(0, 0.01)]
    assert monitor.last_momentum_values["lr-SGD/pg2-momentum"] == 0.9


def test_named_param_groups_and_scheduler_name(tmp_path):
    def opt(m):
        adam = torch.optim.Adam(
            [{"params": m.a.parameters(), "name": "encoder"}, {"params": m.b.parameters(), "name": "head"}], lr=0.01
        )
        sched = torch.optim.lr_scheduler.StepLR(adam, step_size=1)
        return {"optimizer": adam, "lr_scheduler": {"scheduler": sched, "name": "my-lr"}}

    _, rows = fit(tmp_path, opt, LearningRateMonitor(log_momentum=True), max_epochs=1)
    assert column(rows, "my-lr/encoder") == [(0, 0.01)]
    assert column(rows, "my-lr/head-momentum") == [(0, 0.9)]  # Adam's beta1


def test_repeated_optimizer_classes_get_suffixes(tmp_path):
    class Manual(Model):
        def __init__(self):
            super().__init__(None)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(self.b(self.a(batch[0])).sum())
                opt.step()

        def configure_optimizers(self):
            return [
                torch.optim.Adam(self.a.parameters(), lr=0.1),
                torch.optim.Adam(self.b.parameters(), lr=0.2),
                torch.optim.SGD(self.b.parameters(), lr=0.3),
                torch.optim.Adam(self.b.parameters(), lr=0.4),
            ]

    monitor = LearningRateMonitor(logging_interval="epoch")
    fit(tmp_path, None, monitor, max_epochs=1, module=Manual())
    assert monitor.lrs == {"lr-Adam": [0.1], "lr-Adam-1": [0.2], "lr-SGD": [0.3], "lr-Adam-2": [0.4]}


def test_duplicate_param_group_names_raise(tmp_path):
    def opt(m):
        return torch.optim.SGD(
            [{"params": m.a.parameters(), "name": "x"}, {"params": m.b.parameters(), "name": "x"}], lr=0.1
        )

    with pytest.raises(MisconfigurationException, match="named \\['x'\\]"):
        fit(tmp_path, opt, LearningRateMonitor())


def test_needs_a_logger(tmp_path):
    t = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[LearningRateMonitor()],
    )
    with pytest.raises(MisconfigurationException, match="with `Trainer` that has no logger"):
        t.fit(Model(lambda m: torch.optim.SGD(m.parameters(), lr=0.1)), loader())


def test_momentum_of_an_optimizer_without_it_is_zero_with_a_runtime_warning(tmp_path):
    monitor = LearningRateMonitor(log_momentum=True)
    with pytest.warns(RuntimeWarning, match="some optimizers do not have momentum.*ASGD"):
        _, rows = fit(tmp_path, lambda m: torch.optim.ASGD(m.parameters(), lr=0.1), monitor, max_epochs=1)
    assert monitor.last_momentum_values == {"lr-ASGD-momentum": 0}


def test_identical_param_group_names_fail(tmp_path):
    def opt(m):
        groups = [{"params": m.a.parameters(), "name": "x"}, {"params": m.b.parameters(), "name": "x"}]
        return torch.optim.SGD(groups, lr=0.1)

    with pytest.raises(MisconfigurationException, match="cannot have multiple parameter groups with identical"):
        fit(tmp_path, opt, LearningRateMonitor())


def test_invalid_logging_interval():
    with pytest.raises(MisconfigurationException, match="`logging_interval='batch'`.*'step'"):
        LearningRateMonitor(logging_interval="batch")
