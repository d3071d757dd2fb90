"""Trainer entry points, their return values, error handling, state, properties and save_checkpoint."""

from __future__ import annotations

import pytest
import torch

from fulmen import Callback, Trainer
from fulmen.trainer import RunningStage, TrainerFn, TrainerStatus
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import BoringDataModule, BoringModel, RecordingLogger, loader, quiet


def test_fit_then_validate_test_predict():
    model = BoringModel()
    trainer = Trainer(**quiet(max_epochs=2))
    trainer.fit(model, loader(32), loader(16))
    assert trainer.state.fn == TrainerFn.FITTING and trainer.state.status == TrainerStatus.FINISHED
    assert trainer.state.stage is None and not trainer.training
    assert trainer.current_epoch == 2 and trainer.global_step == 8

    validated = trainer.validate(model, loader(16), verbose=False)
    assert list(validated[0]) == ["val_loss"] and isinstance(validated[0]["val_loss"], float)
    tested = trainer.test(model, loader(16), verbose=False)
    assert list(tested[0]) == ["test_loss"]
    predictions = trainer.predict(model, loader(16, batch_size=4))
    assert len(predictions) == 4 and predictions[0].shape == (4, 2)
    with torch.no_grad():
        assert torch.allclose(predictions[0], model(loader(16, batch_size=4).dataset.data[:4]))


def test_predict_with_several_dataloaders_and_without_returning():
    trainer = Trainer(**quiet())
    predictions = trainer.predict(BoringModel(), [loader(8), loader(16)])
    assert [len(p) for p in predictions] == [1, 2]
    assert trainer.predict(BoringModel(), loader(8), return_predictions=False) is None


def test_validate_restores_the_training_mode_it_found():
    model = BoringModel()
    model.train()
    Trainer(**quiet()).validate(model, loader(8), verbose=False)
    assert model.training
    model.eval()
    Trainer(**quiet()).test(model, loader(8), verbose=False)
    assert not model.training


def test_verbose_results_are_printed(capsys):
    Trainer(**quiet()).test(BoringModel(), loader(8))
    out = capsys.readouterr().out
    assert "Test metric" in out and "test_loss" in out


def test_entry_points_check_their_arguments():
    trainer = Trainer(**quiet())
    with pytest.raises(TypeError, match="`model` must be a `LightningModule`, got `Linear`"):
        trainer.fit(torch.nn.Linear(1, 1), loader(8))  # type: ignore[arg-type]
    for entry in ("validate", "test", "predict"):
        # a TypeError as in Lightning, and a MisconfigurationException as fulmen's argument errors are
        with pytest.raises(TypeError, match=rf"`Trainer.{entry}\(\)` requires a `LightningModule`") as error:
            getattr(Trainer(**quiet()), entry)()
        assert isinstance(error.value, MisconfigurationException)
    with pytest.raises(TypeError, match="LightningDataModule"):
        trainer.fit(BoringModel(), datamodule=object())  # type: ignore[arg-type]

    class NoTestStep(BoringModel):
        test_step = BoringModel.__bases__[0].test_step

    with pytest.raises(MisconfigurationException, match="test_step"):
        trainer.test(NoTestStep(), loader(8))


def test_fit_without_training_data_fails_clearly():
    with pytest.raises(MisconfigurationException, match="train_dataloaders"):
        Trainer(**quiet()).fit(BoringModel())


class _CountsSteps(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        if isinstance(batch, list):  # several loaders: one batch of each
            assert len(batch) == 2 and all(isinstance(b, torch.Tensor) for b in batch)
            batch = batch[0]
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ([(torch.randn(32), 0), (torch.randn(32), 1)], r"`train_dataloaders\[0\]` is a tuple of \(Tensor, int\)"),
        ([{"x": torch.randn(32)}], r"`train_dataloaders\[0\]` is a dict of \(Tensor\)"),
        ((torch.randn(4, 32), torch.randn(4, 32)), r"`train_dataloaders\[0\]` is a Tensor of shape \(4, 32\)"),
    ],
)
def test_a_list_of_samples_fails_at_fit_start_naming_the_argument(given, said):
    model = _CountsSteps()
    with pytest.raises(MisconfigurationException, match=said) as error:
        Trainer(**quiet(max_epochs=1)).fit(model, given)
    assert "DataLoader(samples, batch_size=...)" in str(error.value)
    assert model.steps == 0  # refused before anything ran


