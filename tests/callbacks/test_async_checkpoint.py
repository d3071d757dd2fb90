"""Asynchronous checkpoint saving: ``ModelCheckpoint(async_save=True)``, ``Trainer.save_checkpoint(async_save=True)``.

A slow or gated writer is swapped in for ``atomic_save`` (the function the background thread
calls) so that a write is provably still running while the loop goes on.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.callbacks.resume_helpers import assert_same_tensors
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback, ModelCheckpoint
from fulmen.checkpointing import async_writer, atomic
from fulmen.checkpointing.atomic import atomic_save
from fulmen.checkpointing.safe_reading import safe_load
from fulmen.utilities.exceptions import CheckpointError

STEPS_PER_EPOCH = 4


@pytest.fixture
def tmp_path(tmp_path):
    return Path(os.path.realpath(tmp_path))


@pytest.fixture(autouse=True)
def _no_pending_saves():
    yield
    async_writer.writer().wait()  # a test that fails must not leave work for the next one


class Regression(L.LightningModule):
    """Linear regression with Adam; validation logs ``val_losses[epoch]`` when given (known top-k outcomes)."""

    def __init__(self, val_losses=None):
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.val_losses = val_losses

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        value = F.mse_loss(self.layer(x), y) if self.val_losses is None else self.val_losses[self.current_epoch]
        self.log("val_loss", value)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _data(n=STEPS_PER_EPOCH * 4):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=8)


def _fit(root, callbacks, model=None, max_epochs=3, ckpt_path=None, **flags):
    torch.manual_seed(0)
    model = model if model is not None else Regression()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **flags,
    )
    trainer.fit(model, *_data(), ckpt_path=ckpt_path)
    return trainer, model


def _tree(folder: Path) -> dict[str, str | None]:
    """Every name in ``folder``: a link's target name, or None for a file."""
    return {
        name: os.path.basename(os.readlink(folder / name)) if os.path.islink(folder / name) else None
        for name in sorted(os.listdir(folder))
    }


@pytest.fixture
def slow_writes(monkeypatch):
    """Every background write takes 50 ms longer, so the next check always finds it still running."""

    def slow(obj, path, storage_options=None):
        time.sleep(0.05)
        atomic_save(obj, path, storage_options)

    monkeypatch.setattr(async_writer, "atomic_save", slow)


@pytest.fixture
def finished_writes(monkeypatch):
    """Background writes take 300 ms each; the list names each file once it is written."""
    finished: list[str] = []

    def slow(obj, path, storage_options=None):
        time.sleep(0.3)
        atomic_save(obj, path, storage_options)
        finished.append(os.path.basename(path))

    monkeypatch.setattr(async_writer, "atomic_save", slow)
    return finished


# ------------------------------------------------------------------------------------ content
def test_async_file_equals_a_synchronous_one(tmp_path, slow_writes):
    for kind in ("sync", "async"):
        ckpt = ModelCheckpoint(dirpath=tmp_path / kind, save_top_k=-1, async_save=kind == "async")
        _fit(tmp_path, [ckpt], max_epochs=2)
    names = sorted(os.listdir(tmp_path / "sync"))
    assert names == sorted(os.listdir(tmp_path / "async")) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    for name in names:
        sync, asynchronous = (safe_load(tmp_path / kind / name) for kind in ("sync", "async"))
        assert set(sync) == set(asynchronous)
        assert_same_tensors(sync["state_dict"], asynchronous["state_dict"], f"{name} weights")
        assert_same_tensors(sync["optimizer_states"], asynchronous["optimizer_states"], f"{name} Adam state")
        assert sync["global_step"] == asynchronous["global_step"]


