"""The batch-size finder: power and binsearch against a real allocator failure, the dataset's size, the callback."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import LightningDataModule, LightningModule, Trainer, seed_everything
from fulmen.callbacks import BatchSizeFinder, Callback
from fulmen.callbacks.batch_size_search import is_oom_error
from fulmen.tuner import Tuner
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import quiet

#: More than any machine can allocate: the CPU allocator fails at once, without touching memory.
TOO_MUCH = 2**50


class Data(LightningDataModule):
    def __init__(self, samples: int = 100, batch_size: int = 2) -> None:
        super().__init__()
        self.samples = samples
        self.batch_size = batch_size
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(self.samples, 4, generator=generator), torch.randn(self.samples, 1))
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)


class Model(LightningModule):
    """Its training step needs more memory than there is once a batch holds more than ``fits`` samples."""

    def __init__(self, fits: int | None = None) -> None:
        super().__init__()
        self.fits = fits
        self.layer = nn.Linear(4, 1)
        self.tried: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.trainer.global_step == 0:  # each trial starts from step 0
            self.tried.append(len(x))
        if self.fits is not None and len(x) > self.fits:
            torch.empty(TOO_MUCH, dtype=torch.uint8)  # a real out-of-memory error from the allocator
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_power_doubles_until_memory_runs_out_and_keeps_the_last_fit():
    model, data = Model(fits=20), Data()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = Trainer(**quiet(max_epochs=1))
    assert Tuner(trainer).scale_batch_size(model, datamodule=data) == 16
    assert model.tried == [2, 4, 8, 16, 32]
    assert data.batch_size == data.hparams.batch_size == 16
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert trainer.global_step == 0


def test_binsearch_narrows_down_between_the_last_fit_and_the_first_failure():
    model, data = Model(fits=20), Data()
    size = Tuner(Trainer(**quiet())).scale_batch_size(model, datamodule=data, mode="binsearch", margin=0.0)
    assert size == 20
    assert model.tried == [2, 4, 8, 16, 32, 24, 20, 22, 21]


def test_binsearch_keeps_a_margin_below_the_largest_fit_by_default():
    model, data = Model(fits=40), Data()
    size = Tuner(Trainer(**quiet())).scale_batch_size(model, datamodule=data, mode="binsearch")
    assert size == 38  # 40 fitted; 5 % headroom
    assert data.batch_size == 38
    model, data = Model(fits=40), Data()
    assert Tuner(Trainer(**quiet())).scale_batch_size(model, datamodule=data, mode="binsearch", margin=0.5) == 20


def test_max_val_caps_the_search():
    model, data = Model(), Data(samples=100)
    assert Tuner(Trainer(**quiet())).scale_batch_size(model, datamodule=data, max_val=12) == 12
    assert model.tried == [2, 4, 8, 12]
    model = Model()
    finder = BatchSizeFinder(init_val=64, max_val=16)
    Trainer(**quiet(max_epochs=1, callbacks=[finder])).fit(model, datamodule=Data(samples=100))
    assert finder.optimal_batch_size == 16
    assert model.tried[0] == 16  # an init_val above max_val starts at max_val


@pytest.mark.parametrize(("kwargs", "said"), [({"margin": 1.0}, "`margin=1.0`"), ({"max_val": 0}, "`max_val=0`")])
def test_margin_and_max_val_are_checked(kwargs, said):
    with pytest.raises(ValueError, match=said):
        BatchSizeFinder(**kwargs)


def test_the_search_stops_at_the_dataset_size():
    model, data = Model(), Data(samples=40)
    assert Tuner(Trainer(**quiet())).scale_batch_size(model, datamodule=data, init_val=8) == 40
    assert model.tried == [8, 16, 32, 40]


def test_a_first_size_too_big_halves_until_one_fits():
    model = Model(fits=20)
    assert Tuner(Trainer(**quiet())).scale_batch_size(model, datamodule=Data(), init_val=64) == 16
    assert model.tried == [64, 32, 16, 32]


def test_max_trials_bounds_the_search_and_batch_size_can_live_on_the_model():
    class OwnData(Model):
        def __init__(self):
            super().__init__()
            self.batch_size = 2

        def train_dataloader(self):
            return Data(batch_size=self.batch_size).train_dataloader()

    model = OwnData()
    assert Tuner(Trainer(**quiet())).scale_batch_size(model, max_trials=3) == 8
    assert model.tried == [2, 4, 8] and model.batch_size == 8


def test_the_callback_finds_the_size_then_trains_with_it():
    class Sizes(Callback):
        def __init__(self):
            self.sizes = set()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.sizes.add(trainer.train_dataloader.batch_size)

    seed_everything(0)
    finder, sizes = BatchSizeFinder(steps_per_trial=2), Sizes()
    trainer = Trainer(**quiet(max_epochs=1), callbacks=[finder, sizes])
    model, data = Model(fits=20), Data()
    trainer.fit(model, datamodule=data)
    assert finder.optimal_batch_size == 16
    assert sizes.sizes == {16}  # only the real training reached the other callbacks
    assert trainer.global_step == 7  # ceil(100 / 16): one full epoch from step 0


def test_other_errors_pass_through_and_oom_is_recognised():
    class Broken(Model):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):
        Tuner(Trainer(**quiet())).scale_batch_size(Broken(), datamodule=Data())
    try:
        torch.empty(TOO_MUCH, dtype=torch.uint8)
    except RuntimeError as error:
        assert is_oom_error(error)
    assert not is_oom_error(RuntimeError("shape mismatch"))


def test_refusals():
    tuner = Tuner(Trainer(**quiet()))
    loader = Data().train_dataloader()
    with pytest.raises(MisconfigurationException, match="cannot resize a DataLoader passed"):
        tuner.scale_batch_size(Model(), train_dataloaders=loader)
    with pytest.raises(MisconfigurationException, match="the train DataLoader still has batch_size=2"):
        Trainer(**quiet(), callbacks=[BatchSizeFinder(batch_arg_name="size")]).fit(_with_size(), loader)
    with pytest.raises(MisconfigurationException, match="`batch_size`, but neither the model, nor the datamodule"):
        tuner.scale_batch_size(Model())
    for kwargs, pattern in [
        ({"mode": "fast"}, "`mode='fast'`"),
        ({"steps_per_trial": 0}, "`steps_per_trial=0`"),
        ({"init_val": 0}, "`init_val=0`"),
        ({"max_trials": 0}, "`max_trials=0`"),
        ({"batch_arg_name": ""}, "`batch_arg_name=''`"),
        ({"method": "test"}, "`method='test'`"),
    ]:
        with pytest.raises(MisconfigurationException, match=pattern):
            tuner.scale_batch_size(Model(), datamodule=Data(), **kwargs)
    with pytest.warns(UserWarning, match="Skipping .* since `fast_dev_run` is enabled"):
        assert Tuner(Trainer(**quiet(fast_dev_run=True))).scale_batch_size(Model(), datamodule=Data()) is None


def _with_size() -> Model:
    model = Model()
    model.size = 4
    return model
