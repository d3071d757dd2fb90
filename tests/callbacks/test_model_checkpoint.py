"""ModelCheckpoint: file names, argument checks, and the files a real fit leaves on disk.

Every fit runs a tiny model on the CPU with 4 training batches per epoch; validation logs a
scripted ``val_loss`` (one value per epoch, or per validation run) so that which checkpoints
stay is known in advance.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path

import fsspec
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Callback, LightningModule, Trainer
from fulmen.callbacks.checkpoint import Checkpoint
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.checkpointing.safe_reading import safe_load
from fulmen.loggers import CSVLogger
from fulmen.utilities.exceptions import MisconfigurationException

STEPS_PER_EPOCH = 4


@pytest.fixture
def tmp_path(tmp_path):
    # Resolved, so that it compares equal to the absolute paths ModelCheckpoint reports.
    return Path(os.path.realpath(tmp_path))


class ScriptedModel(LightningModule):
    """Linear regression whose validation logs the next value of ``val_losses``.

    ``per="epoch"`` picks the value by ``current_epoch`` (so a resumed run continues the
    script), ``per="run"`` by the number of validation runs so far (several per epoch).
    """

    def __init__(self, val_losses=None, per="epoch", metric="val_loss", epoch_metric=None):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.val_losses = list(val_losses) if val_losses is not None else None
        self.per = per
        self.metric = metric
        self.epoch_metric = epoch_metric
        self.val_runs = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        if self.val_losses is None:
            value = F.mse_loss(self.layer(x), y)
        else:
            value = self.val_losses[self.current_epoch if self.per == "epoch" else self.val_runs]
        self.log(self.metric, value)

    def on_validation_end(self):
        if not self.trainer.sanity_checking:
            self.val_runs += 1

    def on_train_epoch_end(self):
        if self.epoch_metric is not None:
            self.log(self.epoch_metric, float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int) -> DataLoader:
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, 2, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2)


def fit(tmp_path, callbacks, model=None, val=True, ckpt_path=None, **kwargs):
    options = dict(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    trainer = Trainer(callbacks=callbacks, **options)
    model = model if model is not None else ScriptedModel()
    trainer.fit(
        model,
        train_dataloaders=_loader(2 * STEPS_PER_EPOCH),
        val_dataloaders=_loader(4) if val else None,
        ckpt_path=ckpt_path,
    )
    return trainer, model


def names(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.endswith(".ckpt")) if os.path.isdir(folder) else []


class CountSaves(Callback):
    """Records every checkpoint the Trainer writes, and the folder as it was at that moment."""

    def __init__(self, folder=None):
        self.steps = []
        self.folder = folder
        self.listings = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.steps.append(trainer.global_step)
        if self.folder is not None:
            self.listings.append(names(self.folder))


# ============================================================================= no Trainer needed


def test_constants_and_base_class():
    assert ModelCheckpoint.CHECKPOINT_NAME_LAST == "last"
    assert ModelCheckpoint.FILE_EXTENSION == ".ckpt"
    assert ModelCheckpoint.CHECKPOINT_JOIN_CHAR == "-"
    assert ModelCheckpoint.CHECKPOINT_EQUALS_CHAR == "="
    assert isinstance(ModelCheckpoint(), Checkpoint)
    from fulmen.callbacks import ModelCheckpoint as exported

    assert exported is ModelCheckpoint


@pytest.mark.parametrize(
    ("filename", "auto_insert", "metrics", "expected"),
    [
        (None, True, {"epoch": 3, "step": 40}, "epoch=3-step=40.ckpt"),
        ("{epoch}-{val_loss:.2f}", True, {"epoch": 1, "val_loss": torch.tensor(0.123)}, "epoch=1-val_loss=0.12.ckpt"),
        ("{epoch:03d}", True, {"epoch": torch.tensor(7)}, "epoch=007.ckpt"),
        ("e{epoch}-l{val_loss:.1f}", False, {"epoch": 2, "val_loss": 0.25}, "e2-l0.2.ckpt"),
        ("best", True, {"epoch": 2}, "best.ckpt"),
        # The longer key is replaced first, so "{epoch}" does not eat "{epoch_loss}".
        ("{epoch}-{epoch_loss:.1f}", True, {"epoch": 1, "epoch_loss": 0.5}, "epoch=1-epoch_loss=0.5.ckpt"),
        # Names with "." and "/" are looked up whole.
        ("{acc.top1:.1f}", True, {"acc.top1": 0.75}, "acc.top1=0.8.ckpt"),
        ("ep{epoch}-{val/loss:.2f}", False, {"epoch": 4, "val/loss": 0.5}, "ep4-0.50.ckpt"),
        # With auto-insert a "/" in the name makes a sub-folder, as documented.
        ("{val/loss:.1f}", True, {"val/loss": 0.5}, "val/loss=0.5.ckpt"),
        # A key that is not logged formats as 0.
        ("{epoch}-{missing}", True, {"epoch": 1}, "epoch=1-missing=0.ckpt"),
    ],
)
def test_format_checkpoint_name(filename, auto_insert, metrics, expected):
    ckpt = ModelCheckpoint(filename=filename, auto_insert_metric_name=auto_insert)
    given = dict(metrics)
    assert ckpt.format_checkpoint_name(metrics) == expected
    assert metrics == given  # the caller's dict is not changed


def test_format_checkpoint_name_version_filename_and_dirpath(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}")
    assert ckpt.format_checkpoint_name({"epoch": 2}, ver=3) == str(tmp_path / "epoch=2-v3.ckpt")
    assert ckpt.format_checkpoint_name({"epoch": 2}, filename="last") == str(tmp_path / "last.ckpt")
    remote = ModelCheckpoint(dirpath="memory://bucket/run/", filename="{step}")
    assert remote.dirpath == "memory://bucket/run"
    assert remote.format_checkpoint_name({"step": 5}) == "memory://bucket/run/step=5.ckpt"
    # prefix= (Lightning's keyword) goes in front of the name, joined as the parts of a name are.
    assert ckpt.format_checkpoint_name({"epoch": 2}, prefix="test", ver=1) == str(tmp_path / "test-epoch=2-v1.ckpt")
    ckpt.CHECKPOINT_JOIN_CHAR = "@"
    assert ckpt.format_checkpoint_name({"epoch": 2}, prefix="test") == str(tmp_path / "test@epoch=2.ckpt")


def test_dirpath_is_normalized(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ModelCheckpoint(dirpath="ckpts").dirpath == os.path.realpath(tmp_path / "ckpts")
    assert ModelCheckpoint(dirpath=f"file://{tmp_path}/x").dirpath == os.path.realpath(tmp_path / "x")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ModelCheckpoint(dirpath="~/y").dirpath == os.path.realpath(tmp_path / "y")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"save_top_k": -2}, "save_top_k=-2"),
        ({"save_top_k": 1.5}, "save_top_k=1.5"),
        ({"mode": "best"}, "mode='best'"),
        ({"save_last": "yes"}, "save_last='yes'"),
        ({"every_n_train_steps": -1}, "every_n_train_steps=-1"),
        ({"every_n_epochs": -3}, "every_n_epochs=-3"),
        ({"every_n_epochs": 1.0}, "every_n_epochs=1.0"),
        ({"train_time_interval": 5}, "train_time_interval=5"),
        ({"train_time_interval": timedelta(0)}, "train_time_interval="),
        ({"monitor": 3}, "monitor=3"),
        ({"filename": 3}, "filename=3"),
        ({"dirpath": 3}, "dirpath=3"),
        ({"save_on_train_epoch_end": "x"}, "save_on_train_epoch_end='x'"),
        ({"save_top_k": 3}, "save_top_k=3, monitor=None"),
        ({"every_n_train_steps": 2, "train_time_interval": timedelta(seconds=1)}, "mutually exclusive"),
        ({"every_n_train_steps": 2, "every_n_epochs": 1}, "every_n_train_steps=2, every_n_epochs=1"),
    ],
)
def test_invalid_arguments_raise_at_construction(kwargs, needle):
    with pytest.raises(MisconfigurationException, match="Accepted") as info:
        ModelCheckpoint(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "lightning_words"),
    [
        ({"save_top_k": -3}, "Invalid value for save_top_k=-3. Must be >= -1"),
        ({"every_n_epochs": -3}, "Invalid value for every_n_epochs=-3. Must be >= 0"),
        ({"every_n_train_steps": -3}, "Invalid value for every_n_train_steps=-3. Must be >= 0"),
        ({"mode": "best"}, "`mode` can be min, max but got best"),
        ({"save_top_k": 3}, "ModelCheckpoint(save_top_k=3, monitor=None) is not a valid configuration"),
        (
            {"every_n_epochs": 2, "train_time_interval": timedelta(hours=1)},
            "Combination of parameters every_n_train_steps=None, every_n_epochs=2, train_time_interval=",
        ),
    ],
)
def test_invalid_arguments_say_what_lightning_says(kwargs, lightning_words):
    with pytest.raises(MisconfigurationException, match=re.escape(lightning_words)):
        ModelCheckpoint(**kwargs)


def test_valid_corner_arguments():
    assert ModelCheckpoint(save_top_k=3, monitor="val_loss", mode="max").save_top_k == 3
    for k in (-1, 0, 1):
        ModelCheckpoint(save_top_k=k)
    default = ModelCheckpoint()
    assert (default.every_n_epochs, default.every_n_train_steps, default.train_time_interval) == (1, 0, None)
    steps = ModelCheckpoint(every_n_train_steps=5)
    assert (steps.every_n_epochs, steps.every_n_train_steps) == (0, 5)
    # 0 means "never" and combines with another trigger.
    assert ModelCheckpoint(every_n_train_steps=0, every_n_epochs=2).every_n_epochs == 2
    assert ModelCheckpoint(save_last="link").save_last == "link"


def test_state_key_separates_settings():
    keys = {
        ModelCheckpoint(monitor="val_loss").state_key,
        ModelCheckpoint(monitor="val_loss", mode="max").state_key,
        ModelCheckpoint(monitor="val_acc").state_key,
        ModelCheckpoint(every_n_train_steps=10).state_key,
        ModelCheckpoint(every_n_epochs=2).state_key,
        ModelCheckpoint(train_time_interval=timedelta(minutes=5)).state_key,
    }
    assert len(keys) == 6
    assert ModelCheckpoint(monitor="a").state_key == ModelCheckpoint(monitor="a", dirpath="x").state_key
    assert ModelCheckpoint(monitor="a").state_key.startswith("ModelCheckpoint{")


# ================================================================================== with a fit


def test_default_dirpath_without_logger_and_enabled_by_default(tmp_path):
    trainer, _ = fit(tmp_path, callbacks=None)
    checkpoint = trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint)
    assert checkpoint.dirpath == os.path.realpath(tmp_path / "checkpoints")
    # save_top_k=1 without a monitor keeps the latest only.
    assert names(tmp_path / "checkpoints") == ["epoch=2-step=12.ckpt"]
    assert checkpoint.best_model_path == str(tmp_path / "checkpoints" / "epoch=2-step=12.ckpt")


def test_default_dirpath_follows_the_logger(tmp_path):
    logger = CSVLogger(save_dir=tmp_path, name="exp")
    ckpt = ModelCheckpoint()
    fit(tmp_path, [ckpt], logger=logger, max_epochs=1)
    expected = tmp_path / "exp" / "version_0" / "checkpoints"
    assert ckpt.dirpath == os.path.realpath(expected)
    assert names(expected) == ["epoch=0-step=4.ckpt"]


SCRIPT = [0.5, 0.3, 0.9, 0.1, 0.4]


@pytest.mark.parametrize(
    ("mode", "kept", "best", "kth"),
    [
        (
            "min",
            ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"],
            ("epoch=3-step=16.ckpt", 0.1),
            ("epoch=1-step=8.ckpt", 0.3),
        ),
        (
            "max",
            ["epoch=0-step=4.ckpt", "epoch=2-step=12.ckpt"],
            ("epoch=2-step=12.ckpt", 0.9),
            ("epoch=0-step=4.ckpt", 0.5),
        ),
    ],
)
def test_top_k_keeps_the_best_by_score(tmp_path, mode, kept, best, kth):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode=mode, save_top_k=2)
    fit(tmp_path, [ckpt], ScriptedModel(SCRIPT), max_epochs=5)
    assert names(tmp_path) == kept
    assert ckpt.best_model_path == str(tmp_path / best[0])
    assert ckpt.best_model_score.item() == pytest.approx(best[1])
    assert ckpt.kth_best_model_path == str(tmp_path / kth[0])
    assert ckpt.kth_value.item() == pytest.approx(kth[1])
    # The score of the newest top-k checkpoint.
    assert ckpt.current_score.item() == pytest.approx(0.1 if mode == "min" else 0.9)
    assert {os.path.basename(p): round(v.item(), 4) for p, v in ckpt.best_k_models.items()} == {
        kept[0]: SCRIPT[int(kept[0][6])],
        kept[1]: SCRIPT[int(kept[1][6])],
    }
    # Each file names itself in its own callback state.
    state = safe_load(ckpt.best_model_path)["callbacks"][ckpt.state_key]
    assert ckpt.best_model_path in state["best_k_models"]


def test_verbose_reports_each_decision(tmp_path, caplog):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", verbose=True)
    with caplog.at_level("INFO", logger="fulmen"):
        fit(tmp_path, [ckpt], ScriptedModel([0.2, 0.5]), max_epochs=2)
    text = caplog.text
    assert "'val_loss' reached 0.20000" in text and "'val_loss' was not in top 1" in text


def test_save_top_k_minus_one_keeps_all(tmp_path):
    with_monitor = ModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss", save_top_k=-1)
    without = ModelCheckpoint(dirpath=tmp_path / "b", save_top_k=-1)
    fit(tmp_path, [with_monitor, without], ScriptedModel(SCRIPT), max_epochs=5)
    expected = [f"epoch={e}-step={4 * (e + 1)}.ckpt" for e in range(5)]
    assert names(tmp_path / "a") == expected
    assert names(tmp_path / "b") == expected
    assert len(with_monitor.best_k_models) == 5
    assert with_monitor.best_model_path.endswith("epoch=3-step=16.ckpt")
    assert without.best_model_path.endswith("epoch=4-step=20.ckpt")


def test_save_top_k_zero_saves_only_last(tmp_path):
    last_only = ModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss", save_top_k=0, save_last=True)
    nothing = ModelCheckpoint(dirpath=tmp_path / "b", save_top_k=0)
    fit(tmp_path, [last_only, nothing], ScriptedModel(SCRIPT[:3]))
    assert names(tmp_path / "a") == ["last.ckpt"]
    assert names(tmp_path / "b") == []
    assert last_only.best_model_path == "" and last_only.best_k_models == {}
    assert last_only.last_model_path == str(tmp_path / "a" / "last.ckpt")
    assert safe_load(last_only.last_model_path)["global_step"] == 12


def test_every_n_train_steps(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    saves = CountSaves()
    fit(tmp_path, [ckpt, saves], val=False)
    assert names(tmp_path) == [
        "epoch=0-step=3.ckpt",
        "epoch=1-step=6.ckpt",
        "epoch=2-step=12.ckpt",
        "epoch=2-step=9.ckpt",
    ]
    assert saves.steps == [3, 6, 9, 12]


def test_every_n_epochs(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=2, save_top_k=-1, save_last=True)
    fit(tmp_path, [ckpt], max_epochs=5)
    assert names(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]
    # `last` is checked at every epoch end, not only on the every_n_epochs ones.
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 20


def test_train_time_interval(tmp_path):
    often = ModelCheckpoint(dirpath=tmp_path / "a", train_time_interval=timedelta(microseconds=1), save_top_k=-1)
    rarely = ModelCheckpoint(dirpath=tmp_path / "b", train_time_interval=timedelta(hours=1), save_top_k=-1)
    fit(tmp_path, [often, rarely], val=False, max_epochs=1)
    assert names(tmp_path / "a") == [f"epoch=0-step={s}.ckpt" for s in range(1, 5)]
    assert names(tmp_path / "b") == []


def test_save_weights_only(tmp_path):
    weights = ModelCheckpoint(dirpath=tmp_path / "w", save_weights_only=True)
    full = ModelCheckpoint(dirpath=tmp_path / "f", every_n_epochs=1)
    fit(tmp_path, [weights, full], max_epochs=1)
    light = safe_load(weights.best_model_path)
    assert "state_dict" in light and "layer.weight" in light["state_dict"]
    assert "optimizer_states" not in light and "callbacks" not in light
    heavy = safe_load(full.best_model_path)
    assert heavy["optimizer_states"] and full.state_key in heavy["callbacks"]


def test_save_last_true(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True)
    fit(tmp_path, [ckpt], ScriptedModel([0.2, 0.5, 0.9]))
    assert names(tmp_path) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert not os.path.islink(tmp_path / "last.ckpt")
    last = safe_load(tmp_path / "last.ckpt")
    assert last["global_step"] == 12
    assert last["callbacks"][ckpt.state_key]["last_model_path"] == str(tmp_path / "last.ckpt")


def test_save_last_without_validation_saves_at_epoch_end_even_with_save_on_train_epoch_end_false(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_on_train_epoch_end=False, save_top_k=0)
    trainer, _ = fit(tmp_path, [ckpt], val=False, max_epochs=2)
    assert names(tmp_path) == ["last.ckpt"]
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == trainer.global_step


def test_save_last_link(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last="link")
    fit(tmp_path, [ckpt])
    assert names(tmp_path) == ["epoch=2-step=12.ckpt", "last.ckpt"]
    link = tmp_path / "last.ckpt"
    assert os.path.islink(link)
    assert os.readlink(link) == "epoch=2-step=12.ckpt"  # relative: the folder can move
    assert safe_load(link)["global_step"] == 12


def test_save_last_link_writes_a_file_when_top_k_did_not_save(tmp_path):
    # The last epoch is not in the top 1: `last` must still be the newest state, not a link to epoch 0.
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last="link")
    fit(tmp_path, [ckpt], ScriptedModel([0.1, 0.2, 0.3]))
    assert names(tmp_path) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert not os.path.islink(tmp_path / "last.ckpt")
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 12


def test_memory_dirpath(tmp_path):
    root = f"memory://fulmen-test-{uuid.uuid4().hex}/ckpts"
    fs = fsspec.filesystem("memory")
    try:
        ckpt = ModelCheckpoint(dirpath=root, monitor="val_loss", save_top_k=2, save_last="link")
        fit(tmp_path, [ckpt], ScriptedModel(SCRIPT), max_epochs=5)
        listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        assert listed == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]
        assert ckpt.best_model_path == f"{root}/epoch=3-step=16.ckpt"
        assert safe_load(ckpt.best_model_path)["global_step"] == 16
        # No links on a memory filesystem: the last top-k checkpoint did not save, so a full file.
        assert safe_load(f"{root}/last.ckpt")["global_step"] == 20
        assert not os.path.exists(tmp_path / "checkpoints")
    finally:
        fs.rm(root.split("/ckpts")[0], recursive=True)


def test_filename_templates(tmp_path):
    plain = ModelCheckpoint(
        dirpath=tmp_path / "a", filename="{epoch}-{val_loss:.2f}", monitor="val_loss", save_top_k=-1
    )
    slashed = ModelCheckpoint(
        dirpath=tmp_path / "b",
        filename="e{epoch:02d}-loss{val/loss:.1f}",
        monitor="val/loss",
        save_top_k=-1,
        auto_insert_metric_name=False,
    )
    fit(tmp_path, [plain], ScriptedModel([0.5, 0.25, 0.125]))
    fit(tmp_path, [slashed], ScriptedModel([0.5, 0.25, 0.125], metric="val/loss"))
    assert names(tmp_path / "a") == [
        "epoch=0-val_loss=0.50.ckpt",
        "epoch=1-val_loss=0.25.ckpt",
        "epoch=2-val_loss=0.12.ckpt",
    ]
    assert names(tmp_path / "b") == ["e00-loss0.5.ckpt", "e01-loss0.2.ckpt", "e02-loss0.1.ckpt"]


def test_version_counter(tmp_path):
    first = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(tmp_path, [first], max_epochs=1)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        second = ModelCheckpoint(dirpath=tmp_path, save_last=True)
        fit(tmp_path, [second], max_epochs=1)
    assert names(tmp_path) == ["epoch=0-step=4-v1.ckpt", "epoch=0-step=4.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert second.best_model_path.endswith("epoch=0-step=4-v1.ckpt")
    assert second.last_model_path.endswith("last-v1.ckpt")

    third = ModelCheckpoint(dirpath=tmp_path, save_last=True, enable_version_counter=False)
    fit(tmp_path, [third], max_epochs=1)
    assert len(names(tmp_path)) == 4  # overwritten in place
    assert third.best_model_path.endswith("epoch=0-step=4.ckpt")


def test_missing_monitor_key_raises_with_available_keys(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc")
    with pytest.raises(MisconfigurationException, match="val_acc") as info:
        fit(tmp_path, [ckpt], ScriptedModel([0.1, 0.2, 0.3]))
    message = str(info.value)
    assert "'val_loss'" in message and "'train_loss'" in message
    # Lightning's wording, which its users search for.
    assert "`ModelCheckpoint(monitor='val_acc')` could not find the monitored key in the returned metrics:" in message
    assert "HINT: Did you call `log('val_acc', value)` in the `LightningModule`?" in message
    assert names(tmp_path) == []


def test_missing_monitor_key_without_validation_raises_at_the_first_epoch_end(tmp_path):
    """Nothing is logged after the module's epoch end when there is no validation: fail there, not warn forever."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss")
    trainer = None

    class Epochs(Callback):
        def on_train_epoch_end(self, trainer_, pl_module):
            nonlocal trainer
            trainer = trainer_

    with pytest.raises(MisconfigurationException, match=r"could not find the monitored key .*'train_loss'"):
        fit(tmp_path, [Epochs(), ckpt], val=False)
    assert trainer.current_epoch == 0 and names(tmp_path) == []


