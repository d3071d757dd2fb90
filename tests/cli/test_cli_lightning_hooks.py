"""LightningCLI's parser_class, after_instantiate_classes and instantiate_module, as Lightning has them."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from fulmen.cli import LightningArgumentParser, LightningCLI, instantiate_module
from fulmen.demos import BoringDataModule, BoringModel


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py"])  # the CLI runs from `args` only


class Model(BoringModel):
    def __init__(self, width: int = 2, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.width = width
        self.activation = activation


class Recording(LightningCLI):
    def before_instantiate_classes(self) -> None:
        self.order = ["before"]

    def after_instantiate_classes(self) -> None:
        self.order.append(("after", type(self.model).__name__, self.trainer is not None))


class CountingParser(LightningArgumentParser):
    made = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        CountingParser.made += 1


def test_after_instantiate_classes_runs_once_the_classes_exist(tmp_path):
    cli = Recording(
        Model, BoringDataModule, run=False, args=["--model.width=3", f"--trainer.default_root_dir={tmp_path}"]
    )
    assert cli.order == ["before", ("after", "Model", True)] and cli.model.width == 3


def test_parser_class_builds_every_parser(tmp_path):
    CountingParser.made = 0
    cli = LightningCLI(Model, run=False, parser_class=CountingParser, args=[f"--trainer.default_root_dir={tmp_path}"])
    assert isinstance(cli.parser, CountingParser) and CountingParser.made == 1
    CountingParser.made = 0
    LightningCLI(Model, parser_class=CountingParser, args=["fit", f"--trainer.default_root_dir={tmp_path}",
                 "--trainer.fast_dev_run=1"])  # fmt: skip
    assert CountingParser.made == 1 + len(LightningCLI.subcommands())  # the main parser and one per subcommand
    with pytest.raises(TypeError, match="parser_class"):
        LightningCLI(Model, run=False, parser_class=dict, args=[])


def test_instantiate_module_from_a_config():
    model = instantiate_module(Model, {"width": 5, "activation": {"class_path": "torch.nn.ReLU"}})
    assert isinstance(model, Model) and model.width == 5 and isinstance(model.activation, nn.ReLU)
    sub = instantiate_module(BoringModel, {"_class_path": f"{__name__}.Model", "width": 7})
    assert type(sub) is Model and sub.width == 7
    assert torch.equal(sub(torch.zeros(1, 32)), sub.layer(torch.zeros(1, 32)))