def test_a_list_of_samples_as_val_dataloaders_fails_too():
    with pytest.raises(MisconfigurationException, match=r"`val_dataloaders\[1\]` is a tuple"):
        Trainer(**quiet(max_epochs=1)).fit(BoringModel(), loader(8), [loader(8), (torch.randn(32), 0)])


def test_a_list_of_loaders_still_trains():
    model = _CountsSteps()
    Trainer(**quiet(max_epochs=1)).fit(model, [loader(8), loader(8)])
    assert model.steps > 0


# ---------------------------------------------------------------------------------- errors
class Boom(RuntimeError):
    pass


class Exploding(BoringModel):
    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            raise Boom("step 1")
        return super().training_step(batch, batch_idx)

    def on_exception(self, exception):
        self.seen = exception


class Watcher(Callback):
    def __init__(self) -> None:
        self.seen: list[BaseException] = []
        self.teardowns = 0

    def on_exception(self, trainer, pl_module, exception):
        self.seen.append(exception)

    def teardown(self, trainer, pl_module, stage):
        self.teardowns += 1


class WatchedData(BoringDataModule):
    def on_exception(self, exception):
        self.seen = exception


def test_errors_run_on_exception_finalize_loggers_failed_and_reraise():
    watcher, logger, model, dm = Watcher(), RecordingLogger(), Exploding(), WatchedData()
    trainer = Trainer(**quiet(callbacks=[watcher], logger=logger, max_epochs=1))
    with pytest.raises(Boom, match="step 1"):
        trainer.fit(model, datamodule=dm)
    assert len(watcher.seen) == 1 and isinstance(watcher.seen[0], Boom)
    assert model.seen is watcher.seen[0] and dm.seen is watcher.seen[0]
    assert logger.statuses == ["failed"]
    assert trainer.interrupted and trainer.state.status == TrainerStatus.INTERRUPTED
    assert watcher.teardowns == 0


@pytest.mark.parametrize("entry", ["validate", "test", "predict"])
def test_errors_in_evaluation_entry_points_are_handled_too(entry):
    class Failing(BoringModel):
        def validation_step(self, batch, batch_idx):
            raise Boom(entry)

        test_step = predict_step = validation_step

    watcher, logger = Watcher(), RecordingLogger()
    with pytest.raises(Boom):
        getattr(Trainer(**quiet(callbacks=[watcher], logger=logger)), entry)(Failing(), loader(8))
    assert len(watcher.seen) == 1 and logger.statuses == ["failed"]


def test_keyboard_interrupt_is_handled_and_exits_with_status_1():
    """As in Lightning: Ctrl-C marks the run interrupted, runs on_exception, then exits with status 1."""

    class Interrupting(BoringModel):
        def training_step(self, batch, batch_idx):
            raise KeyboardInterrupt

    watcher = Watcher()
    trainer = Trainer(**quiet(callbacks=[watcher]))
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(Interrupting(), loader(8))
    assert exit_info.value.code == 1
    assert isinstance(exit_info.value.__cause__, KeyboardInterrupt)
    assert isinstance(watcher.seen[0], KeyboardInterrupt) and len(watcher.seen) == 1
    assert trainer.interrupted