def test_missing_monitor_key_at_an_epoch_end_before_a_pending_validation_only_warns(tmp_path):
    # Validation every second epoch: at the first epoch's end val_loss cannot exist yet.
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_on_train_epoch_end=True)
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        fit(tmp_path, [ckpt], ScriptedModel([0.3, 0.2]), max_epochs=2, check_val_every_n_epoch=2)
    assert names(tmp_path) == ["epoch=1-step=8.ckpt"]


def test_missing_monitor_key_before_the_first_validation_only_warns(tmp_path):
    # Step checks before the first validation cannot see val_loss yet.
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", every_n_train_steps=2, save_top_k=-1)
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        fit(tmp_path, [ckpt], ScriptedModel([0.3, 0.2]), max_epochs=2)
    assert names(tmp_path) == ["epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt"]


def test_no_checkpoint_during_sanity_check_or_fast_dev_run(tmp_path):
    saves = CountSaves()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "a", save_top_k=-1, every_n_train_steps=1)
    fit(tmp_path, [ckpt, saves], ScriptedModel([0.1] * 3), max_epochs=1, num_sanity_val_steps=2, max_steps=2)
    assert saves.steps == [1, 2]
    dev = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    fit(tmp_path, [dev], fast_dev_run=2)
    assert names(tmp_path / "b") == []


