"""ModelCheckpoint(save_on_exception=True): the state at the moment fit failed, in dirpath, and resuming from it."""

from __future__ import annotations

import os

import pytest
import torch
from tests.callbacks.resume_helpers import assert_same_tensors, loaders, quiet_trainer, run
from torch import nn

import fulmen as L
from fulmen.callbacks import Callback, ModelCheckpoint
from fulmen.utilities.exceptions import MisconfigurationException


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)]


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Raises in on_train_batch_end of a global step, or in a validation_step after it."""

    def __init__(self, step, in_validation=False):
        self.step, self.in_validation = step, in_validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.in_validation and trainer.global_step == self.step:
            raise Crash(f"crash at step {self.step}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.in_validation and not trainer.sanity_checking and trainer.global_step == self.step:
            raise Crash(f"crash in validation at step {self.step}")


def checkpoints(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_saves_the_moment_of_the_exception_and_last(tmp_path):
    folder = tmp_path / "ckpts"
    callback = ModelCheckpoint(dirpath=folder, save_on_exception=True, save_last=True)
    model = Net()
    with pytest.raises(Crash):
        quiet_trainer(tmp_path, [CrashAt(5), callback], enable_checkpointing=True).fit(model, *loaders())
    assert checkpoints(folder) == ["epoch=0-step=5.ckpt", "last.ckpt"]
    saved = torch.load(folder / "epoch=0-step=5.ckpt", weights_only=True)
    assert saved["global_step"] == 5 and saved["loops"]["batch_idx"] == 5
    assert_same_tensors(model.state_dict(), saved["state_dict"], "weights")
    assert callback.last_model_path == str(folder / "last.ckpt")


@pytest.mark.parametrize(("step", "in_validation"), [(5, False), (12, True)], ids=["train-batch", "validation"])
def test_resuming_from_it_ends_as_an_uninterrupted_run(tmp_path, step, in_validation):
    """Exact for a failure between batches. A failure inside validation resumes after that validation
    (it is not run again), so the run is exact only when validation draws no random numbers, as here."""

    def make_callbacks(root):
        return lambda: [ModelCheckpoint(dirpath=root / "ckpts", save_on_exception=True, save_top_k=0)]

    reference = run(
        tmp_path / "full",
        Net,
        make_callbacks(tmp_path / "full"),
        val_check_interval=4,
        val_noise=0,
        enable_checkpointing=True,
    )
    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        run(
            crashed,
            Net,
            make_callbacks(crashed),
            extra=[CrashAt(step, in_validation)],
            val_check_interval=4,
            val_noise=0,
            enable_checkpointing=True,
        )
    (name,) = checkpoints(crashed / "ckpts")
    assert name.endswith(f"-step={step}.ckpt")
    resumed = run(
        crashed,
        Net,
        make_callbacks(crashed),
        ckpt_path=crashed / "ckpts" / name,
        seed=1,
        val_check_interval=4,
        val_noise=0,
        enable_checkpointing=True,
    )
    assert_same_tensors(reference.module.state_dict(), resumed.module.state_dict(), "weights")
    assert_same_tensors(reference.optimizer_state, resumed.optimizer_state, "optimizer")


def test_no_file_when_off_before_training_or_just_saved(tmp_path):
    off = ModelCheckpoint(dirpath=tmp_path / "off")
    with pytest.raises(Crash):
        quiet_trainer(tmp_path, [CrashAt(3), off], enable_checkpointing=True).fit(Net(), *loaders())
    assert checkpoints(tmp_path / "off") == []

    class CrashInSanityCheck(Callback):
        def on_validation_start(self, trainer, pl_module):
            raise Crash

    early = ModelCheckpoint(dirpath=tmp_path / "early", save_on_exception=True)
    with pytest.raises(Crash):
        quiet_trainer(tmp_path, [CrashInSanityCheck(), early], enable_checkpointing=True).fit(Net(), *loaders())
    assert checkpoints(tmp_path / "early") == []

    # a checkpoint of step 4 was just written (at on_train_batch_end, before the validation that
    # fails): the same state is not saved again
    saved = ModelCheckpoint(dirpath=tmp_path / "saved", every_n_train_steps=4, save_on_exception=True)
    crash = CrashAt(4, in_validation=True)
    with pytest.raises(Crash):
        trainer = quiet_trainer(tmp_path, [crash, saved], enable_checkpointing=True, val_check_interval=4)
        trainer.fit(Net(), *loaders())
    assert checkpoints(tmp_path / "saved") == ["epoch=0-step=4.ckpt"]


def test_a_failed_rescue_warns_and_the_original_error_is_raised(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    callback = ModelCheckpoint(dirpath=blocker / "ckpts", save_on_exception=True, save_top_k=0)
    with pytest.warns(UserWarning, match="save_on_exception=True.*could not save"):
        with pytest.raises(Crash):
            quiet_trainer(tmp_path, [CrashAt(3), callback], enable_checkpointing=True).fit(Net(), *loaders())


def test_invalid_argument():
    with pytest.raises(MisconfigurationException, match="`save_on_exception="):
        ModelCheckpoint(save_on_exception="yes")
