"""MLFlowLogger against a real local MLflow file store, read back with MLflow's own client."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch
import yaml
from tests.trainer.helpers import BoringModel, loader

import fulmen as L
from fulmen.callbacks import Callback, ModelCheckpoint
from fulmen.loggers import Logger, MLFlowLogger
from fulmen.loggers.logger import _DummyExperiment
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_only

# MLflow 3 reports usage from a background thread unless told not to; tests stay off the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch):
    """No tracking URI from the environment; the file-store opt-in and MLflow's global URI are undone."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)


class HparamsModel(BoringModel):
    def __init__(self, lr: float = 0.1, optimizer: dict | None = None) -> None:
        super().__init__(lr)
        self.save_hyperparameters()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _fit(logger: Logger, tmp_path, epochs: int = 2, callbacks=(), **flags) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=logger,
        callbacks=list(callbacks),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **flags,
    )
    trainer.fit(HparamsModel(optimizer={"name": "sgd", "momentum": 0.9}), loader(), loader())
    return trainer


def test_fit_records_params_metrics_with_steps_tags_and_status(tmp_path):
    store = tmp_path / "mlruns"
    logger = MLFlowLogger(experiment_name="exp", run_name="first", tags={"team": "vision"}, save_dir=str(store))
    trainer = _fit(logger, tmp_path, enable_checkpointing=False)

    client = _client(f"file:{store}")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == logger.experiment_id == logger.name
    assert client.get_experiment(logger.experiment_id).name == "exp"
    assert logger.version == logger.run_id
    assert logger.save_dir == str(store) and trainer.log_dir == str(store)
    # Nested hyperparameters are flattened with "/"; values are stored as text.
    assert run.data.params == {"lr": "0.1", "optimizer/name": "sgd", "optimizer/momentum": "0.9"}
    assert run.data.tags["team"] == "vision"
    assert run.data.tags["mlflow.runName"] == "first"
    assert "mlflow.user" in run.data.tags  # MLflow's context tags are resolved too

    history = client.get_metric_history(logger.run_id, "train_loss")
    assert [m.step for m in history] == list(range(8))
    assert history[-1].value == pytest.approx(trainer.logged_metrics["train_loss"].item())
    val = client.get_metric_history(logger.run_id, "val_loss")
    assert [m.step for m in val] == [3, 7]
    assert val[-1].value == pytest.approx(trainer.callback_metrics["val_loss"].item())


class _CountUploads(Callback):
    """Before each epoch, how many checkpoint folders the run already has under ``prefix``."""

    def __init__(self, logger: MLFlowLogger, prefix: str) -> None:
        self.logger, self.prefix, self.counts = logger, prefix, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        client = self.logger.experiment
        self.counts.append(len(client.list_artifacts(self.logger.run_id, self.prefix)))


def test_log_model_all_uploads_each_checkpoint_when_saved(tmp_path):
    uri = f"file:{tmp_path / 'store'}"
    logger = MLFlowLogger(tracking_uri=uri, log_model="all", checkpoint_path_prefix="ckpts")
    checkpoint = ModelCheckpoint(save_top_k=-1, every_n_epochs=1)
    counter = _CountUploads(logger, "ckpts")
    _fit(logger, tmp_path, epochs=3, callbacks=[counter, checkpoint])

    assert counter.counts == [0, 1, 2]  # uploaded as each epoch's checkpoint was written
    client = _client(uri)
    folders = sorted(a.path for a in client.list_artifacts(logger.run_id, "ckpts"))
    assert folders == ["ckpts/epoch=0-step=4", "ckpts/epoch=1-step=8", "ckpts/epoch=2-step=12"]
    files = sorted(a.path for a in client.list_artifacts(logger.run_id, folders[0]))
    assert files == [f"{folders[0]}/aliases.txt", f"{folders[0]}/epoch=0-step=4.ckpt", f"{folders[0]}/metadata.yaml"]
    # The default checkpoint folder is inside the run's folder: save_dir/experiment_id/run_id.
    assert checkpoint.dirpath == os.path.join(logger.save_dir, logger.name, logger.version, "checkpoints")


