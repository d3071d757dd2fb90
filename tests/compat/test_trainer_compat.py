"""Scripts a Lightning user writes, run as they are: the Trainer and LightningModule behave as Lightning 2.x."""

from __future__ import annotations

import inspect
import logging
import os
import pickle
from datetime import timedelta

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from fulmen import Callback, LightningDataModule, Trainer
from fulmen.callbacks import EarlyStopping, EarlyStoppingReason, ModelCheckpoint, TQDMProgressBar
from fulmen.callbacks.model_summary import summarize
from fulmen.loggers import TensorBoardLogger
from fulmen.utilities.exceptions import MisconfigurationException, PossibleUserWarning
from tests.trainer.helpers import BoringModel, RandomDataset, RecordingLogger, loader, quiet


def trainer(**flags):
    return Trainer(**quiet(**flags))


# ------------------------------------------------------------------------ silent differences
def test_fit_validation_output_can_feed_the_next_training_loss():
    class KeepsValidation(BoringModel):
        kept = None

        def training_step(self, batch, batch_idx):
            loss = self.loss(batch)
            return loss if self.kept is None else loss * self.kept.detach().clone().requires_grad_(False) + loss

        def validation_step(self, batch, batch_idx):
            self.kept = self.loss(batch)  # under no_grad in fit, not inference_mode

    model = KeepsValidation()
    trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1).fit(model, loader(), loader())
    assert not model.kept.is_inference()


def test_max_time_ends_with_a_validation_run():
    class Slow(BoringModel):
        validations = 0

        def on_validation_end(self):
            self.validations += 1

        def training_step(self, batch, batch_idx):
            import time

            time.sleep(0.05)
            return super().training_step(batch, batch_idx)

    model = Slow()
    t = trainer(max_time={"seconds": 0.12}, limit_val_batches=1, num_sanity_val_steps=0)
    t.fit(model, loader(640), loader())
    assert t.global_step < 80  # stopped by time, inside the first epoch
    assert model.validations == 1  # the closing validation


def test_overfit_batches_turns_off_validation_shuffling():
    t = trainer(max_epochs=1, overfit_batches=2)
    t.fit(BoringModel(), loader(shuffle=True), loader(shuffle=True))
    assert isinstance(t.val_dataloaders.sampler, SequentialSampler)
    assert isinstance(t.train_dataloader.sampler, SequentialSampler)


def test_configure_gradient_clipping_gets_none_when_no_algorithm_was_set():
    seen = []

    class Clip(BoringModel):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            seen.append((gradient_clip_val, gradient_clip_algorithm))
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    trainer(max_steps=1, gradient_clip_val=0.5).fit(Clip(), loader())
    assert seen == [(0.5, None)]


def test_an_attached_module_allows_attribute_walks_and_graph_logging(tmp_path):
    class WithExample(BoringModel):
        def __init__(self):
            super().__init__()
            self.example_input_array = torch.randn(2, 32)

    model = WithExample()
    t = Trainer(**quiet(logger=TensorBoardLogger(tmp_path, log_graph=True), max_steps=1))
    t.fit(model, loader())
    assert hasattr(model, "load_from_checkpoint")
    assert "load_from_checkpoint" in dict(inspect.getmembers(model))
    with pytest.raises(TypeError, match="classmethod"):
        model.load_from_checkpoint("x.ckpt")
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(model.example_input_array), model(model.example_input_array))


def test_bad_training_data_is_named():
    with pytest.raises(MisconfigurationException, match="train_dataloaders"):
        trainer(max_epochs=1).fit(BoringModel(), train_dataloaders="not a loader")
    empty = DataLoader(RandomDataset(4), batch_size=8, drop_last=True)
    t = trainer(max_epochs=1)
    with pytest.warns(PossibleUserWarning, match="train_dataloaders"):
        t.fit(BoringModel(), empty)
    assert t.global_step == 0