def test_the_file_holds_the_state_of_the_save_not_of_later_in_place_updates(tmp_path, monkeypatch):
    released = threading.Event()

    def gated(obj, path, storage_options=None):
        assert released.wait(10)
        atomic_save(obj, path, storage_options)

    monkeypatch.setattr(async_writer, "atomic_save", gated)
    saved = {}

    class SaveThenScribble(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                saved.update({k: v.clone() for k, v in pl_module.state_dict().items()})
                trainer.save_checkpoint(tmp_path / "step2.ckpt", async_save=True)
                with torch.no_grad():  # in place, while the write has not even started
                    for p in pl_module.parameters():
                        p.add_(100.0)
                    for state in trainer.optimizers[0].state.values():
                        state["exp_avg"].add_(100.0)
                released.set()

    _fit(tmp_path, [SaveThenScribble()], max_epochs=1)
    written = safe_load(tmp_path / "step2.ckpt")
    assert_same_tensors(saved, written["state_dict"], "weights")
    assert written["global_step"] == 2


def test_snapshot_keeps_shared_memory_and_container_types():
    weight = torch.randn(3, 4)
    state = {
        "tied": {"a": weight, "b": weight.detach(), "row": weight[1]},
        "counts": collections.defaultdict(list, {1: [torch.ones(2)]}),
        "pair": (torch.zeros(1), "x"),
    }
    copy = async_writer.snapshot(state)
    weight.add_(1.0)
    assert torch.equal(copy["tied"]["a"] + 1.0, weight)
    storage = copy["tied"]["a"].untyped_storage().data_ptr()
    assert copy["tied"]["b"].untyped_storage().data_ptr() == storage == copy["tied"]["row"].untyped_storage().data_ptr()
    assert copy["tied"]["a"].untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
    assert type(copy["counts"]) is collections.defaultdict and copy["counts"].default_factory is list
    assert copy["pair"][1] == "x" and isinstance(copy["pair"], tuple)


# ---------------------------------------------------------------------------------- the files
@pytest.mark.parametrize(
    "settings",
    [
        dict(monitor="val_loss", save_top_k=2, save_last=True),
        dict(monitor="val_loss", mode="max", save_top_k=1, save_last="link"),
        dict(monitor=None, save_top_k=1, save_last="link", every_n_train_steps=3),
        # Two saves per epoch: the second gets "-v1" because the first, maybe still pending, took the name.
        dict(filename="{epoch}", monitor="train_loss", save_top_k=-1, every_n_train_steps=2),
        dict(filename="{epoch}", save_top_k=2, monitor="val_loss", every_n_train_steps=3, save_last=True),
    ],
    ids=["top2-last", "top1-max-link", "latest-link", "versions", "versions-top2-last"],
)
def test_top_k_and_last_leave_the_same_files_as_synchronous_saves(tmp_path, slow_writes, settings):
    val_losses = [0.5, 0.3, 0.4, 0.2, 0.6]
    trees, states = [], []
    for kind in ("sync", "async"):
        ckpt = ModelCheckpoint(dirpath=tmp_path / kind, async_save=kind == "async", **settings)
        _fit(tmp_path, [ckpt], model=Regression(val_losses), max_epochs=len(val_losses))
        trees.append(_tree(tmp_path / kind))
        states.append(
            (
                {os.path.basename(p): float(v) for p, v in ckpt.best_k_models.items()},
                os.path.basename(ckpt.best_model_path),
                os.path.basename(ckpt.last_model_path),
            )
        )
    assert trees[0] == trees[1]
    assert states[0] == states[1]
    assert len(trees[0]) >= 2


def test_the_file_is_complete_when_fit_returns(tmp_path, finished_writes):
    finished = finished_writes
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=1, async_save=True)
    trainer, model = _fit(tmp_path, [ckpt], max_epochs=1)
    assert finished == ["epoch=0-step=4.ckpt"]
    assert not async_writer.writer().pending
    written = safe_load(tmp_path / "epoch=0-step=4.ckpt")
    assert_same_tensors(model.state_dict(), written["state_dict"], "weights")


def test_a_second_save_waits_for_the_first(tmp_path, monkeypatch):
    events = []
    first_may_finish = threading.Event()

    def recording(obj, path, storage_options=None):
        name = os.path.basename(path)
        events.append(f"start {name}")
        if name == "a.ckpt":
            assert first_may_finish.wait(10)
        atomic_save(obj, path, storage_options)
        events.append(f"end {name}")

    monkeypatch.setattr(async_writer, "atomic_save", recording)

    class TwoSaves(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 1:
                trainer.save_checkpoint(tmp_path / "a.ckpt", async_save=True)
                events.append("first returned")
                first_may_finish.set()
                trainer.save_checkpoint(tmp_path / "b.ckpt", async_save=True)
                events.append("second returned")

    _fit(tmp_path, [TwoSaves()], max_epochs=1)
    assert events.index("first returned") < events.index("end a.ckpt") < events.index("start b.ckpt")
    assert events.index("end a.ckpt") < events.index("second returned")
    assert {"start b.ckpt", "end b.ckpt"} <= set(events)
    assert safe_load(tmp_path / "a.ckpt")["global_step"] == safe_load(tmp_path / "b.ckpt")["global_step"] == 1


def test_a_failed_background_write_is_raised_with_its_path_and_deletes_nothing(tmp_path, monkeypatch):
    def failing_second(obj, path, storage_options=None):
        if "step=2" in os.path.basename(path):
            raise OSError(28, "No space left on device")
        atomic_save(obj, path, storage_options)

    monkeypatch.setattr(async_writer, "atomic_save", failing_second)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=1, every_n_train_steps=1, async_save=True)
    with pytest.raises(CheckpointError, match=r"epoch=0-step=2\.ckpt.*No space left on device"):
        _fit(tmp_path, [ckpt], max_epochs=1)
    # The follow-up of the failed save (deleting step 1, which it replaced) never ran.
    assert os.path.exists(tmp_path / "epoch=0-step=1.ckpt")
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temporary file left