def test_never_saves_twice_for_one_step(tmp_path):
    # Step 4 is both a step check and the epoch end: one top-k file and one `last`, written once each.
    saves = CountSaves()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, save_last=True)
    fit(tmp_path, [ckpt, saves], val=False, max_epochs=1)
    assert names(tmp_path) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert saves.steps == [4, 4]


def test_save_on_train_epoch_end_sees_the_modules_epoch_end_logs(tmp_path):
    # Validation runs at each epoch end, so the check waits for the module's on_train_epoch_end.
    auto = ModelCheckpoint(dirpath=tmp_path / "a", monitor="epoch_metric", mode="max")
    fit(tmp_path, [auto], ScriptedModel([0.1] * 3, epoch_metric="epoch_metric"))
    assert names(tmp_path / "a") == ["epoch=2-step=12.ckpt"]
    # Forced to the end of validation, the value does not exist yet.
    at_validation = ModelCheckpoint(dirpath=tmp_path / "b", monitor="epoch_metric", save_on_train_epoch_end=False)
    with pytest.raises(MisconfigurationException, match="epoch_metric"):
        fit(tmp_path, [at_validation], ScriptedModel([0.1] * 3, epoch_metric="epoch_metric"))


def test_checks_after_each_validation_within_an_epoch(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1)
    model = ScriptedModel([0.6, 0.5, 0.4, 0.3], per="run")
    fit(tmp_path, [ckpt], model, max_epochs=2, val_check_interval=0.5)
    assert names(tmp_path) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
        "epoch=1-step=6.ckpt",
        "epoch=1-step=8.ckpt",
    ]


