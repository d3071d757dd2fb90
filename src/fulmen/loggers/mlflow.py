"""MLflow tracking: parameters, metrics with their steps, tags and checkpoint artifacts in one run.

mlflow is an optional extra (``pip install fulmen[mlflow]``, which installs ``mlflow-skinny``)
and is imported only when the logger first talks to the tracking store, so ``import fulmen``
stays fast and a process that never logs never loads it. Without ``tracking_uri`` (or the
``MLFLOW_TRACKING_URI`` variable) runs go to a local file store at ``save_dir``, as in Lightning.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tempfile
import time
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from fulmen.loggers.checkpoint_artifacts import (
    check_log_model,
    checkpoint_aliases,
    checkpoint_metadata,
    new_checkpoints,
    uploads_each_save,
)
from fulmen.loggers.logger import (
    Logger,
    _add_prefix,
    _check_prefix,
    _convert_params,
    _flatten_dict,
    _metric_value,
    _yaml_safe,
    rank_zero_experiment,
)
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

_INSTALL_HINT = "MLFlowLogger needs the `mlflow` package: `pip install fulmen[mlflow]` (or `pip install mlflow`)."
_FILE_PREFIX = "file:"
# What MLflow accepts in a metric name; anything else is dropped from the name with a warning.
_METRIC_NAME_REJECTED = re.compile(r"[^a-zA-Z0-9_/. -]+")
# MLflow's own limits for one log_batch call and for one parameter value.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_PARAM_VALUE_LENGTH = 6000
# The Trainer's words for how training ended, and MLflow's run statuses they become.
_STATUSES = {
    "success": "FINISHED",
    "finished": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
    "killed": "KILLED",
    "running": "RUNNING",
    "scheduled": "SCHEDULED",
}


class MLFlowLogger(Logger):
    """Log to an MLflow tracking store (a local folder, a database or a tracking server).

    ``experiment_name`` is found or created; a new run is started in it (named ``run_name``,
    tagged with ``tags`` and MLflow's usual context tags), or the existing run ``run_id`` is
    continued. ``log_model=True`` uploads the checkpoint callback's best/last files when training
    ends, ``"all"`` uploads every checkpoint as it is written (each under
    ``checkpoint_path_prefix/<file stem>/`` with a ``metadata.yaml`` and ``aliases.txt``).
    ``logger.experiment`` is the ``MlflowClient``; use it with ``logger.run_id``.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        save_dir: str | os.PathLike | None = "./mlruns",
        log_model: bool | str = False,
        checkpoint_path_prefix: str = "",
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ModuleNotFoundError(_INSTALL_HINT)
        _check_str("experiment_name", experiment_name, optional=False)
        _check_str("run_name", run_name)
        _check_str("artifact_location", artifact_location)
        _check_str("run_id", run_id)
        if not isinstance(checkpoint_path_prefix, str):
            raise invalid_argument("checkpoint_path_prefix", checkpoint_path_prefix, "a string")
        if tags is not None and not isinstance(tags, Mapping):
            raise invalid_argument("tags", tags, "a dict of tag name -> value, or None")
        if synchronous is not None and not isinstance(synchronous, bool):
            raise invalid_argument("synchronous", synchronous, "None, True or False")
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        if tracking_uri is None:
            if save_dir is None or not isinstance(save_dir, (str, os.PathLike)) or not os.fspath(save_dir):
                raise invalid_argument(
                    "save_dir", save_dir, "a folder for a local MLflow store when no `tracking_uri` is given"
                )
            tracking_uri = _FILE_PREFIX + os.fspath(save_dir)
        _check_str("tracking_uri", tracking_uri, optional=False)

        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri = tracking_uri
        self.tags = dict(tags) if tags is not None else None
        self._log_model = check_log_model(log_model)
        self._checkpoint_path_prefix = checkpoint_path_prefix
        self._prefix = _check_prefix(prefix)
        self._artifact_location = artifact_location
        self._run_id = run_id
        self._experiment_id: str | None = None
        self._batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._client: MlflowClient | None = None
        self._started = False  # a run was created or attached (survives pickling to spawned ranks)
        self._checkpoint_callback: Any = None
        self._uploaded: dict[str, float] = {}
        self._renamed: set[str] = set()

    # ------------------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The ``MlflowClient``; the experiment and run exist once this returns (rank zero only)."""
        if self._client is not None and self._started:
            return self._client
        import mlflow
        from mlflow.tracking import MlflowClient

        if _is_file_store(self._tracking_uri):
            # MLflow 3 refuses file stores unless opted in; asking for one (save_dir, file:) is that choice.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = self._client or MlflowClient(self._tracking_uri)
        # MLflow's module-level calls (mlflow.pytorch.log_model, ...) then reach the same store.
        mlflow.set_tracking_uri(self._tracking_uri)
        if self._run_id is not None:
            if self._experiment_id is None:
                self._experiment_id = client.get_run(self._run_id).info.experiment_id
        else:
            self._experiment_id = self._find_or_create_experiment(client)
            self._run_id = client.create_run(experiment_id=self._experiment_id, tags=self._run_tags()).info.run_id
        self._client = client
        self._started = True
        return client

    def _find_or_create_experiment(self, client: MlflowClient) -> str:
        experiment = client.get_experiment_by_name(self._experiment_name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise RuntimeError(
                    f"The MLflow experiment {self._experiment_name!r} is deleted; restore it "
                    "(`mlflow experiments restore`) or pass another `experiment_name`."
                )
            return experiment.experiment_id
        log.info("Creating the MLflow experiment %r.", self._experiment_name)
        return client.create_experiment(name=self._experiment_name, artifact_location=self._artifact_location)

    def _run_tags(self) -> dict[str, str]:
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        tags = {str(k): str(_yaml_safe(v)) for k, v in (self.tags or {}).items()}
        if self._run_name is not None:
            if MLFLOW_RUN_NAME in tags and tags[MLFLOW_RUN_NAME] != self._run_name:
                rank_zero_warn(f"The tag {MLFLOW_RUN_NAME!r} is replaced by `run_name={self._run_name!r}`.")
            tags[MLFLOW_RUN_NAME] = self._run_name
        # User, source file and git commit, as every MLflow run records them.
        return resolve_tags(tags)

    @property
    def run_id(self) -> str | None:
        """The run's id; creates the run on first use (rank zero)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment's id (the run's folder in a local store is ``save_dir/name/version``)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local store's folder when the tracking URI is a ``file:`` URI, else ``None``."""
        if not self._tracking_uri.startswith(_FILE_PREFIX):
            return None
        parsed = urlparse(self._tracking_uri)
        # "file:///abs" has an empty authority; "file:relative/path" keeps its path as written.
        path = parsed.path if parsed.netloc in ("", "localhost") else f"//{parsed.netloc}{parsed.path}"
        return unquote(path)

    # ----------------------------------------------------------------------------- logging
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None) -> None:
        from mlflow.entities import Param

        flat = _flatten_dict(_convert_params(params), self.group_separator)
        entries = []
        for key, value in flat.items():
            text = str(_yaml_safe(value))
            if len(text) > _PARAM_VALUE_LENGTH:
                rank_zero_warn(f"The hyperparameter {key!r} is cut to MLflow's {_PARAM_VALUE_LENGTH} characters.")
                text = text[:_PARAM_VALUE_LENGTH]
            entries.append(Param(key=key, value=text))
        client = self.experiment
        for start in range(0, len(entries), _PARAMS_PER_BATCH):
            batch = entries[start : start + _PARAMS_PER_BATCH]
            client.log_batch(run_id=self._run_id, params=batch, **self._batch_kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        metrics = _flatten_dict(_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), self.group_separator)
        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            if isinstance(value, str):
                rank_zero_warn(f"MLflow stores numbers only; the metric {key!r}={value!r} is skipped.")
                continue
            entries.append(
                Metric(key=self._metric_name(key), value=float(_metric_value(key, value)), timestamp=timestamp,
                       step=step or 0)
            )  # fmt: skip
        client = self.experiment
        for start in range(0, len(entries), _METRICS_PER_BATCH):
            batch = entries[start : start + _METRICS_PER_BATCH]
            client.log_batch(run_id=self._run_id, metrics=batch, **self._batch_kwargs)

    def _metric_name(self, name: str) -> str:
        cleaned = _METRIC_NAME_REJECTED.sub("", name)
        if cleaned != name and name not in self._renamed:
            self._renamed.add(name)
            rank_zero_warn(
                f"MLflow allows only letters, digits, '_', '-', '.', '/' and ' ' in metric names: "
                f"{name!r} is logged as {cleaned!r}.",
                category=RuntimeWarning,
            )
        return cleaned

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Upload the checkpoints still due (``log_model=True``) and close the run with ``status``."""
        mlflow_status = _STATUSES.get(status.lower()) if isinstance(status, str) else None
        if mlflow_status is None:
            raise invalid_argument("status", status, sorted(_STATUSES))
        if not self._started:
            return
        if self._checkpoint_callback is not None:
            self._upload_checkpoints(self._checkpoint_callback)
        self.experiment.set_terminated(self._run_id, mlflow_status)

    # ------------------------------------------------------------------------- checkpoints
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if uploads_each_save(self._log_model, checkpoint_callback):
            self._upload_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    def _upload_checkpoints(self, checkpoint_callback: Any) -> None:
        import yaml

        client = self.experiment
        for checkpoint in new_checkpoints(checkpoint_callback, self._uploaded):
            stem = os.path.splitext(os.path.basename(checkpoint.path))[0]
            artifact_path = "/".join(p for p in (self._checkpoint_path_prefix.strip("/"), stem) if p)
            client.log_artifact(self._run_id, checkpoint.path, artifact_path)
            metadata = checkpoint_metadata(checkpoint_callback, checkpoint, "Checkpoint")
            with tempfile.TemporaryDirectory(prefix="fulmen-mlflow-") as folder:
                with open(os.path.join(folder, "metadata.yaml"), "w", encoding="utf-8") as f:
                    yaml.safe_dump(metadata, f, sort_keys=False)
                with open(os.path.join(folder, "aliases.txt"), "w", encoding="utf-8") as f:
                    f.write(str(checkpoint_aliases(checkpoint_callback, checkpoint)))
                client.log_artifacts(self._run_id, folder, artifact_path)
            self._uploaded[checkpoint.path] = checkpoint.mtime

    def __getstate__(self) -> dict[str, Any]:
        # Spawned ranks rebuild their own client; they keep the run id, so they log to the same run.
        state = self.__dict__.copy()
        state["_client"] = None
        state["_checkpoint_callback"] = None
        return state


def _check_str(name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise invalid_argument(name, value, "a non-empty string" + (" or None" if optional else ""))


def _is_file_store(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    # A bare path ("./mlruns", "C:\\runs") is a file store to MLflow too.
    return scheme == "file" or scheme == "" or (len(scheme) == 1 and os.name == "nt")