def test_a_failed_write_at_the_last_save_is_raised_at_the_end_of_fit(tmp_path, monkeypatch):
    def failing(obj, path, storage_options=None):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(async_writer, "atomic_save", failing)
    ckpt = ModelCheckpoint(dirpath=tmp_path, async_save=True)
    with pytest.raises(CheckpointError, match=r"epoch=0-step=4\.ckpt"):
        _fit(tmp_path, [ckpt], max_epochs=1)


class Crash(Exception):
    pass


class CrashAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"crash at step {self.step}")


def test_an_exception_during_fit_waits_for_the_pending_write(tmp_path, finished_writes):
    finished = finished_writes
    # Checkpoint callbacks run after the others: the save at step 4 is still being written when
    # the crash at step 5 ends the run.
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=1, async_save=True)
    with pytest.raises(Crash):
        _fit(tmp_path, [ckpt, CrashAt(5)], max_epochs=2)
    assert finished == ["epoch=0-step=4.ckpt"]
    assert safe_load(tmp_path / "epoch=0-step=4.ckpt")["global_step"] == 4


def test_resuming_from_async_last_is_bit_equal_to_an_uninterrupted_run(tmp_path, slow_writes):
    def callbacks(folder):
        return [ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=3, async_save=True)]

    reference_trainer, reference = _fit(tmp_path, callbacks(tmp_path / "full"), max_epochs=3)
    with pytest.raises(Crash):
        _fit(tmp_path, [*callbacks(tmp_path / "cut"), CrashAt(8)], max_epochs=3)
    assert safe_load(tmp_path / "cut" / "last.ckpt")["global_step"] == 6
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    resumed_trainer, resumed = _fit(
        tmp_path, callbacks(tmp_path / "cut"), model=Regression(), max_epochs=3, ckpt_path="last"
    )
    assert resumed_trainer.global_step == reference_trainer.global_step == 12
    assert_same_tensors(reference.state_dict(), resumed.state_dict(), "weights")
    assert_same_tensors(
        reference_trainer.optimizers[0].state_dict(), resumed_trainer.optimizers[0].state_dict(), "optimizer"
    )


def test_async_save_is_checked():
    with pytest.raises(ValueError, match="async_save"):
        ModelCheckpoint(async_save="yes")


def test_a_signal_save_waits_for_the_pending_write(tmp_path, monkeypatch):
    monkeypatch.setenv("FULMEN_SIGNAL_CHECK_SECONDS", "0")  # look for signals after every batch
    events = []

    def slow_background(obj, path, storage_options=None):
        time.sleep(0.3)
        atomic_save(obj, path, storage_options)
        events.append(f"background end {os.path.basename(path)}")

    def foreground(obj, path, storage_options=None):
        events.append(f"foreground start {os.path.basename(path)}")
        atomic_save(obj, path, storage_options)

    monkeypatch.setattr(async_writer, "atomic_save", slow_background)
    monkeypatch.setattr(atomic, "atomic_save", foreground)

    class Preempt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                signal.raise_signal(signal.SIGTERM)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, async_save=True)
    trainer, _ = _fit(tmp_path, [ckpt, Preempt()], max_epochs=2)
    assert trainer.global_step == 3
    assert events == ["background end epoch=0-step=2.ckpt", "foreground start hpc_ckpt_1.ckpt"]
    assert safe_load(tmp_path / "hpc_ckpt_1.ckpt")["global_step"] == 3


def test_a_failed_pending_write_does_not_cost_the_signal_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("FULMEN_SIGNAL_CHECK_SECONDS", "0")

    def failing(obj, path, storage_options=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(async_writer, "atomic_save", failing)

    class Preempt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                signal.raise_signal(signal.SIGTERM)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, async_save=True)
    with pytest.warns(UserWarning, match=r"epoch=0-step=2\.ckpt.*No space left"):
        _fit(tmp_path, [ckpt, Preempt()], max_epochs=2)
    assert safe_load(tmp_path / "hpc_ckpt_1.ckpt")["global_step"] == 3


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_rank_zero_writes_in_the_background_and_the_files_match_synchronous_saves(tmp_path):
    import json

    from tests.conftest import run_python

    script = Path(__file__).parent / "scripts" / "async_save_ddp.py"
    env = {"FULMEN_DIST_TIMEOUT": "30", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    result = run_python(str(script), str(tmp_path), timeout=170, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["background_writes"] == 8 and ranks[1]["background_writes"] == 0  # 8 steps, rank 0 only
    assert all(r["same_weights"] and not r["pending_at_end"] for r in ranks)
    sync_tree, async_tree = ranks[0]["trees"]
    assert sync_tree == async_tree and len(async_tree) == 3  # two top-k files and the `last` link
    assert ranks[0]["last_step"] == 8
