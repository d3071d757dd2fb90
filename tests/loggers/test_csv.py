"""CSVLogger writes a metrics.csv and hparams.yaml that plain csv/yaml readers load back."""

from __future__ import annotations

import csv
import io
import os
import uuid
from argparse import Namespace

import fsspec
import pytest
import torch
import yaml

from fulmen.loggers import CSVLogger, Logger
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_only


def _read_csv(logger: CSVLogger) -> tuple[list[str], list[dict[str, str]]]:
    fs, _ = fsspec.core.url_to_fs(logger.log_dir)
    with fs.open(f"{logger.log_dir}/metrics.csv", "r", newline="") as f:
        reader = csv.DictReader(io.StringIO(f.read()))
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture
def memory_url():
    url = f"memory://csv-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


@pytest.fixture
def rank_one():
    previous = rank_zero_only.rank
    rank_zero_only.rank = 1
    yield
    rank_zero_only.rank = previous


def test_metrics_values_and_steps(tmp_path):
    logger = CSVLogger(tmp_path)
    assert isinstance(logger, Logger)
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 1}, step=0)
    logger.log_metrics({"loss": 0.25, "acc": 0}, step=1)
    logger.save()

    header, rows = _read_csv(logger)
    assert header == ["loss", "acc", "step"]
    assert [(float(r["loss"]), int(r["acc"]), int(r["step"])) for r in rows] == [(0.5, 1, 0), (0.25, 0, 1)]
    assert logger.log_dir == os.path.join(tmp_path, "lightning_logs", "version_0")


