"""CheckpointIO plugins: TorchCheckpointIO (atomic, weights-only), AsyncCheckpointIO (background saves),
a user's own CheckpointIO through plugins=[...] or checkpoint_io= on a strategy, for the Trainer and Lite."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.demos import BoringModel, RandomDataset
from fulmen.lite import Lite
from fulmen.plugins import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO
from fulmen.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy, select_strategy
from fulmen.utilities.exceptions import CheckpointError, MisconfigurationException


class Recording(CheckpointIO):
    """Keeps checkpoints in memory and records every call."""

    def __init__(self) -> None:
        self.files: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.calls.append(("save", str(path)))
        self.files[str(path)] = {k: v for k, v in checkpoint.items()}

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        self.calls.append(("load", str(path)))
        return self.files[str(path)]

    def remove_checkpoint(self, path):
        self.calls.append(("remove", str(path)))
        self.files.pop(str(path), None)


class Gated(TorchCheckpointIO):
    """A TorchCheckpointIO whose writes wait for a gate: shows that an asynchronous save returned first."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        assert self.gate.wait(30)
        super().save_checkpoint(checkpoint, path, storage_options)


class Failing(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        raise OSError("disk full")


def test_torch_checkpoint_io_round_trip_atomic_and_safe(tmp_path):
    io = TorchCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"w": torch.ones(2), "epoch": 3}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]  # nothing left beside it
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], torch.ones(2))
    torch.save({"bad": threading.Lock}, tmp_path / "unsafe.ckpt")
    with pytest.raises(Exception, match="weights_only"):
        io.load_checkpoint(tmp_path / "unsafe.ckpt")
    io.remove_checkpoint(path)
    assert not path.exists()
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, path, storage_options="s3")


def test_async_checkpoint_io_returns_before_the_write_and_saves_a_snapshot(tmp_path):
    gated = Gated()
    io = AsyncCheckpointIO(gated)
    weights = torch.zeros(3)
    path = tmp_path / "b.ckpt"
    io.save_checkpoint({"w": weights}, path)
    weights += 5  # training goes on: the file must hold the values of the moment of the save
    assert not path.exists()
    gated.gate.set()
    io.teardown()  # waits for the background write
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    assert io.load_checkpoint(path)["w"].sum() == 0
    io.remove_checkpoint(path)
    io.teardown()
    assert not path.exists()


def test_async_failure_is_raised_by_the_next_call(tmp_path):
    io = AsyncCheckpointIO(Failing())
    io.save_checkpoint({"w": torch.ones(1)}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="disk full"):
        io.teardown()
    with pytest.raises(TypeError, match="not a CheckpointIO"):
        AsyncCheckpointIO(object())
    with pytest.raises(ValueError, match="asynchronous already"):
        AsyncCheckpointIO(AsyncCheckpointIO())


def _trainer(tmp_path, **kwargs):
    options = dict(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**options, **kwargs})


def test_trainer_saves_loads_and_removes_through_a_plugin(tmp_path):
    io = Recording()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=1, monitor="step", mode="max")
    trainer = _trainer(tmp_path, plugins=[io], callbacks=[checkpoint])
    assert trainer.strategy.checkpoint_io is io
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 4), batch_size=2))
    saves = [path for kind, path in io.calls if kind == "save"]
    assert saves == [str(tmp_path / "epoch=0-step=2.ckpt"), str(tmp_path / "epoch=1-step=4.ckpt")]
    assert list(tmp_path.glob("*.ckpt")) == []  # nothing reached the disk: the plugin kept them
    assert ("remove", saves[0]) in io.calls  # top-1: the first file was removed through the plugin too
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    resumed = _trainer(tmp_path, plugins=[io], max_epochs=3)
    resumed.fit(BoringModel(), DataLoader(RandomDataset(32, 4), batch_size=2), ckpt_path=str(tmp_path / "manual.ckpt"))
    assert ("load", str(tmp_path / "manual.ckpt")) in io.calls and resumed.global_step == 6
    resumed.strategy.remove_checkpoint(str(tmp_path / "manual.ckpt"))
    assert str(tmp_path / "manual.ckpt") not in io.files


def test_async_plugin_and_checkpoint_io_on_strategies(tmp_path):
    trainer = _trainer(tmp_path, plugins=[AsyncCheckpointIO()], callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 4), batch_size=2))
    trainer.strategy.wait_for_checkpoint_saves()
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=1-step=4.ckpt"]
    io = Recording()
    assert SingleDeviceStrategy(checkpoint_io=io).checkpoint_io is io
    assert DDPStrategy(checkpoint_io=io).checkpoint_io is io
    assert FSDPStrategy(checkpoint_io=io).checkpoint_io is io  # full-state single files go through it
    assert ModelParallelStrategy(checkpoint_io=io).checkpoint_io is io
    assert AsyncCheckpointIO(io).paths_are_files is False and AsyncCheckpointIO().paths_are_files is True
    assert isinstance(DDPStrategy().checkpoint_io, TorchCheckpointIO)
    with pytest.raises(MisconfigurationException, match="CheckpointIO was given twice"):
        select_strategy(accelerator="cpu", strategy=SingleDeviceStrategy(checkpoint_io=io), plugins=[Recording()])
    with pytest.raises(MisconfigurationException, match="two CheckpointIOs"):
        select_strategy(accelerator="cpu", plugins=[Recording(), Recording()])
    with pytest.raises(TypeError, match="not a CheckpointIO"):
        SingleDeviceStrategy(checkpoint_io="torch")


def test_lite_saves_and_loads_through_a_plugin(tmp_path):
    io = Recording()
    lite = Lite(accelerator="cpu", devices=1, plugins=[io])
    model = lite.setup(torch.nn.Linear(2, 1))
    lite.save(tmp_path / "lite.ckpt", {"model": model, "step": 7})
    assert io.calls == [("save", str(tmp_path / "lite.ckpt"))] and io.files[str(tmp_path / "lite.ckpt")]["step"] == 7
    state = {"model": model}
    remainder = lite.load(tmp_path / "lite.ckpt", state)
    assert remainder == {"step": 7} and io.calls[-1] == ("load", str(tmp_path / "lite.ckpt"))
