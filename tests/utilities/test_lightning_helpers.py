"""Lightning's utility names, each doing what Lightning's does: rank-zero helpers with stacklevel and
default, warning filters, batch sizes, worker counts, tied parameters, tags.csv, memory, shared files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from argparse import Namespace
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import fulmen.utilities as U
from fulmen.utilities.exceptions import MisconfigurationException, PossibleUserWarning
from fulmen.utilities.rank_zero import rank_prefixed_message, rank_zero_only


def test_everything_exported_resolves():
    for name in U.__all__:
        assert getattr(U, name) is not None, name
    from fulmen.utilities.apply_func import move_data_to_device
    from fulmen.utilities.parsing import AttributeDict

    assert U.AttributeDict is AttributeDict and U.move_data_to_device is move_data_to_device


def test_rank_zero_only_default_on_other_ranks():
    def answer():
        return 42

    only = rank_zero_only(answer, default="skipped")
    assert only() == 42
    rank_zero_only.rank = 1  # the conftest fixture puts it back
    assert only() == "skipped" and rank_zero_only(answer)() is None
    assert U.rank_zero_warn("not shown") is None


def _warn_from_here():
    U.rank_zero_warn("from here")  # the line the warning must point at


def test_rank_zero_warn_points_at_its_caller_and_takes_stacklevel():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_from_here()
        U.rank_zero_warn("one level up", stacklevel=5)
        U.rank_zero_warn("typed", category=RuntimeWarning)
        U.rank_zero_deprecation("old")
    assert caught[0].filename == __file__ and "_warn_from_here" not in caught[0].message.args[0]
    assert caught[0].lineno == _warn_from_here.__code__.co_firstlineno + 1
    assert caught[1].filename != __file__  # one frame above this test: pytest's
    assert caught[2].category is RuntimeWarning and caught[3].category is DeprecationWarning


def test_rank_zero_info_and_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="fulmen"):
        U.rank_zero_info("info %s", "line")
        U.rank_zero_debug("debug line", stacklevel=2)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "info line") in messages and ("DEBUG", "debug line") in messages
    assert caplog.records[0].pathname == __file__  # stacklevel 4: this test called it
    assert rank_prefixed_message("hi", 3) == "[rank: 3] hi" and rank_prefixed_message("hi", None) == "hi"


def test_disable_possible_user_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        U.disable_possible_user_warnings()
        warnings.warn("probably a mistake", PossibleUserWarning)
        warnings.warn("a real one", UserWarning)
    assert [str(w.message) for w in caught] == ["a real one"]
    code = "import warnings, fulmen; from fulmen.utilities import PossibleUserWarning as P; warnings.warn('x', P)"
    env = {**os.environ, "POSSIBLE_USER_WARNINGS": "off", "PYTHONWARNINGS": "always"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "PossibleUserWarning" not in proc.stderr
    env["POSSIBLE_USER_WARNINGS"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "PossibleUserWarning" in proc.stderr


@dataclass
class Pair:
    x: torch.Tensor
    label: str


def test_extract_batch_size():
    assert U.extract_batch_size(torch.zeros(5, 3)) == 5
    assert U.extract_batch_size(torch.tensor(1.0)) == 1
    assert U.extract_batch_size({"a": [torch.zeros(4, 2)], "b": "text"}) == 4
    assert U.extract_batch_size(["a", "b", "c"]) == 3
    assert U.extract_batch_size(Pair(torch.zeros(6), "x")) == 6
    with pytest.warns(UserWarning, match="ambiguous collection. The batch size we found is 2"):
        assert U.extract_batch_size([torch.zeros(2), torch.zeros(3)]) == 2
    with pytest.raises(MisconfigurationException, match="We could not infer the batch_size"):
        U.extract_batch_size({"a": 1})


def test_suggested_max_num_workers(monkeypatch):
    from fulmen.utilities import data

    monkeypatch.setattr(data, "_num_cpus_available", lambda: 16)
    assert [U.suggested_max_num_workers(n) for n in (1, 2, 8, 32)] == [15, 7, 1, 1]
    with pytest.raises(ValueError, match="local_world_size` should be >= 1, got 0"):
        U.suggested_max_num_workers(0)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight
        self.other = nn.Linear(4, 4)


def test_find_and_set_shared_parameters():
    model = Tied()
    groups = U.find_shared_parameters(model)
    assert groups == [["embed.weight", "out.weight"]]
    model.out.weight = nn.Parameter(model.out.weight.detach().clone())  # a move broke the tie
    assert U.find_shared_parameters(model) == []
    assert U.set_shared_parameters(model, groups) is model
    assert model.out.weight is model.embed.weight
    with pytest.raises(ValueError, match="not a parameter"):
        U.set_shared_parameters(model, [["other", "out.weight"]])


def test_tags_csv_round_trip(tmp_path):
    path = tmp_path / "tags.csv"
    U.save_hparams_to_tags_csv(path, Namespace(lr=0.1, layers=[1, 2], name="run", flag=True))
    assert path.read_text().splitlines()[0] == "key,value"
    assert U.load_hparams_from_tags_csv(path) == {"lr": 0.1, "layers": [1, 2], "name": "run", "flag": True}
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert U.load_hparams_from_tags_csv(tmp_path / "none.csv") == {}
    with pytest.raises(RuntimeError, match="Missing folder"):
        U.save_hparams_to_tags_csv(tmp_path / "no" / "tags.csv", {"a": 1})


def test_garbage_collection_cuda_runs_without_cuda():
    from fulmen.utilities.memory import is_oom_error

    U.garbage_collection_cuda()
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_oom_error(RuntimeError("something else"))


class _OneProcess:
    world_size = 1


class _FakeRanks:
    """Two ranks on one machine, played in turn: what each saw of the probe file is voted on."""

    def __init__(self) -> None:
        self.world_size, self.is_global_zero, self.votes = 2, True, []

    def broadcast(self, obj, src=0):
        return obj

    def barrier(self, name=None):
        pass

    def reduce_boolean_decision(self, decision, all=True):
        self.votes.append(decision)
        return decision


def test_is_shared_filesystem(tmp_path):
    assert U.is_shared_filesystem(_OneProcess(), tmp_path)
    assert U.is_shared_filesystem(_OneProcess())
    ranks = _FakeRanks()
    assert U.is_shared_filesystem(ranks, tmp_path, timeout=0.2) is True and ranks.votes == [True]
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    assert U.is_shared_filesystem(ranks, "s3://bucket/run") is True


def test_hparams_file_helpers_live_together_as_in_lightnings_core_saving():
    from fulmen.utilities import hparams_yaml

    assert hparams_yaml.save_hparams_to_tags_csv is U.save_hparams_to_tags_csv
    assert hparams_yaml.load_hparams_from_tags_csv is U.load_hparams_from_tags_csv
