"""WandbLogger in W&B offline mode, read back from the run's own transaction log (``run-<id>.wandb``).

Nothing may reach the network: offline mode, a dead local ``WANDB_BASE_URL`` and an audit hook
that records any connection this process opens to a non-loopback address.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import time

import pytest
import torch
from tests.trainer.helpers import BoringModel, loader

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.loggers import WandbLogger
from fulmen.loggers.logger import _DummyExperiment
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_only

# MLflow 3 reports usage from a background thread unless told not to; tests stay off the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytest.importorskip("wandb")

_outside: list[object] = []
_watching = False


def _audit(event: str, args: tuple) -> None:
    if not _watching:
        return
    if event == "socket.getaddrinfo" and args[0] not in (None, "localhost", b"localhost"):
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        if not _is_loopback(host):
            _outside.append(("getaddrinfo", host))
    elif event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            _outside.append(("connect", address))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    """Offline, silent, every wandb folder under tmp_path; fails the test if anything went outside."""
    global _watching
    import wandb

    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # a closed local port: nowhere real to go
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    os.makedirs(tmp_path / "wandb_dir")
    _outside.clear()
    _watching = True
    try:
        yield
    finally:
        wandb.finish()
        _watching = False
    assert not _outside, f"tried to reach the network: {_outside}"


# ------------------------------------------------------------------ reading an offline run back
def _records(path: str):
    """The protobuf records of a ``.wandb`` file: a 7-byte W&B header, then LevelDB-style log
    blocks of 32 KiB whose chunks (7-byte header: crc, length, type) make up each record."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # too small for a chunk header: the block is padded
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        if position + 7 + length > len(data):  # still being written
            return
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


class OfflineRun:
    """What one offline run folder says: run record, config, history rows and artifacts."""

    def __init__(self, path: str) -> None:
        self.folder = os.path.dirname(path)
        self.run = None
        self.config: dict[str, object] = {}
        self.history: list[dict[str, object]] = []
        self.artifacts = []
        self.complete = False  # the exit record is written last
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            self.complete = self.complete or kind == "exit"
            if kind == "run":
                self.run = record.run
                self.config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "config":
                self.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
            elif kind == "history":
                items = record.history.item
                self.history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items})
            elif kind == "artifact":
                self.artifacts.append(record.artifact)

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(row["trainer/global_step"], row[key]) for row in self.history if key in row]


def _offline_runs(save_dir, run_id: str) -> list[OfflineRun]:
    """Every offline run folder of ``run_id``, oldest first, once wandb's service has written it out
    (``wandb.finish()`` can return a moment before the service flushes its log)."""
    pattern = os.path.join(str(save_dir), "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb")
    deadline = time.monotonic() + 20
    while True:
        runs = [OfflineRun(f) for f in sorted(glob.glob(pattern))]
        if (runs and all(run.complete for run in runs)) or time.monotonic() > deadline:
            return runs
        time.sleep(0.05)


class HparamsModel(BoringModel):
    def __init__(self, lr: float = 0.1, fail_at_epoch: int = -1) -> None:
        super().__init__(lr)
        self.save_hyperparameters()

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.hparams.fail_at_epoch:
            raise RuntimeError("planned failure")


def _trainer(logger, tmp_path, checkpoint: ModelCheckpoint, epochs: int = 2) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=logger,
        callbacks=[checkpoint],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


