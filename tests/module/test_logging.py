"""``self.log`` / ``self.log_dict``: defaults per hook, names, reductions, batch sizes, loggers, torchmetrics."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Callback, Trainer
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import BoringModel, RecordingLogger, loader, quiet


def run(model: Any, train: Any = None, val: Any = None, **flags: Any) -> tuple[Trainer, RecordingLogger]:
    logger = RecordingLogger()
    flags = {"max_epochs": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1, **flags}
    trainer = Trainer(**quiet(logger=logger, **flags))
    trainer.fit(model, train if train is not None else loader(32), val)
    return trainer, logger


class ValuesModel(BoringModel):
    """Logs the batch index, so every expected value is known exactly."""

    def __init__(self, **log_kwargs: Any) -> None:
        super().__init__()
        self.log_kwargs = log_kwargs

    def training_step(self, batch, batch_idx):
        self.log("value", float(batch_idx), **self.log_kwargs)
        return self.loss(batch)


def test_training_step_defaults_to_on_step():
    trainer, logger = run(ValuesModel())
    assert logger.values("value") == [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 3)]
    assert trainer.callback_metrics["value"] == 3.0
    assert trainer.logged_metrics == {"value": torch.tensor(3.0)}


def test_on_step_and_on_epoch_fork_the_names():
    trainer, logger = run(ValuesModel(on_step=True, on_epoch=True))
    assert [v for v, _ in logger.values("value_step")] == [0.0, 1.0, 2.0, 3.0]
    assert logger.values("value_epoch") == [(1.5, 3)]  # the mean, at the epoch's last step
    assert set(trainer.callback_metrics) == {"value", "value_step", "value_epoch"}
    assert trainer.callback_metrics["value"] == 1.5 and trainer.callback_metrics["value_step"] == 3.0
    assert set(trainer.logged_metrics) == {"value_step", "value_epoch"}


def test_epoch_values_are_sent_with_the_epoch_number():
    _, logger = run(ValuesModel(on_step=False, on_epoch=True), max_epochs=2)
    assert logger.values("value") == [(1.5, 3), (1.5, 7)]
    assert [m["epoch"] for m, _ in logger.metrics] == [0, 1]


@pytest.mark.parametrize(
    ("reduce_fx", "expected"),
    [("mean", 1.5), ("sum", 6.0), ("max", 3.0), ("min", 0.0), (torch.max, 3.0), (lambda v: v.median(), 1.0)],
)
def test_reduce_fx(reduce_fx, expected):
    trainer, _ = run(ValuesModel(on_epoch=True, on_step=False, reduce_fx=reduce_fx))
    assert trainer.callback_metrics["value"] == pytest.approx(expected)


def test_invalid_reduce_fx_names_the_argument():
    with pytest.raises(MisconfigurationException, match="reduce_fx"):
        run(ValuesModel(reduce_fx="median"))


class ValidationValues(BoringModel):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_value", y.float().mean())  # defaults: on_epoch, mean weighted by batch size


def test_validation_epoch_mean_is_weighted_by_the_inferred_batch_size():
    values = torch.tensor([1.0, 1.0, 1.0, 5.0])  # batches of 3 and 1: unweighted mean 3, weighted 2
    val = DataLoader(TensorDataset(torch.randn(4, 32), values), batch_size=3)
    trainer, logger = run(ValidationValues(), val=val)
    assert trainer.callback_metrics["val_value"] == pytest.approx(2.0)
    assert logger.values("val_value") == [(pytest.approx(2.0), 3)]


def test_explicit_batch_size_weights_the_mean():
    class Weighted(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("w", float(batch_idx), on_epoch=True, on_step=False, batch_size=batch_idx + 1)
            return self.loss(batch)

    trainer, _ = run(Weighted())
    # values 0..3 with weights 1..4: (0 + 2 + 6 + 12) / 10
    assert trainer.callback_metrics["w"] == pytest.approx(2.0)


def test_batch_size_inference_fails_clearly_without_tensors():
    class NoTensors(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x", 1.0, on_epoch=True)
            return self.loss(torch.randn(4, 32))

    class Loader:
        def __iter__(self):
            return iter([{"name": 3}] * 2)

        def __len__(self):
            return 2

    with pytest.raises(MisconfigurationException, match="batch_size"):
        Trainer(**quiet(max_epochs=1)).fit(NoTensors(), Loader())


def test_prog_bar_and_logger_flags():
    class Flags(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = self.loss(batch)
            self.log("shown", loss, prog_bar=True, logger=False)
            self.log("sent", loss)
            return loss

    trainer, logger = run(Flags())
    assert set(trainer.progress_bar_metrics) == {"shown"}
    assert isinstance(trainer.progress_bar_metrics["shown"], float)
    assert "shown" not in trainer.logged_metrics and "shown" in trainer.callback_metrics
    assert logger.values("shown") == [] and len(logger.values("sent")) == 4


def test_log_dict():
    class Dict(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log_dict({"a": 1.0, "b": torch.tensor(2.0)}, on_epoch=True, on_step=False)
            return self.loss(batch)

    trainer, _ = run(Dict())
    assert trainer.callback_metrics == {"a": 1.0, "b": 2.0}


def test_several_val_dataloaders_get_a_suffix_per_loader():
    class TwoLoaders(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("val_loss", float(dataloader_idx))
            self.log("shared", 1.0, add_dataloader_idx=False)

    trainer, logger = run(TwoLoaders(), val=[loader(16), loader(16)])
    assert trainer.callback_metrics["val_loss/dataloader_idx_0"] == 0.0
    assert trainer.callback_metrics["val_loss/dataloader_idx_1"] == 1.0
    assert trainer.callback_metrics["shared"] == 1.0
    results = trainer.validate(TwoLoaders(), [loader(16), loader(16)], verbose=False)
    assert results == [{"val_loss/dataloader_idx_0": 0.0, "shared": 1.0},
                       {"val_loss/dataloader_idx_1": 1.0, "shared": 1.0}]  # fmt: skip


def test_logging_in_epoch_end_hooks():
    class EpochEnd(BoringModel):
        def on_train_epoch_end(self):
            self.log("epoch_value", 7.0)

        def on_validation_epoch_end(self):
            self.log("val_epoch_value", 3.0)

    class Monitor(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            self.seen = float(trainer.callback_metrics["val_epoch_value"])

    monitor = Monitor()
    trainer, logger = run(EpochEnd(), val=loader(16), callbacks=[monitor])
    assert monitor.seen == 3.0
    assert logger.values("epoch_value") == [(7.0, 3)]
    assert trainer.callback_metrics["epoch_value"] == 7.0


def test_callbacks_can_log_with_the_hooks_defaults():
    class Logging(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pl_module.log("from_callback", outputs["loss"])

    trainer, logger = run(BoringModel(), callbacks=[Logging()])
    assert len(logger.values("from_callback")) == 4


def test_callback_metrics_value_formats_like_the_seed():
    trainer, _ = run(BoringModel())
    loss = trainer.callback_metrics.get("train_loss")
    assert f"{loss:.4f}" == f"{loss.item():.4f}"


# ------------------------------------------------------------------------------------ errors
def test_log_outside_allowed_hooks_fails():
    class Bad(BoringModel):
        def configure_optimizers(self):
            self.log("nope", 1.0)
            return super().configure_optimizers()

    with pytest.raises(MisconfigurationException, match="You can't `self.log\\(\\)` inside `configure_optimizers`"):
        run(Bad())


def test_log_during_predict_fails():
    class Bad(BoringModel):
        def predict_step(self, batch, batch_idx):
            self.log("nope", 1.0)

    with pytest.raises(MisconfigurationException, match="result collection is not registered yet.*predict"):
        Trainer(**quiet()).predict(Bad(), loader(8))


@pytest.mark.parametrize("value", [None, "foo", [1, 2], {"a": 1}])
def test_log_of_a_value_that_is_not_a_number_fails(value):
    class Bad(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", value)
            return self.loss(batch)

    said = f"`self.log(foo, {value})` was called, but `{type(value).__name__}` values cannot be logged"
    with pytest.raises(MisconfigurationException, match=re.escape(said)):
        run(Bad())


def test_on_step_in_an_epoch_hook_fails():
    class Bad(BoringModel):
        def on_train_epoch_end(self):
            self.log("x", 1.0, on_step=True)

    with pytest.raises(MisconfigurationException, match="on_step"):
        run(Bad())


def test_neither_on_step_nor_on_epoch_fails():
    class Bad(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x", 1.0, on_step=False, on_epoch=False)
            return self.loss(batch)

    with pytest.raises(MisconfigurationException, match="`on_step=False` and `on_epoch=False` is not useful"):
        run(Bad())


def test_logger_true_without_a_logger_warns_and_the_value_is_still_a_logged_metric():
    class Explicit(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x", 2.0, logger=True)
            return self.loss(batch)

    trainer = Trainer(**quiet(max_epochs=1, limit_train_batches=2))
    with pytest.warns(UserWarning, match=r"log\('x', ..., logger=True\)` but have no logger configured"):
        trainer.fit(Explicit(), loader(32))
    assert trainer.logged_metrics == {"x": torch.tensor(2.0)}


def test_non_scalar_tensor_fails():
    class Bad(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x", torch.ones(3))
            return self.loss(batch)

    with pytest.raises(MisconfigurationException, match="one element"):
        run(Bad())


def test_same_name_with_different_arguments_fails():
    class Bad(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x", 1.0, prog_bar=batch_idx == 1)
            return self.loss(batch)

    with pytest.raises(MisconfigurationException, match="different arguments"):
        run(Bad())


def test_dataloader_suffix_in_names_is_refused():
    class Bad(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x/dataloader_idx_0", 1.0)
            return self.loss(batch)

    with pytest.raises(MisconfigurationException, match="key `x/dataloader_idx_0` but it should not contain"):
        run(Bad())


def test_log_without_a_trainer_warns_and_drops():
    with pytest.warns(UserWarning, match="the `self.trainer` reference is not registered.*not attached"):
        BoringModel().log("x", 1.0)


# ------------------------------------------------------------------------------ torchmetrics
class AccuracyModel(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        import torchmetrics

        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=2)
        self.step_values: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.accuracy(self(x), y)
        self.log("val_acc", self.accuracy)
        self.log("val_acc_step", self.accuracy, on_step=True, on_epoch=False)


def accuracy_data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(n, 32, generator=generator), torch.randint(0, 2, (n,), generator=generator)


def test_torchmetrics_accuracy_matches_a_manual_computation():
    x, y = accuracy_data()
    model = AccuracyModel()
    trainer = Trainer(**quiet(limit_val_batches=1.0))
    results = trainer.validate(model, DataLoader(TensorDataset(x, y), batch_size=7), verbose=False)
    with torch.no_grad():
        expected = (model(x).argmax(dim=1) == y).float().mean()
    assert results[0]["val_acc"] == pytest.approx(expected.item())
    assert torch.allclose(trainer.callback_metrics["val_acc"], expected)
    # computed at epoch end, then reset for the next run
    assert model.accuracy.update_count == 0


def test_torchmetrics_are_reset_between_epochs():
    x, y = accuracy_data(16)
    model = AccuracyModel()
    _, logger = run(model, val=DataLoader(TensorDataset(x, y), batch_size=4), max_epochs=2)
    values = [v for v, _ in logger.values("val_acc")]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    step_logs = logger.values("val_acc_step")
    assert len(step_logs) == 8  # every validation batch, both epochs
