"""One test (at least) per Trainer flag, asserting what the flag does."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

import fulmen.trainer.trainer as trainer_module
from fulmen import Callback, Trainer
from fulmen.strategies.single_device import SingleDeviceStrategy
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import BoringModel, RecordingLogger, loader, quiet


class Counter(Callback):
    """Counts training batches, optimizer steps, validation runs and sanity-check batches."""

    def __init__(self) -> None:
        self.train_batches: list[tuple[int, int]] = []
        self.val_runs: list[tuple[int, int]] = []  # (epoch, global step) of each real validation run
        self.val_batches = 0
        self.sanity_batches = 0
        self.steps_at: list[int] = []
        self.epochs_started = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs_started += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches.append((trainer.current_epoch, batch_idx))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps_at.append(trainer.state.batch_idx)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_runs.append((trainer.current_epoch, trainer.global_step))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            self.sanity_batches += 1
        else:
            self.val_batches += 1


def fit(model: Any = None, train: Any = None, val: Any = None, **flags: Any) -> tuple[Trainer, Counter]:
    counter = Counter()
    trainer = Trainer(**quiet(callbacks=[counter], **flags))
    trainer.fit(model or BoringModel(), train if train is not None else loader(80), val)
    return trainer, counter


# ------------------------------------------------------------------------------ how long
def test_max_epochs():
    trainer, counter = fit(max_epochs=3)
    assert trainer.current_epoch == 3 and counter.epochs_started == 3
    assert trainer.global_step == 30


def test_max_steps_stops_mid_epoch():
    trainer, counter = fit(max_epochs=5, max_steps=13)
    assert trainer.global_step == 13
    assert len(counter.train_batches) == 13
    assert trainer.current_epoch == 2  # the interrupted epoch still ends (its end hooks run)


class StopAtFirstBatch(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = True


def test_should_stop_ends_training_after_the_batch():
    trainer = Trainer(**quiet(callbacks=[StopAtFirstBatch()], max_epochs=5))
    trainer.fit(BoringModel(), loader(80))
    assert trainer.global_step == 1 and trainer.current_epoch == 1


def test_min_epochs_overrides_should_stop():
    trainer = Trainer(**quiet(callbacks=[StopAtFirstBatch()], max_epochs=5, min_epochs=3))
    trainer.fit(BoringModel(), loader(80))
    assert trainer.current_epoch == 3
    assert trainer.global_step == 30  # min_epochs counts completed epochs: the third runs in full


def test_min_steps_overrides_should_stop():
    trainer = Trainer(**quiet(callbacks=[StopAtFirstBatch()], max_epochs=5, min_steps=4))
    trainer.fit(BoringModel(), loader(80))
    assert trainer.global_step == 4


@pytest.mark.parametrize("max_time", [{"seconds": 0}, "00:00:00:00"])
def test_max_time_stops_training(max_time):
    trainer, counter = fit(max_epochs=5, max_time=max_time)
    assert len(counter.train_batches) == 1


def test_max_time_rejects_bad_values():
    with pytest.raises(MisconfigurationException, match="max_time"):
        Trainer(**quiet(max_time="one hour"))


# ------------------------------------------------------------------------------ how much
def test_limit_train_batches_int_and_float():
    _, counter = fit(max_epochs=2, limit_train_batches=3)
    assert counter.train_batches == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    trainer, counter = fit(max_epochs=1, limit_train_batches=0.25)
    assert trainer.num_training_batches == 2 and len(counter.train_batches) == 2


def test_limit_train_batches_one_is_one_batch_and_one_point_zero_all():
    trainer, _ = fit(max_epochs=1, limit_train_batches=1)
    assert trainer.num_training_batches == 1
    trainer, _ = fit(max_epochs=1, limit_train_batches=1.0)
    assert trainer.num_training_batches == 10


def test_limit_fraction_below_one_batch_fails_clearly():
    with pytest.raises(MisconfigurationException, match="limit_train_batches"):
        fit(max_epochs=1, limit_train_batches=0.01)


def test_limit_batches_rejects_invalid_values():
    with pytest.raises(MisconfigurationException, match="limit_val_batches"):
        Trainer(**quiet(limit_val_batches=1.5))
    with pytest.raises(MisconfigurationException, match="limit_test_batches"):
        Trainer(**quiet(limit_test_batches=-1))


def test_zero_train_batches_skips_training():
    trainer, counter = fit(max_epochs=3, limit_train_batches=0)
    assert trainer.global_step == 0 and counter.epochs_started == 0


def test_limit_val_batches():
    _, counter = fit(val=loader(40), max_epochs=2, limit_val_batches=2, num_sanity_val_steps=0)
    assert counter.val_batches == 4
    _, counter = fit(val=loader(40), max_epochs=1, limit_val_batches=0.4, num_sanity_val_steps=0)
    assert counter.val_batches == 2
    _, counter = fit(val=loader(40), max_epochs=1, limit_val_batches=0)
    assert counter.val_runs == [] and counter.sanity_batches == 0


def test_limit_test_and_predict_batches():
    trainer = Trainer(**quiet(limit_test_batches=2, limit_predict_batches=0.5))
    model = BoringModel()
    steps = []
    model.test_step = lambda batch, batch_idx: steps.append(batch_idx)  # type: ignore[method-assign]
    trainer.test(model, loader(40))
    assert steps == [0, 1]
    predictions = trainer.predict(model, loader(40))
    assert len(predictions) == 2


# ------------------------------------------------------------------------------ validation
def test_val_check_interval_int():
    _, counter = fit(val=loader(16), max_epochs=2, val_check_interval=3, num_sanity_val_steps=0)
    # 10 batches per epoch: after batches 3, 6, 9 of each epoch
    assert counter.val_runs == [(0, 3), (0, 6), (0, 9), (1, 13), (1, 16), (1, 19)]


def test_val_check_interval_float():
    _, counter = fit(val=loader(16), max_epochs=1, val_check_interval=0.5, num_sanity_val_steps=0)
    assert counter.val_runs == [(0, 5), (0, 10)]
    _, counter = fit(val=loader(16), max_epochs=1, val_check_interval=0.3, num_sanity_val_steps=0)
    assert counter.val_runs == [(0, 3), (0, 6), (0, 9)]  # as Lightning: not at the epoch's end


def test_val_check_interval_larger_than_the_epoch_fails_clearly():
    with pytest.raises(MisconfigurationException, match="val_check_interval"):
        fit(val=loader(16), max_epochs=1, val_check_interval=50)


def test_check_val_every_n_epoch():
    _, counter = fit(val=loader(16), max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=0)
    assert counter.val_runs == [(1, 20), (3, 40)]


def test_check_val_every_n_epoch_none_counts_batches_across_epochs():
    _, counter = fit(
        val=loader(16), max_epochs=3, check_val_every_n_epoch=None, val_check_interval=15, num_sanity_val_steps=0
    )
    assert counter.val_runs == [(1, 15), (2, 30)]
    with pytest.raises(MisconfigurationException, match="val_check_interval"):
        Trainer(**quiet(check_val_every_n_epoch=None, val_check_interval=0.5))


@pytest.mark.parametrize(("steps", "expected"), [(0, 0), (1, 1), (2, 2), (-1, 4)])
def test_num_sanity_val_steps(steps, expected):
    _, counter = fit(val=loader(32), max_epochs=1, limit_train_batches=1, num_sanity_val_steps=steps)
    assert counter.sanity_batches == expected


def test_sanity_check_metrics_are_not_kept():
    logger = RecordingLogger()
    trainer, counter = fit(val=loader(16), max_epochs=1, limit_train_batches=0, logger=logger)
    assert counter.sanity_batches == 2
    assert "val_loss" not in trainer.callback_metrics
    assert not logger.values("val_loss")


def test_sanity_check_does_not_change_the_random_state():
    torch.manual_seed(0)
    fit(val=loader(16), max_epochs=1, limit_train_batches=0)
    after_sanity = torch.rand(1)
    torch.manual_seed(0)
    fit(val=loader(16), max_epochs=1, limit_train_batches=0, num_sanity_val_steps=0)
    assert torch.equal(after_sanity, torch.rand(1))


# ------------------------------------------------------------------------- dev shortcuts
def test_fast_dev_run_true():
    logger = RecordingLogger()
    trainer, counter = fit(val=loader(16), max_epochs=10, fast_dev_run=True, logger=logger)
    assert counter.train_batches == [(0, 0)] and counter.val_batches == 1 and counter.sanity_batches == 0
    assert logger not in trainer.loggers and not logger.metrics


def test_fast_dev_run_n_batches():
    trainer, counter = fit(val=loader(16), fast_dev_run=3)
    assert len(counter.train_batches) == 3 and counter.val_batches == 2  # the val loader has 2 batches
    assert trainer.max_epochs == 1 and trainer.global_step == 3


class RecordFirstValues(Callback):
    def __init__(self) -> None:
        self.firsts: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.firsts.append(batch[0].clone())


def test_overfit_batches_uses_the_same_first_batches_without_shuffling():
    recorder = RecordFirstValues()
    trainer = Trainer(**quiet(callbacks=[recorder], max_epochs=2, overfit_batches=2))
    with pytest.warns(UserWarning, match="requested to overfit but enabled train dataloader shuffling"):
        trainer.fit(BoringModel(), loader(80, shuffle=True))
    assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)
    assert len(recorder.firsts) == 4
    assert torch.equal(recorder.firsts[0], recorder.firsts[2]) and torch.equal(recorder.firsts[1], recorder.firsts[3])
    assert trainer.limit_val_batches == 2


# -------------------------------------------------------------------------- optimization
def test_accumulate_grad_batches_steps_at_window_ends():
    trainer, counter = fit(max_epochs=1, accumulate_grad_batches=3)
    assert counter.steps_at == [2, 5, 8, 9]  # batch_idx of each step; the last batch always steps
    assert trainer.global_step == 4
    assert trainer.estimated_stepping_batches == 4


class GradientProbe(Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad for p in pl_module.parameters()]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        self.max_abs.append(max(g.abs().max().item() for g in grads))


class BigGradients(BoringModel):
    def loss(self, batch):
        return 1000 * super().loss(batch)


def test_gradient_clip_val_by_norm():
    probe = GradientProbe()
    Trainer(**quiet(callbacks=[probe], max_epochs=1, gradient_clip_val=0.5)).fit(BigGradients(lr=1e-6), loader(40))
    assert max(probe.norms) == pytest.approx(0.5, rel=1e-4)
    unclipped = GradientProbe()
    Trainer(**quiet(callbacks=[unclipped], max_epochs=1)).fit(BigGradients(lr=1e-6), loader(40))
    assert min(unclipped.norms) > 10


def test_gradient_clip_val_by_value():
    probe = GradientProbe()
    trainer = Trainer(**quiet(callbacks=[probe], max_epochs=1, gradient_clip_val=0.01, gradient_clip_algorithm="value"))
    trainer.fit(BigGradients(lr=1e-6), loader(40))
    assert max(probe.max_abs) == pytest.approx(0.01)


def test_gradient_clip_algorithm_is_checked():
    with pytest.raises(MisconfigurationException, match="gradient_clip_algorithm"):
        Trainer(**quiet(gradient_clip_val=1.0, gradient_clip_algorithm="max"))


# ------------------------------------------------------------------------------- data
class CountingLoaders(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.calls = {"train": 0, "val": 0}

    def train_dataloader(self):
        self.calls["train"] += 1
        return loader(16)

    def val_dataloader(self):
        self.calls["val"] += 1
        return loader(16)


def test_reload_dataloaders_every_n_epochs():
    model = CountingLoaders()
    Trainer(**quiet(max_epochs=4, reload_dataloaders_every_n_epochs=2)).fit(model)
    assert model.calls == {"train": 2, "val": 2}
    model = CountingLoaders()
    Trainer(**quiet(max_epochs=4)).fit(model)
    assert model.calls == {"train": 1, "val": 1}


def test_use_distributed_sampler(monkeypatch):
    monkeypatch.setattr(
        SingleDeviceStrategy, "distributed_sampler_kwargs", property(lambda self: {"num_replicas": 2, "rank": 1})
    )
    trainer, _ = fit(max_epochs=1)
    assert isinstance(trainer.train_dataloader.sampler, DistributedSampler)
    assert trainer.train_dataloader.sampler.rank == 1 and trainer.num_training_batches == 5
    trainer, _ = fit(max_epochs=1, use_distributed_sampler=False)
    assert not isinstance(trainer.train_dataloader.sampler, DistributedSampler)
    assert trainer.num_training_batches == 10


# ------------------------------------------------------------------------------- logging
def test_log_every_n_steps():
    logger = RecordingLogger()
    fit(max_epochs=1, logger=logger, log_every_n_steps=3)
    assert [step for _, step in logger.values("train_loss")] == [2, 5, 8]
    assert all(m["epoch"] == 0 for m, _ in logger.metrics)
    assert logger.saves == 2  # after the hyperparameters and at the epoch's end, not after every step


def test_default_logger_is_tensorboard_under_default_root_dir(tmp_path):
    from fulmen.loggers import TensorBoardLogger

    trainer = Trainer(default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, max_epochs=1, accelerator="cpu")  # fmt: skip
    assert isinstance(trainer.logger, TensorBoardLogger) and trainer.loggers == [trainer.logger]
    assert trainer.default_root_dir == str(tmp_path)
    trainer.fit(BoringModel(), loader(16))
    assert trainer.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    assert any((tmp_path / "lightning_logs" / "version_0").iterdir())


def test_logger_flag_forms(tmp_path):
    assert Trainer(**quiet(logger=False)).loggers == []
    assert Trainer(**quiet(logger=False)).logger is None
    first, second = RecordingLogger(), RecordingLogger()
    assert Trainer(**quiet(logger=[first, second])).loggers == [first, second]
    assert Trainer(**quiet(logger=first)).logger is first
    with pytest.raises(MisconfigurationException, match="logger"):
        Trainer(**quiet(logger="tensorboard"))


# --------------------------------------------------------------------- default callbacks
def _types(trainer: Trainer) -> set[str]:
    return {type(cb).__name__ for cb in trainer.callbacks}


def test_enable_flags_add_or_remove_the_default_callbacks(tmp_path):
    defaults = Trainer(default_root_dir=tmp_path, accelerator="cpu")
    assert {"TQDMProgressBar", "ModelSummary", "ModelCheckpoint"} <= _types(
        defaults
    )  # tqdm even with rich, as in Lightning
    assert type(defaults.callbacks[-1]).__name__ == "ModelCheckpoint"  # checkpoints run last
    assert defaults.progress_bar_callback is not None and defaults.checkpoint_callback is not None
    none = Trainer(**quiet())
    assert none.callbacks == [] and none.progress_bar_callback is None and none.checkpoint_callback is None


def test_the_default_summary_matches_the_progress_bar_given():
    pytest.importorskip("rich")
    from fulmen.callbacks import RichProgressBar, TQDMProgressBar

    trainer = Trainer(callbacks=[TQDMProgressBar()], logger=False, enable_checkpointing=False)
    assert _types(trainer) == {"TQDMProgressBar", "ModelSummary"}
    trainer = Trainer(callbacks=[RichProgressBar()], logger=False, enable_checkpointing=False)
    assert _types(trainer) == {"RichProgressBar", "RichModelSummary"}


def test_disabled_flag_with_that_callback_given_fails():
    from fulmen.callbacks import ModelCheckpoint, TQDMProgressBar

    with pytest.raises(MisconfigurationException, match="`enable_checkpointing=False` but found `ModelCheckpoint`"):
        Trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint()])
    with pytest.raises(MisconfigurationException, match="`enable_progress_bar=False` but found `TQDMProgressBar`"):
        Trainer(enable_progress_bar=False, callbacks=[TQDMProgressBar()])


# --------------------------------------------------------------------- torch-wide switches
@pytest.fixture
def restore_torch_flags():
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


class FlagProbe(BoringModel):
    def training_step(self, batch, batch_idx):
        self.seen = {
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "benchmark": torch.backends.cudnn.benchmark,
            "anomaly": torch.is_anomaly_enabled(),
            "grad": torch.is_grad_enabled(),
        }
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen_eval = {"inference": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled()}
        return super().validation_step(batch, batch_idx)


@pytest.mark.usefixtures("restore_torch_flags")
def test_deterministic_and_benchmark():
    model = FlagProbe()
    fit(model, max_epochs=1, limit_train_batches=1, deterministic=True)
    assert model.seen["deterministic"] and not model.seen["warn_only"] and not model.seen["benchmark"]
    fit(model, max_epochs=1, limit_train_batches=1, deterministic="warn", benchmark=True)
    assert model.seen["deterministic"] and model.seen["warn_only"] and model.seen["benchmark"]
    with pytest.raises(MisconfigurationException, match="deterministic"):
        Trainer(**quiet(deterministic="yes"))


def test_detect_anomaly():
    model = FlagProbe()
    fit(model, max_epochs=1, limit_train_batches=1, detect_anomaly=True)
    assert model.seen["anomaly"] and not torch.is_anomaly_enabled()
    fit(model, max_epochs=1, limit_train_batches=1)
    assert not model.seen["anomaly"]


@pytest.mark.parametrize("inference_mode", [True, False])
def test_inference_mode(inference_mode):
    model = FlagProbe()
    trainer, _ = fit(model, val=loader(16), max_epochs=1, limit_train_batches=1, inference_mode=inference_mode)
    # Validation inside fit runs under no_grad whatever the flag, as in Lightning: a module may
    # keep a validation output for the next training step.
    assert model.seen_eval == {"inference": False, "grad": False}
    assert model.seen["grad"]
    trainer.validate(model, loader(16), verbose=False)
    assert model.seen_eval == {"inference": inference_mode, "grad": False}


def test_sync_batchnorm_converts_batchnorm_only_with_several_processes():
    class WithBatchNorm(BoringModel):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(2)

    class TwoProcesses(SingleDeviceStrategy):
        world_size = 2

    model = WithBatchNorm()
    assert TwoProcesses(torch.device("cpu")).convert_sync_batchnorm(model) is model
    assert isinstance(model.norm, nn.SyncBatchNorm)
    model = WithBatchNorm()
    fit(model, max_epochs=1, limit_train_batches=1, sync_batchnorm=True)  # one process: nothing to sync
    assert type(model.norm) is nn.BatchNorm1d


# --------------------------------------------------------------------- barebones
def test_barebones_turns_off_logging_and_default_callbacks():
    trainer = Trainer(barebones=True, max_epochs=1, accelerator="cpu")
    assert trainer.loggers == [] and trainer.callbacks == []
    assert trainer.num_sanity_val_steps == 0 and trainer.log_every_n_steps == 0
    model = BoringModel()
    with pytest.warns(UserWarning, match="barebones"):  # BoringModel calls self.log: dropped, as in Lightning
        trainer.fit(model, loader(16))
    assert trainer.global_step == len(loader(16)) and trainer.callback_metrics == {}


def test_barebones_trains_without_logging():
    class Silent(BoringModel):
        def training_step(self, batch, batch_idx):
            return self.loss(batch)

    trainer = Trainer(barebones=True, max_epochs=2, accelerator="cpu")
    trainer.fit(Silent(), loader(16))
    assert trainer.global_step == 4


@pytest.mark.parametrize(
    "flags",
    [{"logger": True}, {"enable_checkpointing": True}, {"enable_progress_bar": True}, {"enable_model_summary": True},
     {"log_every_n_steps": 5}, {"num_sanity_val_steps": 2}, {"fast_dev_run": True}, {"detect_anomaly": True}],
)  # fmt: skip
def test_barebones_conflicts_fail(flags):
    ((name, value),) = flags.items()
    with pytest.raises(MisconfigurationException, match=re.escape(f"`Trainer(barebones=True, {name}={value!r})` was")):
        Trainer(barebones=True, **flags)


# ------------------------------------------------------------- flags shared with Lite
def test_shared_flags_go_through_select_strategy(monkeypatch):
    seen = {}
    real = trainer_module.select_strategy

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(trainer_module, "select_strategy", spy)
    Trainer(**quiet(accelerator="cpu", devices=1, strategy="auto", precision="bf16-mixed", num_nodes=1, plugins=None))
    assert seen == {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "bf16-mixed",
                    "num_nodes": 1, "plugins": None}  # fmt: skip


def test_gpu_accelerator_on_a_cpu_only_machine_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MisconfigurationException, match="accelerator='gpu'"):
        Trainer(accelerator="gpu")


def test_precision_64_true_trains_in_double():
    class DtypeProbe(BoringModel):
        def training_step(self, batch, batch_idx):
            self.dtypes = (batch.dtype, self.layer.weight.dtype)
            return super().training_step(batch, batch_idx)

    model = DtypeProbe()
    trainer, _ = fit(model, max_epochs=1, limit_train_batches=1, precision="64-true")
    assert model.dtypes == (torch.float64, torch.float64)
    assert trainer.precision == "64-true"


def test_precision_bf16_mixed_runs_forward_under_autocast():
    class AutocastProbe(BoringModel):
        def training_step(self, batch, batch_idx):
            self.output_dtype = self(batch).dtype
            return super().training_step(batch, batch_idx)

    model = AutocastProbe()
    fit(model, max_epochs=1, limit_train_batches=1, precision="bf16-mixed")
    assert model.output_dtype == torch.bfloat16 and model.layer.weight.dtype == torch.float32


def test_plugins_precision_instance_is_used():
    from fulmen.strategies.precision import DoublePrecision

    plugin = DoublePrecision()
    trainer = Trainer(**quiet(plugins=[plugin]))
    assert trainer.precision_plugin is plugin


@pytest.mark.parametrize(
    ("flag", "value"),
    [("max_epochs", -2), ("max_steps", 1.5), ("accumulate_grad_batches", 0), ("log_every_n_steps", -1),
     ("num_sanity_val_steps", -2), ("check_val_every_n_epoch", 0), ("gradient_clip_val", -1.0),
     ("reload_dataloaders_every_n_epochs", -1), ("fast_dev_run", -1), ("inference_mode", "yes"),
     ("default_root_dir", 3), ("callbacks", "progress")],
)  # fmt: skip
def test_invalid_flag_values_name_the_flag(flag, value):
    with pytest.raises(MisconfigurationException, match=flag):
        Trainer(**quiet(**{flag: value}))


def test_val_check_interval_above_the_training_batches_says_what_lightning_says():
    trainer = Trainer(**quiet(max_epochs=1, val_check_interval=100))
    with pytest.raises(ValueError, match="must be less than or equal to the number of the training batches"):
        trainer.fit(BoringModel(), loader(80), loader(16))


def test_min_epochs_not_met_is_said_once(caplog):
    class AlwaysStop(Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = True

    with caplog.at_level(logging.INFO, logger="fulmen"):
        trainer = Trainer(**quiet(min_epochs=3, limit_train_batches=2, callbacks=[AlwaysStop()]))
        trainer.fit(BoringModel(), loader(32))
    said = "`min_epochs=3` or `min_steps=None` has not been met. Training will continue"
    assert sum(said in r.getMessage() for r in caplog.records) == 1
    assert trainer.current_epoch == 3


def test_estimated_stepping_batches():
    trainer = Trainer(**quiet(max_epochs=3, accumulate_grad_batches=4))
    trainer.fit(BoringModel(), loader(80))
    assert trainer.estimated_stepping_batches == math.ceil(10 / 4) * 3
    trainer = Trainer(**quiet(max_epochs=3, max_steps=5))
    trainer.fit(BoringModel(), loader(80))
    assert trainer.estimated_stepping_batches == 5


def test_estimated_stepping_batches_inside_configure_optimizers():
    class OneCycle(BoringModel):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            total = self.trainer.estimated_stepping_batches
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    trainer = Trainer(**quiet(max_epochs=2))
    trainer.fit(OneCycle(), loader(80))  # OneCycleLR raises if stepped more than total_steps
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 20


class Batches:
    """Any iterable of batches works as a dataloader (a list would mean several dataloaders)."""

    def __init__(self, count: int) -> None:
        self.batches = [torch.randn(4, 32) for _ in range(count)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_dataloaders_with_a_plain_iterable_of_batches():
    trainer, counter = fit(train=Batches(3), max_epochs=2)
    assert len(counter.train_batches) == 6 and trainer.num_training_batches == 3


def test_several_train_dataloaders_are_combined():
    class TwoLoaders(BoringModel):
        def training_step(self, batch, batch_idx):
            assert set(batch) == {"a", "b"}
            return self.loss(batch["a"]) + self.loss(batch["b"])

    trainer, counter = fit(TwoLoaders(), train={"a": loader(16), "b": loader(40)}, max_epochs=1)
    assert trainer.num_training_batches == 5  # max_size_cycle: the longer loader sets the length


def test_infinite_iterable_needs_a_limit():
    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield torch.randn(32)

    trainer, counter = fit(train=DataLoader(Endless(), batch_size=4), max_steps=7)
    assert trainer.global_step == 7 and trainer.num_training_batches == math.inf