# ------------------------------------------------------------------------------------- tests
def test_fit_offline_records_metrics_config_tags_and_each_checkpoint(tmp_path):
    import wandb

    save_dir = tmp_path / "runs"
    logger = WandbLogger(project="proj", save_dir=save_dir, version="fit1", offline=True, log_model="all",
                         tags=["baseline", "cpu"])  # fmt: skip
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    trainer = _trainer(logger, tmp_path, checkpoint)
    trainer.fit(HparamsModel(), loader(), loader())
    assert logger.version == "fit1" and logger.name == "proj" and logger.save_dir == str(save_dir)
    assert checkpoint.dirpath == os.path.join(str(save_dir), "proj", "fit1", "checkpoints")
    last_bytes = open(checkpoint.last_model_path, "rb").read()
    wandb.finish()

    (run,) = _offline_runs(save_dir, "fit1")
    assert run.run.project == "proj" and list(run.run.tags) == ["baseline", "cpu"]
    assert run.config["lr"] == 0.1 and run.config["fail_at_epoch"] == -1
    train = run.series("train_loss")
    assert [step for step, _ in train] == list(range(8))
    assert train[-1][1] == pytest.approx(trainer.logged_metrics["train_loss"].item())
    assert [step for step, _ in run.series("val_loss")] == [3, 7]

    # "all": each save logs what changed; both epochs improve val_loss, so best and last each time.
    assert len(run.artifacts) == 4
    assert {a.name for a in run.artifacts} == {"model-fit1"} and {a.type for a in run.artifacts} == {"model"}
    best = [a for a in run.artifacts if "best" in a.aliases]
    assert len(best) == 2 and all(sorted(a.aliases) == ["best", "latest"] for a in best)
    assert sorted(a.aliases[0] for a in run.artifacts if len(a.aliases) == 1) == ["latest", "latest"]
    final_best = json.loads(best[-1].metadata)
    assert final_best["score"] == pytest.approx(checkpoint.best_model_score.item())
    assert final_best["ModelCheckpoint"]["monitor"] == "val_loss"
    # The mutable policy staged a copy: the last one logged holds last.ckpt as it is now.
    entry = run.artifacts[-1].manifest.contents[0]
    assert entry.path == "model.ckpt" and entry.size == len(last_bytes)
    with open(entry.local_path, "rb") as f:
        assert f.read() == last_bytes


def test_log_model_true_logs_on_success_only(tmp_path):
    import wandb

    save_dir = tmp_path / "runs"
    for run_id, fail_at in (("ok1", -1), ("bad1", 1)):
        logger = WandbLogger(save_dir=save_dir, id=run_id, log_model=True)
        trainer = _trainer(logger, tmp_path, ModelCheckpoint(monitor="val_loss", save_top_k=1))
        if fail_at < 0:
            trainer.fit(HparamsModel(), loader(), loader())
        else:
            with pytest.raises(RuntimeError, match="planned failure"):
                trainer.fit(HparamsModel(fail_at_epoch=fail_at), loader(), loader())
        wandb.finish()

    (ok,) = _offline_runs(save_dir, "ok1")
    assert len(ok.artifacts) == 1 and sorted(ok.artifacts[0].aliases) == ["best", "latest"]
    (bad,) = _offline_runs(save_dir, "bad1")
    assert bad.artifacts == [] and bad.series("train_loss")  # it trained, then failed: no checkpoint logged


def test_resume_by_run_id_prefix_and_tables(tmp_path):
    import wandb

    # wandb names offline folders by the second they start in: two runs of one id in the same
    # second would share a folder, so the resumed run (a later process, in practice) gets its own.
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first = WandbLogger(project="proj", save_dir=first_dir, version="again", prefix="fit")
    first.log_hyperparams({"depth": 4, "act": torch.nn.ReLU})
    first.log_metrics({"loss": torch.tensor(2.0)}, step=3)
    wandb.finish()

    resumed = WandbLogger(project="proj", save_dir=second_dir, id="again")
    assert resumed.version == "again"  # known before the run starts
    resumed.log_metrics({"loss": 1.0}, step=9)
    resumed.log_table("samples", columns=["x", "y"], data=[[1, 2], [3, 4]], step=9)
    assert resumed.experiment.id == "again"
    wandb.finish()

    (old,), (new,) = _offline_runs(first_dir, "again"), _offline_runs(second_dir, "again")
    assert old.run.run_id == new.run.run_id == "again"
    assert old.config["depth"] == 4 and old.config["act"] == "torch.nn.modules.activation.ReLU"
    assert old.series("fit-loss") == [(3, 2.0)]
    assert new.series("loss") == [(9, 1.0)]
    (row,) = [row for row in new.history if "samples/_type" in row]
    assert row["samples/_type"] == "table-file" and row["trainer/global_step"] == 9
    with open(os.path.join(new.folder, "files", row["samples/path"])) as f:
        table = json.load(f)
    assert table["columns"] == ["x", "y"] and table["data"] == [[1, 2], [3, 4]]


