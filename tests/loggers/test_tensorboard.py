"""TensorBoardLogger writes event files TensorBoard reads back, in the folders users expect."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import uuid
from argparse import Namespace

import fsspec
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from fulmen.loggers import Logger, TensorBoardLogger
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_only


def _read_events(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir)
    accumulator.Reload()
    return accumulator


def _scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


@pytest.fixture
def memory_url():
    url = f"memory://tb-{uuid.uuid4().hex}"
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


def test_is_a_logger_with_lightning_defaults(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    assert isinstance(logger, Logger)
    assert logger.name == "lightning_logs"
    assert logger.save_dir == str(tmp_path)
    assert logger.root_dir == os.path.join(tmp_path, "lightning_logs")
    assert logger.group_separator == "/"


def test_scalars_read_back_with_values_and_steps(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": torch.tensor(2.5), "acc": 0.5}, step=0)
    logger.log_metrics({"loss": 1.25, "nested": {"a": 3.0, "b": torch.tensor(4)}}, step=7)
    logger.finalize("success")

    events = _read_events(logger.log_dir)
    assert _scalars(events, "loss") == [(0, 2.5), (7, 1.25)]
    assert _scalars(events, "acc") == [(0, 0.5)]
    assert _scalars(events, "nested/a") == [(7, 3.0)]
    assert _scalars(events, "nested/b") == [(7, 4.0)]


def test_prefix_is_joined_with_a_dash(tmp_path):
    logger = TensorBoardLogger(tmp_path, prefix="fold1")
    logger.log_metrics({"loss": 1.0}, step=2)
    logger.finalize("success")
    assert _scalars(_read_events(logger.log_dir), "fold1-loss") == [(2, 1.0)]


def test_versions_are_numbered_in_order(tmp_path):
    first = TensorBoardLogger(tmp_path)
    assert first.version == 0
    first.log_metrics({"x": 1.0}, step=0)
    second = TensorBoardLogger(tmp_path)
    assert second.version == 1
    second.log_metrics({"x": 1.0}, step=0)
    for logger in (first, second):
        logger.finalize("success")

    root = tmp_path / "lightning_logs"
    assert sorted(os.listdir(root)) == ["version_0", "version_1"]
    assert first.log_dir == str(root / "version_0")
    assert second.log_dir == str(root / "version_1")
    # Gaps and foreign folders do not confuse the numbering.
    (root / "version_7").mkdir()
    (root / "notes").mkdir()
    assert TensorBoardLogger(tmp_path).version == 8


def test_explicit_versions_name_and_sub_dir(tmp_path):
    assert TensorBoardLogger(tmp_path, version=5).log_dir == os.path.join(tmp_path, "lightning_logs", "version_5")
    assert TensorBoardLogger(tmp_path, version="run-a").log_dir == os.path.join(tmp_path, "lightning_logs", "run-a")
    assert TensorBoardLogger(tmp_path, name="").log_dir == os.path.join(tmp_path, "version_0")
    assert TensorBoardLogger(tmp_path, name=None).root_dir == str(tmp_path)

    logger = TensorBoardLogger(tmp_path, name="exp", version=2, sub_dir="train")
    assert logger.log_dir == os.path.join(tmp_path, "exp", "version_2", "train")
    logger.log_metrics({"x": 1.0}, step=1)
    logger.finalize("success")
    assert _scalars(_read_events(logger.log_dir), "x") == [(1, 1.0)]


def test_hparams_yaml_and_plugin_data(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams(
        Namespace(lr=torch.tensor(0.5), layers=[torch.tensor([1, 2]), 3], opt={"name": "adam", "betas": (0.9, 0.99)})
    )
    logger.log_hyperparams({"model": torch.nn.Linear(1, 1), "activation": torch.relu, "batch_size": 32})
    logger.finalize("success")

    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["lr"] == 0.5
    assert saved["layers"] == [[1, 2], 3]
    assert saved["opt"] == {"name": "adam", "betas": [0.9, 0.99]}
    assert saved["batch_size"] == 32
    assert saved["model"].startswith("Linear(")
    assert saved["activation"].endswith("relu")

    events = _read_events(logger.log_dir)
    assert _scalars(events, "hp_metric") == [(0, -1.0)]
    plugin = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == 0.5
    assert start.hparams["opt/name"].string_value == "adam"
    assert start.hparams["layers"].string_value == "[tensor([1, 2]), 3]"


def test_hparams_tab_with_real_metrics_instead_of_the_placeholder(tmp_path):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    logger.log_hyperparams({"lr": 0.1}, metrics={"val_acc": torch.tensor(0.75)})
    logger.finalize("success")
    events = _read_events(logger.log_dir)
    assert _scalars(events, "val_acc") == [(0, 0.75)]
    experiment = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["val_acc"]


def test_log_hyperparams_logs_metrics_at_the_given_step(tmp_path):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    logger.log_hyperparams({"lr": 0.1}, metrics={"val_acc": 0.5}, step=7)
    logger.finalize("success")
    assert _scalars(_read_events(logger.log_dir), "val_acc") == [(7, 0.5)]


def test_without_default_hp_metric_no_placeholder_is_logged(tmp_path):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.finalize("success")
    events = _read_events(logger.log_dir)
    assert "hp_metric" not in events.Tags()["scalars"]
    assert yaml.safe_load(open(os.path.join(logger.log_dir, "hparams.yaml"))) == {"lr": 0.1}


def test_memory_url_for_yaml_listing_and_events(memory_url, tmp_path):
    fs = fsspec.filesystem("memory")
    fs.makedirs(f"{memory_url}/lightning_logs/version_0")
    logger = TensorBoardLogger(memory_url)
    assert logger.version == 1
    assert logger.log_dir == f"{memory_url}/lightning_logs/version_1"

    logger.log_hyperparams({"lr": torch.tensor(0.25)})
    with fs.open(f"{logger.log_dir}/hparams.yaml", "r") as f:
        assert yaml.safe_load(f) == {"lr": 0.25}

    logger.log_metrics({"loss": 3.0}, step=4)
    logger.save()
    event_files = [p for p in fs.ls(logger.log_dir, detail=False) if "tfevents" in p]
    assert len(event_files) == 1
    logger.log_metrics({"loss": 2.0}, step=5)
    logger.finalize("success")
    assert logger._staging_dir is None  # the local staging copy is gone

    local = tmp_path / "download"
    local.mkdir()
    fs.get_file(event_files[0], str(local / os.path.basename(event_files[0])))
    assert _scalars(_read_events(str(local)), "loss") == [(4, 3.0), (5, 2.0)]


def test_nothing_is_written_on_other_ranks(tmp_path, rank_one):
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_graph(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    logger.experiment.add_image("img", torch.zeros(3, 2, 2))  # user code needs no rank check
    logger.save()
    logger.finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_log_graph(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    model.example_input_array = torch.zeros(1, 3)
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(model)
    logger.finalize("success")
    assert _read_events(logger.log_dir).Tags()["graph"]

    logger = TensorBoardLogger(tmp_path, log_graph=True)
    with pytest.warns(UserWarning, match="example_input_array"):
        logger.log_graph(torch.nn.Linear(3, 2))

    off = TensorBoardLogger(tmp_path, version="off")
    off.log_graph(model)
    assert not os.path.exists(off.log_dir)


def test_bad_arguments_name_argument_value_and_accepted(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"`version=-3` is not valid. Accepted: .*int >= 0"):
        TensorBoardLogger(tmp_path, version=-3)
    with pytest.raises(MisconfigurationException, match=r"`flush_sec=5` is not valid. Accepted: .*'flush_secs'"):
        TensorBoardLogger(tmp_path, flush_sec=5)
    with pytest.raises(MisconfigurationException, match=r"`prefix=3`"):
        TensorBoardLogger(tmp_path, prefix=3)
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(MisconfigurationException, match=r"metrics\['loss'\].*one element"):
        logger.log_metrics({"loss": torch.ones(3)}, step=0)
    with pytest.raises(MisconfigurationException, match=r"metrics\['name'\]"):
        logger.log_metrics({"name": "adam"}, step=0)
    with pytest.raises(MisconfigurationException, match=r"`params=\[1\]`"):
        logger.log_hyperparams([1])


def test_pickling_drops_the_open_writer(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone._experiment is None
    assert clone.log_dir == logger.log_dir
    logger.finalize("success")


def test_import_does_not_load_tensorboard(tmp_path):
    code = (
        "import sys, fulmen.loggers as L; L.TensorBoardLogger(sys.argv[1]);"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'tensorboard' or m == 'torch.utils.tensorboard'];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
