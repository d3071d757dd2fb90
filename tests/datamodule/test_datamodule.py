"""LightningDataModule: its hooks per stage, from_datasets, state, hyperparameters."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset

from fulmen import LightningDataModule, Trainer
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import BoringDataModule, BoringModel, RandomDataset, RecordingLogger, loader, quiet


class Tracking(BoringDataModule):
    def __init__(self) -> None:
        super().__init__(length=16)
        self.calls: list[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{stage}")


@pytest.mark.parametrize("entry", ["fit", "validate", "test", "predict"])
def test_hooks_run_once_per_stage(entry):
    dm = Tracking()
    trainer = Trainer(**quiet(max_epochs=1))
    getattr(trainer, entry)(BoringModel(), datamodule=dm)
    assert dm.calls == ["prepare_data", f"setup:{entry}", f"teardown:{entry}"]
    assert trainer.datamodule is dm and dm.trainer is trainer


def test_datamodule_passed_positionally():
    dm = Tracking()
    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(BoringModel(), dm)
    assert trainer.datamodule is dm and trainer.global_step == 2
    results = trainer.validate(BoringModel(), dm, verbose=False)
    assert "val_loss" in results[0]


def test_dataloaders_and_datamodule_together_fail():
    with pytest.raises(MisconfigurationException, match="not both"):
        Trainer(**quiet()).fit(BoringModel(), loader(16), datamodule=Tracking())
    with pytest.raises(MisconfigurationException, match="not both"):
        Trainer(**quiet()).test(BoringModel(), loader(16), datamodule=Tracking())


def test_validate_and_test_reuse_the_fit_datamodule():
    dm = Tracking()
    trainer = Trainer(**quiet(max_epochs=1))
    model = BoringModel()
    trainer.fit(model, datamodule=dm)
    trainer.test(model, verbose=False)
    assert dm.calls[-2:] == ["setup:test", "teardown:test"]


def test_prepare_data_runs_on_local_rank_zero_only(monkeypatch):
    from fulmen.strategies.single_device import SingleDeviceStrategy

    dm = Tracking()
    monkeypatch.setattr(SingleDeviceStrategy, "local_rank", property(lambda self: 1))
    Trainer(**quiet(max_epochs=1)).fit(BoringModel(), datamodule=dm)
    assert "prepare_data" not in dm.calls

    dm = Tracking()
    dm.prepare_data_per_node = False
    monkeypatch.setattr(SingleDeviceStrategy, "local_rank", property(lambda self: 0))
    monkeypatch.setattr(SingleDeviceStrategy, "node_rank", property(lambda self: 1))
    Trainer(**quiet(max_epochs=1)).fit(BoringModel(), datamodule=dm)
    assert "prepare_data" not in dm.calls  # only global rank 0 prepares when not per node


def test_from_datasets():
    train, val = RandomDataset(12), RandomDataset(6)
    dm = LightningDataModule.from_datasets(train, val, batch_size=4)
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    assert train_loader.batch_size == 4 and isinstance(train_loader.sampler, RandomSampler)
    assert isinstance(val_loader.sampler, SequentialSampler) and len(val_loader) == 2
    assert isinstance(dm.val_dataloader(), DataLoader)
    assert len(LightningDataModule.from_datasets(val_dataset=[val, val]).val_dataloader()) == 2
    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(BoringModel(), dm)
    assert trainer.global_step == 3


def test_from_datasets_passes_batch_size_to_an_init_that_takes_it():
    class Sized(LightningDataModule):
        def __init__(self, batch_size: int, extra: str = "") -> None:
            super().__init__()
            self.batch_size = batch_size
            self.extra = extra

    dm = Sized.from_datasets(RandomDataset(8), batch_size=2, extra="yes")
    assert dm.batch_size == 2 and dm.extra == "yes"


def test_missing_dataloader_method_means_no_validation():
    class TrainOnly(LightningDataModule):
        def train_dataloader(self):
            return loader(16)

    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(BoringModel(), TrainOnly())
    assert trainer.num_val_batches == [] and "val_loss" not in trainer.callback_metrics
    with pytest.raises(MisconfigurationException):
        TrainOnly().test_dataloader()


def test_state_dict_goes_into_checkpoints(tmp_path):
    class Stateful(Tracking):
        def state_dict(self) -> dict[str, Any]:
            return {"position": 7}

    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(BoringModel(), Stateful())
    trainer.save_checkpoint(tmp_path / "dm.ckpt")
    checkpoint = torch.load(tmp_path / "dm.ckpt", weights_only=False)
    assert checkpoint["datamodule"] == {"position": 7}  # one documented key (schema 2)


class WithHParams(LightningDataModule):
    def __init__(self, data_dir: str = "./data", batch_size: int = 16, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["num_workers"])

    def train_dataloader(self):
        return loader(16, batch_size=self.hparams.batch_size)


def test_save_hyperparameters_and_merge_with_the_module():
    dm = WithHParams(batch_size=8)
    assert dm.hparams == {"data_dir": "./data", "batch_size": 8}

    class ModuleHParams(BoringModel):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__(lr)
            self.save_hyperparameters()

    logger = RecordingLogger()
    Trainer(**quiet(max_epochs=1, logger=logger)).fit(ModuleHParams(), dm)
    assert logger.hparams == [{"lr": 0.1, "data_dir": "./data", "batch_size": 8}]


def test_conflicting_hyperparameters_fail():
    class ModuleHParams(BoringModel):
        def __init__(self, batch_size: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()

    with pytest.raises(MisconfigurationException, match="batch_size"):
        Trainer(**quiet(max_epochs=1, logger=RecordingLogger())).fit(ModuleHParams(), WithHParams())


def test_datamodule_batch_transfer_hooks_take_precedence():
    class Scaling(BoringDataModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch * 0

    class Probe(BoringModel):
        def training_step(self, batch, batch_idx):
            assert torch.count_nonzero(batch) == 0
            return super().training_step(batch, batch_idx)

    trainer = Trainer(**quiet(max_epochs=1, limit_train_batches=2))
    trainer.fit(Probe(), Scaling())
    assert trainer.global_step == 2


def test_transfer_batch_to_device_override_receives_the_device():
    class Custom(BoringModel):
        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            self.device_seen = device
            return batch["x"].to(device)

    data = [{"x": torch.randn(4, 32)} for _ in range(2)]

    class Loader:
        def __iter__(self):
            return iter(data)

        def __len__(self):
            return 2

    model = Custom()
    Trainer(**quiet(max_epochs=1)).fit(model, Loader())
    assert model.device_seen == torch.device("cpu")


def test_tensor_datasets_unpack_as_tuples():
    dm = LightningDataModule.from_datasets(TensorDataset(torch.randn(8, 32), torch.randn(8)), batch_size=4)

    class Pairs(BoringModel):
        def training_step(self, batch, batch_idx):
            x, _ = batch
            return self.loss(x)

    trainer = Trainer(**quiet(max_epochs=1))
    trainer.fit(Pairs(), dm)
    assert trainer.global_step == 2


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(torch.randn(4, 2))


class NeedsSetup(LightningDataModule):
    def setup(self, stage: str) -> None:
        self.train_set = RandomDataset(24)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(RandomDataset(16)), DataLoader(_Stream())]


def test_str_lists_each_dataloader_in_lightnings_layout():
    dm = NeedsSetup()
    # before setup the train loader fails: "None", as for a method the datamodule does not define
    assert str(dm).split(os.linesep) == [
        "{Train dataloader: None}",
        "{Validation dataloader: 1. size=16 ; 2. size=NA}",
        "{Test dataloader: None}",
        "{Predict dataloader: None}",
    ]
    dm.setup("fit")
    assert str(dm).split(os.linesep)[0] == "{Train dataloader: size=24}"
