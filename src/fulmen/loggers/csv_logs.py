"""CSV logging: metrics in a plain ``metrics.csv`` any tool can read, with no extra dependency.

Everything goes through fsspec, so ``save_dir`` may be a local path or a URL (``s3://``,
``memory://``, ...). Rows are buffered and written every ``flush_logs_every_n_steps`` steps
because a write per step would dominate the cost of small models on remote storage.
"""

from __future__ import annotations

import csv
import io
import os
from argparse import Namespace
from typing import Any

from fulmen.loggers.logger import (
    Logger,
    _add_prefix,
    _convert_params,
    _flatten_dict,
    _join,
    _metric_value,
    _VersionedFolder,
    _write_hparams_yaml,
    rank_zero_experiment,
)
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn


class _ExperimentWriter:
    """Owns one run's folder: the buffered metric rows, ``metrics.csv`` and ``hparams.yaml``."""

    NAME_HPARAMS_FILE = "hparams.yaml"
    NAME_METRICS_FILE = "metrics.csv"

    def __init__(self, log_dir: str) -> None:
        from fsspec.core import url_to_fs

        self.log_dir = log_dir
        self.metrics_file_path = _join(log_dir, self.NAME_METRICS_FILE)
        self.hparams_file_path = _join(log_dir, self.NAME_HPARAMS_FILE)
        self._fs = url_to_fs(log_dir)[0]
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, Any]] = []  # rows not yet written
        self.metrics_keys: list[str] = []  # the header, in the order the names were first seen
        self.rows_logged = 0
        self._header_on_disk: list[str] | None = None
        if self._fs.isdir(log_dir) and self._fs.ls(log_dir):
            rank_zero_warn(
                f"Experiment logs directory {log_dir} exists and is not empty; new rows are added to "
                "its metrics.csv and hparams.yaml is overwritten."
            )
        self._fs.makedirs(log_dir, exist_ok=True)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        _write_hparams_yaml(self._fs, self.hparams_file_path, self.hparams)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.metrics.append({**metrics, "step": step})
        self.rows_logged += 1

    def save(self) -> None:
        if not self.metrics:
            return
        if self._header_on_disk is None:
            # A file from an earlier run with the same version (a resumed run) is continued.
            self._header_on_disk = self._read_header()
            for key in self._header_on_disk:
                if key not in self.metrics_keys:
                    self.metrics_keys.append(key)
        for row in self.metrics:
            for key in row:
                if key not in self.metrics_keys:
                    self.metrics_keys.append(key)

        if self._header_on_disk and self._header_on_disk != self.metrics_keys:
            self._rewrite()
        else:
            write_header = not self._header_on_disk
            with self._fs.open(self.metrics_file_path, "a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                if write_header:
                    writer.writeheader()
                writer.writerows(self.metrics)
        self._header_on_disk = list(self.metrics_keys)
        self.metrics = []

    def _read_header(self) -> list[str]:
        if not self._fs.isfile(self.metrics_file_path):
            return []
        with self._fs.open(self.metrics_file_path, "r", newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])

    def _rewrite(self) -> None:
        # New names widen the header, which only a full rewrite can do; old rows get blanks.
        with self._fs.open(self.metrics_file_path, "r", newline="", encoding="utf-8") as f:
            old_rows = list(csv.DictReader(f))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(old_rows)
        writer.writerows(self.metrics)
        with self._fs.open(self.metrics_file_path, "w", newline="", encoding="utf-8") as f:
            f.write(buffer.getvalue())


class CSVLogger(_VersionedFolder, Logger):
    """Log metrics to ``save_dir/name/version/metrics.csv`` and hyperparameters to ``hparams.yaml``.

    ``metrics.csv`` has one column per metric name seen so far plus ``step``; rows are kept in
    memory and written every ``flush_logs_every_n_steps`` steps and on ``save()``/``finalize()``.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if (
            not isinstance(flush_logs_every_n_steps, int)
            or isinstance(flush_logs_every_n_steps, bool)
            or flush_logs_every_n_steps < 1
        ):
            raise invalid_argument("flush_logs_every_n_steps", flush_logs_every_n_steps, "an int >= 1")
        self._set_folder(save_dir, name, version, prefix)
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: _ExperimentWriter | None = None

    @property
    def log_dir(self) -> str:
        return self._version_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        """The run's writer, created (with its folder) on first use, on rank zero only."""
        if self._experiment is None:
            self._experiment = _ExperimentWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None) -> None:
        self.experiment.log_hparams(_convert_params(params))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = _flatten_dict(_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), self.group_separator)
        values = {name: _metric_value(name, value) for name, value in metrics.items()}
        experiment = self.experiment
        if step is None:
            step = experiment.rows_logged
        experiment.log_metrics(values, step)
        # The buffer bound keeps memory flat when steps never land on a multiple of n.
        n = self._flush_logs_every_n_steps
        if (step + 1) % n == 0 or len(experiment.metrics) >= n:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