# ---------------------------------------------------------------------------- state, props
class StageProbe(Callback):
    def __init__(self) -> None:
        self.stages: list[tuple[str, object]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.stages.append(("train", trainer.state.stage))
        assert trainer.training and not trainer.validating and trainer.lightning_module is pl_module

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.stages.append(("val", trainer.state.stage))
        assert trainer.sanity_checking or trainer.validating

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        assert trainer.testing and trainer.evaluating

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        assert trainer.predicting


def test_stage_flags_follow_the_loops():
    probe = StageProbe()
    trainer = Trainer(**quiet(callbacks=[probe], max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                              num_sanity_val_steps=1))  # fmt: skip
    trainer.fit(BoringModel(), loader(16), loader(16))
    assert probe.stages == [
        ("val", RunningStage.SANITY_CHECKING), ("train", RunningStage.TRAINING), ("val", RunningStage.VALIDATING)
    ]  # fmt: skip
    trainer.test(BoringModel(), loader(8), verbose=False)
    trainer.predict(BoringModel(), loader(8))


def test_properties():
    dm = BoringDataModule()
    model = BoringModel()
    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(model, dm)
    assert trainer.lightning_module is model and trainer.model is model and trainer.datamodule is dm
    assert trainer.strategy.root_device == torch.device("cpu")
    assert trainer.is_global_zero and trainer.world_size == 1 and trainer.global_rank == 0
    assert trainer.local_rank == 0 and trainer.node_rank == 0 and trainer.num_nodes == 1
    assert trainer.num_devices == 1 and trainer.device_ids == [0]
    assert len(trainer.optimizers) == 1 and trainer.lr_scheduler_configs == []
    assert trainer.num_training_batches == 8 and trainer.num_val_batches == [8]
    assert trainer.num_sanity_val_batches == [2]
    assert trainer.train_dataloader is not None and trainer.val_dataloaders is not None
    assert trainer.max_epochs == 1 and trainer.max_steps == -1 and trainer.precision == "32-true"
    assert trainer.should_stop is False and trainer.log_dir == trainer.default_root_dir
    assert trainer.checkpoint_callback is None and trainer.early_stopping_callback is None
    assert trainer.progress_bar_callback is None
    assert trainer.enable_validation
    trainer.test(model, verbose=False)
    assert trainer.num_test_batches == [8]


def test_early_stopping_callback_sees_validation_values_and_stops():
    from fulmen.callbacks import EarlyStopping

    class Flat(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_metric", 1.0)

    stopper = EarlyStopping(monitor="val_metric", patience=1)
    trainer = Trainer(**quiet(callbacks=[stopper], max_epochs=20))
    trainer.fit(Flat(), loader(16), loader(16))
    assert trainer.early_stopping_callback is stopper
    assert trainer.current_epoch < 20 and trainer.should_stop


# ------------------------------------------------------------------------------ checkpoint
def test_save_checkpoint_writes_the_documented_keys(tmp_path):
    class WithState(Callback):
        def state_dict(self):
            return {"count": 3}

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint["from_callback"] = True

    class Model(BoringModel):
        def __init__(self, lr: float = 0.1):
            super().__init__(lr)
            self.save_hyperparameters()

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1)]

        def on_save_checkpoint(self, checkpoint):
            checkpoint["from_module"] = checkpoint["from_callback"]

    model = Model()
    trainer = Trainer(**quiet(callbacks=[WithState()], max_epochs=2))
    trainer.fit(model, loader(16))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    from fulmen.checkpointing.safe_reading import safe_load

    checkpoint = safe_load(path)
    assert checkpoint["epoch"] == 2 and checkpoint["global_step"] == 4
    assert checkpoint["hyper_parameters"] == {"lr": 0.1}
    assert checkpoint["callbacks"] == {WithState.__qualname__: {"count": 3}}
    assert len(checkpoint["optimizer_states"]) == 1 and len(checkpoint["lr_schedulers"]) == 1
    assert checkpoint["from_module"] is True
    assert checkpoint["loops"]["global_step"] == 4 and checkpoint["loops"]["current_epoch"] == 2
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in model.state_dict().items())

    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    weights = safe_load(tmp_path / "weights.ckpt")
    assert "optimizer_states" not in weights and "state_dict" in weights


def test_save_checkpoint_needs_a_model():
    with pytest.raises(RuntimeError, match="only possible if a model is attached") as error:
        Trainer(**quiet()).save_checkpoint("x.ckpt")
    assert isinstance(error.value, AttributeError)  # what Lightning raises there


def test_ckpt_path_restores_weights_for_evaluation_and_progress_for_fit(tmp_path):
    model = BoringModel()
    trainer = Trainer(**quiet(max_epochs=2))
    trainer.fit(model, loader(16))
    path = tmp_path / "done.ckpt"
    trainer.save_checkpoint(path)

    fresh = BoringModel()
    Trainer(**quiet()).validate(fresh, loader(8), ckpt_path=path, verbose=False)
    assert torch.equal(fresh.layer.weight, model.layer.weight)

    resumed = Trainer(**quiet(max_epochs=3))
    resumed.fit(BoringModel(), loader(16), ckpt_path=path)
    assert resumed.current_epoch == 3 and resumed.global_step == 6


def test_trainer_is_keyword_only():
    with pytest.raises(TypeError):
        Trainer("cpu")  # type: ignore[misc]


def test_argument_errors_also_run_on_exception():
    watcher = Watcher()
    with pytest.raises(MisconfigurationException, match="not both"):
        Trainer(**quiet(callbacks=[watcher])).fit(BoringModel(), loader(8), datamodule=BoringDataModule())
    assert len(watcher.seen) == 1