def test_log_model_true_uploads_best_and_last_at_the_end(tmp_path):
    uri = f"file:{tmp_path / 'store'}"
    logger = MLFlowLogger(tracking_uri=uri, log_model=True)
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    counter = _CountUploads(logger, "")
    _fit(logger, tmp_path, callbacks=[counter, checkpoint])

    assert counter.counts == [0, 0]  # nothing during training
    client = _client(uri)
    best_stem = os.path.splitext(os.path.basename(checkpoint.best_model_path))[0]
    assert sorted(a.path for a in client.list_artifacts(logger.run_id)) == sorted([best_stem, "last"])

    local = client.download_artifacts(logger.run_id, best_stem, str(tmp_path / "down"))
    with open(os.path.join(local, "metadata.yaml")) as f:
        metadata = yaml.safe_load(f)
    assert metadata["score"] == pytest.approx(checkpoint.best_model_score.item())
    assert metadata["original_filename"] == os.path.basename(checkpoint.best_model_path)
    assert metadata["Checkpoint"]["monitor"] == "val_loss" and metadata["Checkpoint"]["save_top_k"] == 1
    with open(os.path.join(local, "aliases.txt")) as f:
        assert f.read() == "['latest', 'best']"
    with open(os.path.join(local, os.path.basename(checkpoint.best_model_path)), "rb") as f:
        uploaded = f.read()
    with open(checkpoint.best_model_path, "rb") as f:
        assert uploaded == f.read()
    weights = torch.load(os.path.join(local, os.path.basename(checkpoint.best_model_path)), weights_only=True)
    assert "state_dict" in weights


def test_resume_by_run_id_prefix_and_failed_status(tmp_path):
    uri = f"file:{tmp_path / 'store'}"
    first = MLFlowLogger(tracking_uri=uri, experiment_name="resumed", prefix="train")
    first.log_metrics({"loss": torch.tensor(2.0), "acc": 0.5}, step=3)
    first.log_hyperparams({"depth": 4})
    first.finalize("failed")
    client = _client(uri)
    assert client.get_run(first.run_id).info.status == "FAILED"

    again = MLFlowLogger(tracking_uri=uri, run_id=first.run_id)
    assert again.run_id == first.run_id
    assert again.name == first.experiment_id
    again.log_metrics({"loss": 1.0}, step=9)
    again.finalize("success")

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"depth": "4"}
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "train-loss")] == [(3, 2.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [(9, 1.0)]
    # A second logger with the same experiment name joins that experiment with a new run.
    sibling = MLFlowLogger(tracking_uri=uri, experiment_name="resumed")
    assert sibling.experiment_id == first.experiment_id and sibling.run_id != first.run_id


def test_metric_names_and_values_mlflow_cannot_store(tmp_path):
    uri = f"file:{tmp_path / 'store'}"
    logger = MLFlowLogger(tracking_uri=uri)
    with pytest.warns(RuntimeWarning, match="'acc@top1' is logged as 'acctop1'"):
        logger.log_metrics({"acc@top1": 0.75}, step=1)
    with pytest.warns(UserWarning, match="'note'='hello' is skipped"):
        logger.log_metrics({"note": "hello", "group": {"a": 1}}, step=2)
    with pytest.raises(MisconfigurationException, match=r"metrics\['big'\]"):
        logger.log_metrics({"big": torch.ones(3)}, step=3)
    run = _client(uri).get_run(logger.run_id)
    assert run.data.metrics == {"acctop1": 0.75, "group/a": 1.0}


def test_pickled_logger_keeps_logging_to_the_same_run(tmp_path):
    uri = f"file:{tmp_path / 'store'}"
    logger = MLFlowLogger(tracking_uri=uri)
    run_id = logger.run_id
    clone = pickle.loads(pickle.dumps(logger))
    assert clone._client is None and clone.run_id == run_id
    clone.log_metrics({"x": 1.0}, step=0)
    clone.finalize("success")
    assert _client(uri).get_run(run_id).info.status == "FINISHED"


def test_other_ranks_create_and_log_nothing(tmp_path):
    rank_zero_only.rank = 1  # restored by the autouse fixture in conftest
    logger = MLFlowLogger(save_dir=str(tmp_path / "store"))
    assert isinstance(logger.experiment, _DummyExperiment)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.log_hyperparams({"a": 1})
    logger.finalize("success")
    assert logger.run_id is None and not (tmp_path / "store").exists()


def test_bad_arguments_name_argument_value_and_accepted(tmp_path):
    uri = f"file:{tmp_path / 'store'}"
    with pytest.raises(MisconfigurationException, match=r"`log_model='sometimes'` is not valid"):
        MLFlowLogger(tracking_uri=uri, log_model="sometimes")
    with pytest.raises(MisconfigurationException, match=r"`tags=\['a'\]`"):
        MLFlowLogger(tracking_uri=uri, tags=["a"])
    with pytest.raises(MisconfigurationException, match=r"`experiment_name=''`"):
        MLFlowLogger(tracking_uri=uri, experiment_name="")
    with pytest.raises(MisconfigurationException, match=r"`save_dir=None`"):
        MLFlowLogger(save_dir=None)
    with pytest.raises(MisconfigurationException, match=r"`status='paused'`.*'failed'"):
        MLFlowLogger(tracking_uri=uri).finalize("paused")


def test_missing_mlflow_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install fulmen\[mlflow\]"):
        MLFlowLogger(save_dir=str(tmp_path))