def test_header_grows_when_new_keys_appear(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.log_metrics({"train_loss": 0.5}, step=1)
    logger.log_metrics({"val_loss": 0.75, "nested": {"a": torch.tensor(2.0)}}, step=1)
    logger.log_metrics({"train_loss": 0.25}, step=2)
    logger.finalize("success")

    header, rows = _read_csv(logger)
    assert header == ["train_loss", "step", "val_loss", "nested/a"]
    assert rows == [
        {"train_loss": "1.0", "step": "0", "val_loss": "", "nested/a": ""},
        {"train_loss": "0.5", "step": "1", "val_loss": "", "nested/a": ""},
        {"train_loss": "", "step": "1", "val_loss": "0.75", "nested/a": "2.0"},
        {"train_loss": "0.25", "step": "2", "val_loss": "", "nested/a": ""},
    ]


def test_rows_are_buffered_until_every_n_steps(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    metrics_file = os.path.join(logger.log_dir, "metrics.csv")
    logger.log_metrics({"x": 0.0}, step=0)
    logger.log_metrics({"x": 1.0}, step=1)
    assert not os.path.exists(metrics_file)
    logger.log_metrics({"x": 2.0}, step=2)
    assert len(_read_csv(logger)[1]) == 3
    logger.log_metrics({"x": 3.0}, step=3)
    assert len(_read_csv(logger)[1]) == 3
    logger.finalize("success")
    assert [r["x"] for r in _read_csv(logger)[1]] == ["0.0", "1.0", "2.0", "3.0"]


def test_buffer_is_bounded_when_steps_skip_the_multiple(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    logger.log_metrics({"x": 0.0}, step=2)
    logger.log_metrics({"x": 1.0}, step=4)
    assert [r["step"] for r in _read_csv(logger)[1]] == ["2", "4"]


def test_step_defaults_to_a_row_counter_and_prefix(tmp_path):
    logger = CSVLogger(tmp_path, prefix="fold0", flush_logs_every_n_steps=2)
    for value in (1.0, 2.0, 3.0):
        logger.log_metrics({"loss": value})
    logger.save()
    header, rows = _read_csv(logger)
    assert header == ["fold0-loss", "step"]
    assert [r["step"] for r in rows] == ["0", "1", "2"]


def test_versions_explicit_version_and_name(tmp_path):
    first = CSVLogger(tmp_path)
    first.log_metrics({"x": 1.0}, step=0)
    first.save()
    second = CSVLogger(tmp_path)
    second.log_hyperparams({"a": 1})
    assert (first.version, second.version) == (0, 1)
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0", "version_1"]

    assert CSVLogger(tmp_path, version=4).log_dir == os.path.join(tmp_path, "lightning_logs", "version_4")
    assert CSVLogger(tmp_path, version="best").log_dir == os.path.join(tmp_path, "lightning_logs", "best")
    assert CSVLogger(tmp_path, name="exp").log_dir == os.path.join(tmp_path, "exp", "version_0")
    assert CSVLogger(tmp_path, name="").log_dir == os.path.join(tmp_path, "version_0")


def test_same_version_continues_the_file(tmp_path):
    logger = CSVLogger(tmp_path, version=0)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    with pytest.warns(UserWarning, match="exists and is not empty"):
        resumed = CSVLogger(tmp_path, version=0)
        resumed.log_metrics({"a": 2.0}, step=1)
    resumed.log_metrics({"b": 3.0}, step=1)
    resumed.finalize("success")
    header, rows = _read_csv(resumed)
    assert header == ["a", "step", "b"]
    assert [(r["a"], r["b"], r["step"]) for r in rows] == [("1.0", "", "0"), ("2.0", "", "1"), ("", "3.0", "1")]


def test_hparams_yaml_is_safe_to_load(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(Namespace(lr=torch.tensor(0.125), shape=torch.zeros(2, 1), path=tmp_path))
    logger.log_hyperparams({"model": torch.nn.ReLU(), "cls": torch.nn.Linear, "nested": {1: None}})
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved == {
        "lr": 0.125,
        "shape": [[0.0], [0.0]],
        "path": str(tmp_path),
        "model": "ReLU()",
        "cls": "torch.nn.modules.linear.Linear",
        "nested": {1: None},
    }


def test_memory_url(memory_url):
    fs = fsspec.filesystem("memory")
    fs.makedirs(f"{memory_url}/lightning_logs/version_0")
    fs.makedirs(f"{memory_url}/lightning_logs/version_3")
    logger = CSVLogger(memory_url, flush_logs_every_n_steps=1)
    assert logger.version == 4
    assert logger.log_dir == f"{memory_url}/lightning_logs/version_4"
    logger.log_hyperparams({"lr": torch.tensor(0.5)})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.log_metrics({"y": 2.0}, step=1)
    logger.finalize("success")

    with fs.open(f"{logger.log_dir}/hparams.yaml", "r") as f:
        assert yaml.safe_load(f) == {"lr": 0.5}
    header, rows = _read_csv(logger)
    assert header == ["x", "step", "y"]
    assert rows == [{"x": "1.0", "step": "0", "y": ""}, {"x": "", "step": "1", "y": "2.0"}]


def test_nothing_is_written_on_other_ranks(tmp_path, rank_one):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.experiment.log_metrics({"x": 1.0}, 0)
    logger.save()
    logger.finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_save_and_finalize_before_anything_is_logged_create_nothing(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.save()
    logger.finalize("failed")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_name_argument_value_and_accepted(tmp_path):
    with pytest.raises(
        MisconfigurationException, match=r"`flush_logs_every_n_steps=0` is not valid. Accepted: an int >= 1"
    ):
        CSVLogger(tmp_path, flush_logs_every_n_steps=0)
    with pytest.raises(MisconfigurationException, match=r"`flush_logs_every_n_steps=True`"):
        CSVLogger(tmp_path, flush_logs_every_n_steps=True)
    with pytest.raises(MisconfigurationException, match=r"`version=-3` is not valid. Accepted: .*int >= 0"):
        CSVLogger(tmp_path, version=-3)
    with pytest.raises(MisconfigurationException, match=r"`name=5`"):
        CSVLogger(tmp_path, name=5)
    with pytest.raises(MisconfigurationException, match=r"`save_dir=None`"):
        CSVLogger(None)
    logger = CSVLogger(tmp_path)
    with pytest.raises(MisconfigurationException, match=r"metrics\['x'\]=\[1.0\]"):
        logger.log_metrics({"x": [1.0]}, step=0)