@pytest.mark.timeout(120)
def test_a_spawned_process_attaches_to_the_same_run(tmp_path):
    import wandb

    save_dir = tmp_path / "runs"
    logger = WandbLogger(save_dir=save_dir, version="shared")
    logger.log_metrics({"where": 0.0}, step=0)
    blob = pickle.dumps(logger)
    assert pickle.loads(blob)._experiment is None
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()).log_metrics({'where': 1.0}, step=1)"
    subprocess.run([sys.executable, "-c", code], input=blob, check=True, timeout=90, env=os.environ)
    logger.log_metrics({"where": 2.0}, step=2)
    wandb.finish()

    (run,) = _offline_runs(save_dir, "shared")
    assert run.series("where") == [(0, 0.0), (1, 1.0), (2, 2.0)]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_ddp_spawn_one_run_per_tracker_written_by_rank_zero(tmp_path, monkeypatch):
    """Two spawned processes: each tracker gets one run, rank 0's metrics once, every checkpoint."""
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import wandb
    from mlflow.tracking import MlflowClient

    from fulmen.loggers import MLFlowLogger

    monkeypatch.setenv("FULMEN_DIST_TIMEOUT", "30")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    uri = f"file:{tmp_path / 'store'}"
    mlflow_logger = MLFlowLogger(tracking_uri=uri, log_model="all")
    wandb_logger = WandbLogger(save_dir=tmp_path / "runs", version="ddp", log_model="all")
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, log_every_n_steps=1,
        logger=[mlflow_logger, wandb_logger], enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(BoringModel(), loader(32))  # 16 samples and 2 steps per rank and epoch
    wandb.finish()

    client = MlflowClient(uri)
    assert [r.info.run_id for r in client.search_runs([mlflow_logger.experiment_id])] == [mlflow_logger.run_id]
    assert client.get_run(mlflow_logger.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(mlflow_logger.run_id, "train_loss")] == [0, 1, 2, 3]
    assert sorted(a.path for a in client.list_artifacts(mlflow_logger.run_id)) == ["epoch=0-step=2", "epoch=1-step=4"]

    (run,) = _offline_runs(tmp_path / "runs", "ddp")
    assert [step for step, _ in run.series("train_loss")] == [0, 1, 2, 3]
    assert len(run.artifacts) == 2


def test_other_ranks_create_and_log_nothing(tmp_path):
    rank_zero_only.rank = 1  # restored by the autouse fixture in conftest
    logger = WandbLogger(save_dir=tmp_path / "runs", version="r1")
    assert isinstance(logger.experiment, _DummyExperiment)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.log_hyperparams({"a": 1})
    logger.finalize("success")
    assert logger.version == "r1" and not (tmp_path / "runs").exists()


def test_bad_arguments_name_argument_value_and_accepted(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"`log_model='best'` is not valid"):
        WandbLogger(save_dir=tmp_path, log_model="best")
    with pytest.raises(MisconfigurationException, match=r"`id='b'` is not valid.*version='a'"):
        WandbLogger(save_dir=tmp_path, version="a", id="b")
    with pytest.raises(MisconfigurationException, match=r"`projcet='x'` is not valid.*wandb.init"):
        WandbLogger(save_dir=tmp_path, projcet="x")
    with pytest.raises(MisconfigurationException, match=r"`add_file_policy='copy'`"):
        WandbLogger(save_dir=tmp_path, add_file_policy="copy")
    with pytest.raises(MisconfigurationException, match=r"`mode='online'`"):
        WandbLogger(save_dir=tmp_path, offline=True, mode="online")
    logger = WandbLogger(save_dir=tmp_path)
    with pytest.raises(MisconfigurationException, match=r"`caption=\['a'\]`.*one entry per item \(2\)"):
        logger.log_image("pics", [torch.zeros(3, 4, 4), torch.ones(3, 4, 4)], caption=["a"])


def test_missing_wandb_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install fulmen\[wandb\]"):
        WandbLogger(save_dir=tmp_path)


def test_importing_fulmen_loads_neither_tracker():
    code = (
        "import sys, fulmen, fulmen.loggers as loggers; assert 'MLFlowLogger' in loggers.__all__;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb')"
        " or m in ('fulmen.loggers.mlflow', 'fulmen.loggers.wandb'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_save_dir_defaults_to_the_current_folder_as_in_lightning(tmp_path, monkeypatch):
    import inspect

    assert inspect.signature(WandbLogger).parameters["save_dir"].default == "."
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert WandbLogger(offline=True).save_dir == "."
    assert WandbLogger(offline=True, dir=str(tmp_path)).save_dir == str(tmp_path)  # dir fills the default
    assert WandbLogger(offline=True, save_dir=tmp_path / "a").save_dir == str(tmp_path / "a")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "env"))
    assert WandbLogger(offline=True).save_dir == str(tmp_path / "env")