def test_validation_every_other_epoch(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1)
    fit(tmp_path, [ckpt], ScriptedModel([0.5] * 4), max_epochs=4, check_val_every_n_epoch=2)
    assert names(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]


def test_nan_is_ranked_worst(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss")
    fit(tmp_path, [ckpt], ScriptedModel([math.nan, 0.7, 0.9]))
    assert names(tmp_path) == ["epoch=1-step=8.ckpt"]
    assert ckpt.best_model_score.item() == pytest.approx(0.7)


def test_stale_files_are_removed_only_after_the_new_ones_exist(tmp_path):
    saves = CountSaves(tmp_path)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    fit(tmp_path, [ckpt, saves], ScriptedModel(SCRIPT), max_epochs=5)
    # At every write, what the previous step left (2 top-k files and `last`) is still there.
    for listing in saves.listings[3:]:
        assert "last.ckpt" in listing and len(listing) >= 3
    assert names(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]


def test_to_yaml(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    fit(tmp_path, [ckpt], ScriptedModel(SCRIPT[:3]))
    ckpt.to_yaml()
    import yaml

    with open(tmp_path / "best_k_models.yaml") as f:
        data = yaml.safe_load(f)
    assert {os.path.basename(k): round(v, 4) for k, v in data.items()} == {
        "epoch=0-step=4.ckpt": 0.5,
        "epoch=1-step=8.ckpt": 0.3,
    }
    ckpt.to_yaml(tmp_path / "sub" / "other.yaml")
    assert (tmp_path / "sub" / "other.yaml").exists()


def test_find_last_checkpoints(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer, _ = fit(tmp_path, [ckpt], max_epochs=1)
    (tmp_path / "last-v3.ckpt").write_bytes(b"")
    (tmp_path / "lastly.ckpt").write_bytes(b"")
    assert ckpt._find_last_checkpoints(trainer) == {str(tmp_path / "last.ckpt"), str(tmp_path / "last-v3.ckpt")}


def test_resume_candidates_is_the_declared_way_to_name_last_files(tmp_path):
    """The Trainer's ckpt_path="last" asks each checkpoint callback through this public trait."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "run", save_last=True)
    trainer, _ = fit(tmp_path, [ckpt], max_epochs=1)
    (tmp_path / "run" / "last-v2.ckpt").write_bytes((tmp_path / "run" / "last.ckpt").read_bytes())
    assert ckpt.resume_candidates(trainer) == {
        str(tmp_path / "run" / "last.ckpt"),
        str(tmp_path / "run" / "last-v2.ckpt"),
    }
    assert Checkpoint().resume_candidates(trainer) == set()
    later = os.path.getmtime(tmp_path / "run" / "last.ckpt") + 60
    os.utime(tmp_path / "run" / "last-v2.ckpt", (later, later))
    from fulmen.trainer.checkpoint_state import resolve_checkpoint_path
    from fulmen.trainer.state import TrainerFn

    assert resolve_checkpoint_path(trainer, "last", TrainerFn.FITTING) == str(tmp_path / "run" / "last-v2.ckpt")


# ======================================================================== state and resuming


def test_state_dict_round_trip(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    fit(tmp_path, [ckpt], ScriptedModel(SCRIPT), max_epochs=5)
    state = ckpt.state_dict()
    assert set(state) >= {
        "monitor", "best_model_score", "best_model_path", "current_score", "dirpath", "best_k_models",
        "kth_best_model_path", "kth_value", "last_model_path",
    }  # fmt: skip

    same = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    same.load_state_dict(state)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path", "dirpath"):
        assert getattr(same, key) == getattr(ckpt, key)
    assert same.best_k_models == ckpt.best_k_models
    assert same.best_model_score == ckpt.best_model_score and same.kth_value == ckpt.kth_value

    moved = ModelCheckpoint(dirpath=tmp_path / "elsewhere", monitor="val_loss", save_top_k=2)
    with pytest.warns(UserWarning, match="The dirpath has changed from"):
        moved.load_state_dict(state)
    assert moved.best_model_path == ckpt.best_model_path
    assert moved.best_k_models == {} and moved.last_model_path == "" and moved.best_model_score is None


def test_resumed_run_keeps_pruning(tmp_path):
    first = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    script = [0.5, 0.3, 0.9, 0.1, 0.4, 0.2]
    fit(tmp_path, [first], ScriptedModel(script), max_epochs=3)
    assert names(tmp_path) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]

    second = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    saves = CountSaves()
    trainer, _ = fit(
        tmp_path, [second, saves], ScriptedModel(script), max_epochs=6, ckpt_path=str(tmp_path / "last.ckpt")
    )
    # The first run's files were pruned by the second run; `last` was replaced in place, no "-v1".
    assert names(tmp_path) == ["epoch=3-step=16.ckpt", "epoch=5-step=24.ckpt", "last.ckpt"]
    assert saves.steps[0] == 16  # nothing saved again at the step the run resumed from
    assert second.best_model_path == str(tmp_path / "epoch=3-step=16.ckpt")
    assert second.kth_best_model_path == str(tmp_path / "epoch=5-step=24.ckpt")
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 24


def test_resume_never_deletes_the_checkpoint_it_resumed_from(tmp_path):
    first = ModelCheckpoint(dirpath=tmp_path)
    fit(tmp_path, [first], max_epochs=2)
    resume = tmp_path / "epoch=1-step=8.ckpt"
    assert names(tmp_path) == [resume.name]

    second = ModelCheckpoint(dirpath=tmp_path)
    fit(tmp_path, [second], max_epochs=4, ckpt_path=str(resume))
    # The run replaced its latest checkpoint twice; the resume file stays, epoch 2's went.
    assert names(tmp_path) == [resume.name, "epoch=3-step=16.ckpt"]


def test_resume_from_a_link_keeps_its_target(tmp_path):
    first = ModelCheckpoint(dirpath=tmp_path, save_last="link")
    fit(tmp_path, [first], max_epochs=2)
    assert os.readlink(tmp_path / "last.ckpt") == "epoch=1-step=8.ckpt"

    second = ModelCheckpoint(dirpath=tmp_path, save_last="link")
    fit(tmp_path, [second], max_epochs=3, ckpt_path=str(tmp_path / "last.ckpt"))
    assert names(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "last.ckpt"]
    assert os.readlink(tmp_path / "last.ckpt") == "epoch=2-step=12.ckpt"


def test_state_restored_before_the_default_folder_is_known(tmp_path):
    # Default dirpath: the state waits for setup to resolve the folder, then is compared with it.
    first = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    fit(tmp_path, [first], ScriptedModel(SCRIPT[:2]), max_epochs=2)
    state = first.state_dict()
    second = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    second.load_state_dict(state)
    # Taken from the state until setup chooses (what the main process of ddp_spawn keeps).
    assert second.dirpath == first.dirpath
    assert second.best_model_path == first.best_model_path and second.best_k_models == first.best_k_models
    # Worse scores than the restored top 2: nothing new is saved, the restored files stay best.
    fit(tmp_path, [second], ScriptedModel([0.9, 0.9]), max_epochs=2)
    folder = tmp_path / "checkpoints"
    assert names(folder) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert second.best_k_models == first.best_k_models
    assert second.best_model_path == str(folder / "epoch=1-step=8.ckpt")


def test_state_restored_before_setup_is_dropped_when_the_folder_differs(tmp_path):
    first = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    fit(tmp_path / "one", [first], ScriptedModel(SCRIPT[:2]), max_epochs=2)
    second = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    second.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match="The dirpath has changed from"):
        fit(tmp_path / "two", [second], ScriptedModel([0.9, 0.9]), max_epochs=2)
    assert second.dirpath == str(tmp_path / "two" / "checkpoints")
    assert names(tmp_path / "two" / "checkpoints") == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert names(tmp_path / "one" / "checkpoints") == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
