"""StochasticWeightAveraging on the real Trainer: the final weights are the window's mean, BN is refreshed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.lambda_function import LambdaCallback
from fulmen.callbacks.stochastic_weight_avg import StochasticWeightAveraging
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self, batch_norm=False, scheduler=False):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2) if batch_norm else torch.nn.Identity()
        self.scheduler = scheduler

    def forward(self, x):
        return self.norm(self.layer(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        if self.scheduler:
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]
        return opt


def data():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g))


def loader():
    return DataLoader(data(), batch_size=4)


def trainer(tmp_path, callbacks, max_epochs=5):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def test_final_weights_are_the_mean_over_the_window(tmp_path):
    per_epoch, lrs = [], []

    def record(trainer, module):
        per_epoch.append(snapshot(module))
        lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=3, annealing_epochs=1)
    model = Model()
    # the recorder runs before SWA in the same hook, so it sees the weights SWA averages
    trainer(tmp_path, [LambdaCallback(on_train_epoch_end=record), swa]).fit(model, loader())
    assert (swa.swa_start, swa.swa_end, swa.n_averaged) == (2, 4, 3)
    for final, *window in zip(snapshot(model), *per_epoch[2:]):
        torch.testing.assert_close(final, torch.stack(window).mean(0))
    # the average differs from the last epoch's weights
    assert not torch.equal(snapshot(model)[0], per_epoch[-1][0])
    # SWALR took over from epoch 2 and reached swa_lrs after one annealing epoch
    assert lrs[:2] == [0.1, 0.1]
    assert lrs[2:] == pytest.approx([0.01, 0.01, 0.01])


def test_fraction_start_and_replaced_scheduler(tmp_path):
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=0.6, annealing_epochs=0)
    t = trainer(tmp_path, [swa])
    t.fit(Model(scheduler=True), loader())
    assert swa.swa_start == 2  # int(5 * 0.6) = 3rd epoch
    assert swa.n_averaged == 3
    assert type(t.lr_scheduler_configs[0].scheduler).__name__ == "SWALR"
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)


def test_batch_norm_statistics_are_recomputed_for_the_averaged_weights(tmp_path):
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    model = Model(batch_norm=True)
    trainer(tmp_path, [swa], max_epochs=3).fit(model, loader())
    with torch.no_grad():
        features = [model.layer(x) for x, _ in loader()]
    # momentum=None during the pass: the running mean is the plain average of the batch means
    expected_mean = torch.stack([f.mean(0) for f in features]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(model.norm.running_mean, expected_mean)
    torch.testing.assert_close(model.norm.running_var, expected_var)
    assert model.norm.momentum == 0.1  # restored after the pass
    assert model.training  # modes as they were


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    def run(callbacks, max_epochs=5, ckpt_path=None):
        model = Model()
        trainer(tmp_path, callbacks, max_epochs).fit(model, loader(), ckpt_path=ckpt_path)
        return model

    uninterrupted = run([StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2)])

    path = tmp_path / "mid.ckpt"

    class Stop(Exception):
        pass

    def save_then_stop(trainer, module):
        if trainer.current_epoch == 3:  # the average holds epochs 1 and 2
            trainer.save_checkpoint(path)
            raise Stop

    first = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2)
    with pytest.raises(Stop):
        run([first, LambdaCallback(on_train_epoch_start=save_then_stop)])
    assert first.n_averaged == 2
    state = torch.load(path, weights_only=True)["callbacks"]["StochasticWeightAveraging"]
    assert state["n_averaged"] == 2 and state["latest_update_epoch"] == 2

    resumed_swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2)
    resumed = run([resumed_swa], ckpt_path=str(path))
    assert resumed_swa.n_averaged == 4
    for a, b in zip(snapshot(uninterrupted), snapshot(resumed)):
        torch.testing.assert_close(a, b)


def test_custom_avg_fn(tmp_path):
    last = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1, avg_fn=lambda avg, new, n: new)
    per_epoch = []
    model = Model()
    trainer(tmp_path, [LambdaCallback(on_train_epoch_end=lambda t, m: per_epoch.append(snapshot(m))), last], 3).fit(
        model, loader()
    )
    for final, expected in zip(snapshot(model), per_epoch[-1]):
        torch.testing.assert_close(final, expected)


def test_needs_max_epochs(tmp_path):
    t = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[StochasticWeightAveraging(swa_lrs=0.1)],
    )
    with pytest.raises(MisconfigurationException, match="max_epochs"):
        t.fit(Model(), loader())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"swa_lrs": 0.0}, "swa_lrs"),
        ({"swa_lrs": [0.1, -1.0]}, "swa_lrs"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 0}, "swa_epoch_start"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 1.5}, "swa_epoch_start"),
        ({"swa_lrs": 0.1, "annealing_strategy": "exp"}, "annealing_strategy"),
        ({"swa_lrs": 0.1, "avg_fn": 3}, "avg_fn"),
        ({"swa_lrs": 0.1, "device": 0}, "device"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        StochasticWeightAveraging(**kwargs)
