"""Names Lightning scripts reach for after the import change: Fabric, fabric.*, the logo, model_helpers."""

from __future__ import annotations

import importlib.util
from unittest import mock

import pytest

import fulmen as L
from fulmen.demos import BoringDataModule, BoringModel
from fulmen.utilities.model_helpers import get_torchvision_model, is_overridden


def test_fabric_is_lite_and_fabric_packages_are_reachable_by_attribute():
    from fulmen.fabric import Fabric

    assert L.Fabric is L.Lite is Fabric
    assert "Fabric" in dir(L) and "fabric" in dir(L)
    assert L.fabric.strategies.fsdp.FSDPStrategy is L.fabric.strategies.FSDPStrategy
    assert L.fabric.strategies.ParallelStrategy.__name__ == "ParallelStrategy"
    assert L.fabric.utilities.rank_zero_warn is importlib.import_module("fulmen.utilities.rank_zero").rank_zero_warn
    assert L.fabric.accelerators.Accelerator.__name__ == "Accelerator"
    assert L.fabric.loggers.CSVLogger.__name__ == "CSVLogger"
    assert L.fabric.plugins.environments.LightningEnvironment is L.fabric.plugins.LightningEnvironment
    assert L.fabric.seed_everything(7) == 7
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        L.fabric.nothing  # noqa: B018


def test_fabric_alias_runs_a_loop():
    import torch

    fabric = L.Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(3, 1)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    loss = model(torch.ones(2, 3)).sum()
    fabric.backward(loss)
    optimizer.step()
    assert isinstance(fabric, L.Lite) and fabric.world_size == 1


def test_cli_lightning_logo_prints_a_banner(capsys):
    L.cli_lightning_logo()
    out = capsys.readouterr().out
    assert out.startswith("\n\033[0;35m") and "f u l m e n" in out and out.rstrip("\n").endswith("\033[0m")


def test_parallel_strategy_is_the_base_of_the_multi_process_strategies():
    from fulmen.strategies import DDPStrategy, FSDPStrategy, ParallelStrategy

    assert issubclass(DDPStrategy, ParallelStrategy) and issubclass(FSDPStrategy, ParallelStrategy)


class _Overrides(BoringModel):
    def on_fit_start(self) -> None:
        pass


def test_is_overridden_has_lightnings_signature_and_answers():
    model = _Overrides()
    assert is_overridden("training_step", model) and is_overridden("on_fit_start", model)
    assert not is_overridden("on_fit_end", model)
    assert is_overridden("training_step", _Overrides)  # a class works too
    assert is_overridden("setup", BoringDataModule()) and not is_overridden("prepare_data", BoringDataModule())
    assert not is_overridden("training_step", None)
    assert not is_overridden("on_fit_start", model, parent=_Overrides)  # compared with the given parent


def test_is_overridden_sees_through_wrappers_and_none():
    model = BoringModel()
    with mock.patch.object(L.LightningModule, "on_train_start", wraps=L.LightningModule.on_train_start):
        assert not is_overridden("on_train_start", model)
    model.validation_step = None
    assert not is_overridden("validation_step", model)


def test_callbacks_default_parent_and_errors():
    class Printer(L.Callback):
        def on_train_end(self, trainer, pl_module):
            pass

    assert is_overridden("on_train_end", Printer()) and not is_overridden("on_train_start", Printer())
    with pytest.raises(ValueError, match="Expected a parent"):
        is_overridden("forward", object())
    with pytest.raises(ValueError, match="parent should define"):
        is_overridden("training_step", BoringModel(), parent=L.Callback)


def test_get_torchvision_model():
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ModuleNotFoundError, match="pip install torchvision"):
            get_torchvision_model("resnet18")
    else:
        assert get_torchvision_model("resnet18", weights=None).fc.out_features == 1000


def test_import_flags_answer_without_importing():
    import sys

    from fulmen.utilities import imports

    assert imports._TORCHVISION_AVAILABLE is (importlib.util.find_spec("torchvision") is not None)
    assert imports._RICH_AVAILABLE is (importlib.util.find_spec("rich") is not None)
    assert imports.package_available("json") and not imports.package_available("surely_not_a_package_x")
    assert not imports.package_available("a..b")
    assert "surely_not_a_package_x" not in sys.modules


def test_type_aliases_and_runtime_protocols():
    import torch

    from fulmen.utilities import types

    layer = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    assert isinstance(optimizer, types.Optimizable) and not isinstance(layer, types.Optimizable)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    assert isinstance(plateau, L.fabric.utilities.types.LRScheduler)
    _, wrapped = L.Fabric(accelerator="cpu", devices=1).setup(layer, optimizer)
    assert isinstance(wrapped, types.Optimizable)
    assert types.STEP_OUTPUT is not None and types.OptimizerLRScheduler is not None
    for name in ("TRAIN_DATALOADERS", "EVAL_DATALOADERS", "LRSchedulerTypeUnion"):
        assert hasattr(types, name)