# -------------------------------------------------------------------------------- Trainer API
def test_trainer_api_users_rely_on(capsys):
    seen = {}

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            progress = trainer.fit_loop.epoch_loop.batch_progress
            seen.setdefault("batches", []).append((progress.current.completed, trainer.is_last_batch))
            seen["epochs"] = trainer.fit_loop.epoch_progress.current.completed
            seen["max_epochs"] = trainer.fit_loop.max_epochs

        def on_validation_end(self, trainer, pl_module):
            seen["val_batches"] = trainer.validate_loop.batch_progress.current.completed

    t = trainer(max_epochs=2, callbacks=[Probe()], limit_val_batches=2, num_sanity_val_steps=0)
    with t.init_module():
        model = BoringModel()
    assert model.layer.weight.device.type == "cpu"
    t.fit(model, loader(24), loader())
    assert seen["batches"][-3:] == [(1, False), (2, False), (3, True)]
    assert seen["epochs"] == 1 and seen["max_epochs"] == 2 and seen["val_batches"] == 2
    assert t.scaler is None and t.distributed_sampler_kwargs is None
    t.print("only on rank zero")
    assert "only on rank zero" in capsys.readouterr().out
    assert Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn").device_ids == [0, 1]


class Opaque:
    """A user type that fulmen's safe loader does not know."""


def test_weights_only_reaches_checkpoint_loading(tmp_path):
    model = BoringModel()
    t = trainer(max_steps=1)
    t.fit(model, loader())
    path = tmp_path / "trusted.ckpt"
    t.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["pytorch-lightning_version"]  # what Lightning needs to read it
    assert BoringModel.CHECKPOINT_HYPER_PARAMS_KEY == "hyper_parameters"
    checkpoint["extra"] = Opaque()  # outside the safe allowlist
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match="weights_only=False"):
        trainer().validate(model, loader(), ckpt_path=str(path), verbose=False)
    results = trainer().validate(model, loader(), ckpt_path=str(path), verbose=False, weights_only=False)
    assert "val_loss" in results[0]


def test_validate_says_which_checkpoint_it_loads(tmp_path, caplog):
    t = trainer(max_steps=1)
    t.fit(BoringModel(), loader())
    path = str(tmp_path / "a.ckpt")
    t.save_checkpoint(path)
    with caplog.at_level(logging.INFO):
        t.validate(BoringModel(), loader(), ckpt_path=path, verbose=False)
    assert f"Loaded model weights from the checkpoint at {path}" in caplog.text


def test_enable_autolog_hparams_and_no_hparams_without_save_hyperparameters():
    class Saved(BoringModel):
        def __init__(self, lr=0.1):
            super().__init__(lr)
            self.save_hyperparameters()

    for model, flag, expected in ((BoringModel(), True, []), (Saved(), False, []), (Saved(), True, [{"lr": 0.1}])):
        logger = RecordingLogger()
        Trainer(**quiet(logger=logger, max_steps=1, enable_autolog_hparams=flag)).fit(model, loader())
        assert logger.hparams == expected


def test_trainer_flags_from_pl_trainer_environment(monkeypatch):
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    monkeypatch.setenv("PL_TRAINER_LIMIT_TRAIN_BATCHES", "0.5")
    t = trainer()
    assert t.max_epochs == 3 and t.limit_train_batches == 0.5
    assert trainer(max_epochs=7).max_epochs == 7  # an explicit flag wins


# ------------------------------------------------------------------------ LightningModule API
def test_export_and_summary_sizes(tmp_path):
    pytest.importorskip("onnx")

    class Net(BoringModel):
        def __init__(self):
            super().__init__()
            self.example_input_array = torch.randn(4, 32)

    model = Net()
    scripted = model.to_torchscript(tmp_path / "model.pt")
    assert (tmp_path / "model.pt").is_file()
    assert torch.allclose(scripted(model.example_input_array), model(model.example_input_array))
    traced = model.to_torchscript(method="trace")
    assert torch.allclose(traced(model.example_input_array), model(model.example_input_array))
    model.to_onnx(tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").stat().st_size > 0
    summary = summarize(model)
    assert (summary[0].in_size, summary[0].out_size) == ([4, 32], [4, 2])
    assert "In sizes" in str(summary) and "Out sizes" in str(summary)


def test_steps_without_batch_idx():
    class Short(BoringModel):
        def training_step(self, batch):
            return self.loss(batch)

        def validation_step(self, batch):
            self.log("val_loss", self.loss(batch))

    t = trainer(max_epochs=1)
    t.fit(Short(), loader(16), loader(16))
    assert t.global_step == 2 and "val_loss" in t.callback_metrics


# -------------------------------------------------------------------------- more differences
def test_fast_dev_run_logger_pickles_for_spawned_ranks():
    t = Trainer(fast_dev_run=True, accelerator="cpu", enable_progress_bar=False)
    pickle.loads(pickle.dumps(t.logger))


def test_mid_epoch_validation_sees_training_metrics(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="train_loss", save_top_k=1)
    t = trainer(max_epochs=1, val_check_interval=0.5, callbacks=[checkpoint], enable_checkpointing=True)
    t.fit(BoringModel(), loader(32), loader(16))
    assert checkpoint.best_model_path and checkpoint.best_model_score is not None


def test_frozen_submodule_stays_in_eval_mode_after_validation():
    class Frozen(BoringModel):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(32, 32)
            self.backbone.eval()

        def forward(self, x):
            return self.layer(self.backbone(x))

        def on_train_batch_start(self, batch, batch_idx):
            assert not self.backbone.training and self.layer.training

    model = Frozen()
    trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1).fit(model, loader(), loader())
    assert not model.backbone.training and model.layer.training


