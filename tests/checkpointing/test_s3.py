"""Checkpoints and logs on object storage, against a real S3 server the tests start on 127.0.0.1.

moto's server mode speaks the S3 protocol over HTTP; s3fs (fsspec) talks to it exactly as it
would to AWS, through ``AWS_ENDPOINT_URL``. Nothing here reaches a network address. Skipped
when moto or s3fs is not installed (both are in the ``dev`` extra).
"""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.checkpointing import atomic
from fulmen.checkpointing.atomic import atomic_save
from fulmen.checkpointing.safe_reading import safe_load
from fulmen.loggers import CSVLogger, TensorBoardLogger
from fulmen.utilities.exceptions import CheckpointError

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

EPOCHS = 4
VAL_LOSSES = [0.5, 0.3, 0.4, 0.2]  # by epoch: the best two are epochs 3 and 1


@pytest.fixture(scope="session")
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; every S3 client of this test (fulmen's, the loggers') is pointed at the local server."""
    import fsspec
    import s3fs

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    name = f"fulmen-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    yield f"s3://{name}"
    s3fs.S3FileSystem.clear_instance_cache()


def _s3():
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


def _names(fs, url: str) -> list[str]:
    return sorted(path.rsplit("/", 1)[-1] for path in fs.ls(url, detail=False))


class Regression(L.LightningModule):
    """A linear model on shuffled data; validation logs a scripted ``val_loss`` per epoch."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", VAL_LOSSES[self.current_epoch])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)]


def _loaders():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=16)


def _fit(max_epochs: int, callbacks=(), ckpt_path=None, **flags):
    L.seed_everything(7)
    flags = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, **flags}
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, callbacks=list(callbacks), **flags)
    model = Regression()
    train, val = _loaders()
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_model_checkpoint_on_s3_keeps_top_k_and_last_and_resumes_exactly(bucket, tmp_path, async_save):
    reference = _fit(EPOCHS, default_root_dir=tmp_path, enable_checkpointing=False)[1]

    def callback():
        return ModelCheckpoint(
            dirpath=f"{bucket}/run", monitor="val_loss", save_top_k=2, save_last=True, async_save=async_save
        )

    first = callback()
    _fit(2, [first], default_root_dir=tmp_path)
    assert first.last_model_path == f"{bucket}/run/last.ckpt"
    fs = _s3()
    assert _names(fs, f"{bucket}/run") == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]

    # A new process would know only the folder: ckpt_path="last" finds last.ckpt on S3.
    second = callback()
    trainer, resumed = _fit(EPOCHS, [second], ckpt_path="last", default_root_dir=tmp_path)
    assert trainer.ckpt_path == f"{bucket}/run/last.ckpt"
    # Top-k pruning deleted the objects that fell out (epochs 0 and 2); `last` moved on.
    fs = _s3()
    assert _names(fs, f"{bucket}/run") == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]
    assert second.best_model_path == f"{bucket}/run/epoch=3-step=16.ckpt"
    assert float(second.best_model_score) == pytest.approx(0.2)
    # Resumed on S3 exactly as on local disk: the same weights as a run that never stopped.
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    # The objects are ordinary checkpoints, loadable straight from the URL.
    loaded = Regression.load_from_checkpoint(second.best_model_path)
    assert loaded.layer.weight.shape == (1, 4)
    assert safe_load(f"{bucket}/run/last.ckpt")["global_step"] == 16


def test_explicit_s3_ckpt_path_resumes_exactly(bucket, tmp_path):
    reference = _fit(EPOCHS, default_root_dir=tmp_path, enable_checkpointing=False)[1]
    trainer, _ = _fit(2, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.save_checkpoint(f"{bucket}/manual/stopped.ckpt")
    _, resumed = _fit(EPOCHS, ckpt_path=f"{bucket}/manual/stopped.ckpt", default_root_dir=tmp_path)
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _fit(EPOCHS, ckpt_path=f"{bucket}/manual/missing.ckpt", default_root_dir=tmp_path)


def test_default_root_dir_on_s3_holds_checkpoints_and_both_loggers(bucket):
    root = f"{bucket}/root"
    loggers = [TensorBoardLogger(save_dir=root, name="tb"), CSVLogger(save_dir=root, name="csv")]
    trainer, _ = _fit(2, default_root_dir=root, logger=loggers, log_every_n_steps=1)
    fs = _s3()
    # The default ModelCheckpoint writes into the first logger's folder, on S3.
    assert trainer.checkpoint_callback.dirpath == f"{root}/tb/version_0/checkpoints"
    assert _names(fs, f"{root}/tb/version_0/checkpoints") == ["epoch=1-step=8.ckpt"]
    assert any(name.startswith("events.out.tfevents") for name in _names(fs, f"{root}/tb/version_0"))
    assert "lr: 0.05" in fs.cat(f"{root}/csv/version_0/hparams.yaml").decode()
    rows = fs.cat(f"{root}/csv/version_0/metrics.csv").decode().splitlines()
    assert {"epoch", "step", "train_loss"} <= set(rows[0].split(","))
    assert len(rows) > 8  # a header and a row per logged step and epoch
    # A second run in the same root gets the next version, as locally.
    again = TensorBoardLogger(save_dir=root, name="tb")
    assert again.version == 1


def test_lite_save_and_load_on_s3(bucket):
    lite = L.Lite(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model, optimizer = lite.setup(model, optimizer)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    lite.save(f"{bucket}/lite/state.ckpt", {"model": model, "optimizer": optimizer, "step": 3})

    fresh = nn.Linear(4, 2)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    fresh, fresh_optimizer = lite.setup(fresh, fresh_optimizer)
    state = {"model": fresh, "optimizer": fresh_optimizer}
    rest = lite.load(f"{bucket}/lite/state.ckpt", state)
    assert rest == {"step": 3}
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert _names(_s3(), f"{bucket}/lite") == ["state.ckpt"]


def test_a_failed_save_to_s3_leaves_the_previous_object_and_no_partial_one(bucket, monkeypatch):
    path = f"{bucket}/torn/last.ckpt"
    atomic_save({"step": 1, "w": torch.full((1000,), 1.0)}, path)

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + bytes(6 * 2**20))  # past s3fs's first multipart block
        raise OSError("the connection dropped")

    monkeypatch.setattr(atomic.torch, "save", dies_midway)
    with pytest.raises(OSError, match="connection dropped"):
        atomic_save({"step": 2, "w": torch.full((1000,), 2.0)}, path)
    monkeypatch.undo()
    assert _names(_s3(), f"{bucket}/torn") == ["last.ckpt"]  # no temporary key left behind
    assert safe_load(path)["step"] == 1


def test_a_reader_never_sees_a_torn_checkpoint_on_s3(bucket):
    """Objects are published whole: while one thread saves new versions, another always loads a complete one."""
    path = f"{bucket}/race/last.ckpt"
    atomic_save({"step": 0, "w": torch.zeros(200_000)}, path)
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                state = safe_load(path)
            except CheckpointError as err:  # a torn or partial object would land here
                errors.append(err)
                return
            step = state["step"]
            assert torch.equal(state["w"], torch.full((200_000,), float(step)))
            seen.append(step)

    reader = threading.Thread(target=read)
    reader.start()
    for step in range(1, 9):
        atomic_save({"step": step, "w": torch.full((200_000,), float(step))}, path)
    done.set()
    reader.join(timeout=60)
    assert not errors and seen and seen == sorted(seen)
    assert safe_load(path)["step"] == 8
    assert _names(_s3(), f"{bucket}/race") == ["last.ckpt"]
