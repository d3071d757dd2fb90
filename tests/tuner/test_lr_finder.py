"""The learning-rate finder: the sweep, the suggestion, divergence, state restored, the callback."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import LightningModule, Trainer, seed_everything
from fulmen.callbacks import Callback, LearningRateFinder
from fulmen.tuner import LRFinder, Tuner
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import quiet


def regression_data(samples: int = 64, batch_size: int = 8, shuffle: bool = True) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(samples, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


class Regressor(LightningModule):
    def __init__(self, lr: float = 0.01, optimizer: str = "sgd") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls = 0
        self.first_lr = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.calls += 1
        if self.first_lr is None:
            self.first_lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_lr_find_sweeps_exponentially_restores_the_model_and_updates_hparams(tmp_path):
    seed_everything(1)
    model = Regressor()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    recorder = Recorder()
    trainer = Trainer(**quiet(max_epochs=1, default_root_dir=str(tmp_path)), callbacks=[recorder])
    finder = Tuner(trainer).lr_find(model, regression_data(), num_training=40, early_stop_threshold=None)

    assert isinstance(finder, LRFinder)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert len(lrs) == len(losses) == 40  # past the 8 batches of one epoch: max_epochs does not cut the sweep
    assert lrs[0] == pytest.approx(1e-8)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)
    assert lrs[-1] == pytest.approx(1e-8 * (1 / 1e-8) ** (39 / 40))
    assert all(math.isfinite(loss) for loss in losses)

    suggestion = finder.suggestion()
    assert model.hparams.lr == suggestion  # update_attr=True
    assert 1e-8 < suggestion < 1.0
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert trainer.callbacks[-1] is recorder and recorder.calls == 0  # set aside during the search
    assert not trainer.should_stop

    trainer.fit(model, regression_data())  # the real fit trains with the suggestion
    assert recorder.first_lr == suggestion
    assert trainer.global_step == 8


def test_linear_sweep_and_the_suggestion_is_the_steepest_fall():
    finder = LRFinder("linear", 0.1, 1.1, 10)
    assert [finder.lr_at(step) for step in (0, 5)] == [pytest.approx(0.1), pytest.approx(0.6)]
    finder.results = {"lr": [0.1 * (i + 1) for i in range(8)], "loss": [5, 5, 4.9, 4.0, 2.0, 1.9, 1.8, 9.0]}
    assert finder.suggestion(skip_begin=1, skip_end=1) == pytest.approx(0.4)  # 4.9 -> 4.0 -> 2.0
    finder.results["loss"][4] = float("nan")  # not finite: left out
    assert finder.suggestion(skip_begin=1, skip_end=1) == pytest.approx(0.4)
    assert finder._optimal_idx == 3
    with pytest.warns(UserWarning, match="too few for a suggestion"):
        assert finder.suggestion(skip_begin=6, skip_end=1) is None


def test_a_diverging_loss_stops_the_sweep_early():
    model = Regressor()
    trainer = Trainer(**quiet(max_epochs=1))
    finder = Tuner(trainer).lr_find(model, regression_data(), min_lr=1e-4, max_lr=100.0, num_training=60)
    losses = finder.results["loss"]
    assert 5 < len(losses) < 60
    assert not math.isfinite(losses[-1]) or losses[-1] > 4.0 * min(losses[:-1])
    assert trainer.global_step == 0


def test_the_callback_trains_as_a_plain_fit_with_the_suggested_rate(tmp_path):
    """Weights, Adam's state and the data order come back: the fit equals one started at the suggestion."""

    def fit(callbacks, lr):
        seed_everything(7)
        model = Regressor(lr=lr, optimizer="adam")
        trainer = Trainer(**quiet(max_epochs=2), callbacks=callbacks)
        trainer.fit(model, regression_data())
        return model, trainer

    finder = LearningRateFinder(num_training_steps=30)
    tuned, trainer = fit([finder], lr=0.01)
    suggestion = finder.optimal_lr.suggestion()
    assert tuned.hparams.lr == suggestion and trainer.global_step == 16
    plain, _ = fit([], lr=suggestion)
    for name, value in tuned.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name]), name


def test_plot_draws_the_curve_and_marks_the_suggestion():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finder = LRFinder("exponential", 1e-5, 1.0, 20)
    finder.results = {"lr": [finder.lr_at(i) for i in range(20)], "loss": [2.0 - 0.1 * i for i in range(20)]}
    figure = finder.plot(suggest=True)
    [ax] = figure.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "Learning rate"
    assert len(ax.lines) == 2  # the curve and the red suggestion point
    _, own_ax = plt.subplots()
    assert finder.plot(ax=own_ax) is own_ax.figure
    plt.close("all")


def test_attr_name_and_missing_attribute():
    class NamedRate(Regressor):
        def __init__(self):
            super().__init__()
            self.my_rate = 0.01

    model = NamedRate()
    finder = Tuner(Trainer(**quiet())).lr_find(model, regression_data(), num_training=20, attr_name="my_rate")
    assert model.my_rate == finder.suggestion()

    class NoRate(Regressor):
        def __init__(self):
            LightningModule.__init__(self)
            self.layer = nn.Linear(4, 1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(
        AttributeError, match="neither the model nor `model.hparams` has one of \\('lr', 'learning_rate'\\)"
    ):
        Tuner(Trainer(**quiet())).lr_find(NoRate(), regression_data())
    assert Tuner(Trainer(**quiet())).lr_find(NoRate(), regression_data(), num_training=12, update_attr=False)


def test_refusals():
    class TwoOptimizers(Regressor):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(MisconfigurationException, match="returned 2 optimizers"):
        Tuner(Trainer(**quiet())).lr_find(TwoOptimizers(), regression_data())
    tuner = Tuner(Trainer(**quiet()))
    for kwargs, pattern in [
        ({"min_lr": 1.0, "max_lr": 0.1}, "`min_lr=1.0`"),
        ({"min_lr": 0}, "`min_lr=0`"),
        ({"mode": "cubic"}, "`mode='cubic'`"),
        ({"num_training": 0}, "`num_training=0`"),
        ({"early_stop_threshold": -1}, "`early_stop_threshold=-1`"),
        ({"method": "validate"}, "`method='validate'`"),
    ]:
        with pytest.raises(MisconfigurationException, match=pattern):
            tuner.lr_find(Regressor(), regression_data(), **kwargs)
    with pytest.raises(MisconfigurationException, match="already has a `LearningRateFinder`"):
        Tuner(Trainer(**quiet(), callbacks=[LearningRateFinder()])).lr_find(Regressor(), regression_data())
    with pytest.warns(UserWarning, match="Skipping .* since `fast_dev_run` is enabled"):
        assert Tuner(Trainer(**quiet(fast_dev_run=True))).lr_find(Regressor(), regression_data()) is None
    with pytest.raises(TypeError, match="needs a `fulmen.Trainer`"):
        Tuner(object())