def test_callback_metrics_do_not_carry_into_validate():
    t = trainer(max_epochs=1)
    model = BoringModel()
    t.fit(model, loader())
    assert "train_loss" in t.callback_metrics
    t.validate(model, loader(), verbose=False)
    assert set(t.callback_metrics) == {"val_loss"}


def test_validation_step_none_turns_validation_off():
    model = BoringModel()
    model.validation_step = None
    t = trainer(max_epochs=1)
    t.fit(model, loader(16), loader(16))
    assert "val_loss" not in t.callback_metrics and not t.enable_validation


def test_epoch_scheduler_steps_when_the_epoch_ends_early():
    class StopsEarly(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 1 else None

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    model = StopsEarly()
    t = trainer(max_epochs=2)
    t.fit(model, loader())
    assert t.optimizers[0].param_groups[0]["lr"] == 0.25


def test_val_check_interval_beyond_the_epoch_is_fine_without_validation():
    t = trainer(max_epochs=1, val_check_interval=100, limit_val_batches=0)
    t.fit(BoringModel(), loader(16), loader(16))
    assert t.global_step == 2


def test_time_based_val_check_interval():
    class Counts(BoringModel):
        validations = 0

        def on_validation_end(self):
            self.validations += 1

    model = Counts()
    t = trainer(max_epochs=1, val_check_interval=timedelta(microseconds=1), num_sanity_val_steps=0,
                limit_val_batches=1)  # fmt: skip
    t.fit(model, loader(32), loader(16))
    assert model.validations == 4  # after every batch: the interval is always over
    with pytest.raises(MisconfigurationException, match="val_check_interval"):
        trainer(val_check_interval="1 hour")


def test_missing_hparams_file_warns_and_loads(tmp_path):
    t = trainer(max_steps=1)
    t.fit(BoringModel(), loader())
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    with pytest.warns(UserWarning, match="does not exist"):
        model = BoringModel.load_from_checkpoint(path, hparams_file=tmp_path / "missing.yaml")
    assert isinstance(model, BoringModel)


def test_early_stopping_reason_callback_log_and_progress_bar_totals():
    class Logs(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.log("from_callback", 1.0)

    stopper = EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)
    bar = TQDMProgressBar()
    t = Trainer(**quiet(max_epochs=5, callbacks=[Logs(), stopper, bar], enable_progress_bar=True, limit_val_batches=3))
    t.fit(BoringModel(), loader(16), loader(64))
    assert stopper.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert "did not improve" in stopper.stopping_reason_message
    assert t.callback_metrics["from_callback"] == 1.0
    assert bar.total_val_batches == 3
    with pytest.raises(RuntimeError, match="outside the hooks"):
        Logs().log("x", 1.0)


def test_datamodule_str_names_its_loaders():
    class Data(LightningDataModule):
        def train_dataloader(self):
            return loader(40)

        def val_dataloader(self):
            return [loader(16), loader(8)]

    text = str(Data())
    assert text.split(os.linesep) == [
        "{Train dataloader: size=40}",
        "{Validation dataloader: 1. size=16 ; 2. size=8}",
        "{Test dataloader: None}",
        "{Predict dataloader: None}",
    ]
