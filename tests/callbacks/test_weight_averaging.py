"""WeightAveraging and EMAWeightAveraging on the real Trainer: EMA values, validation, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
from tests.callbacks.resume_helpers import (
    Stop,
    StopAt,
    assert_same_tensors,
    loaders,
    quiet_trainer,
    run,
    stop_and_resume,
)
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

import fulmen as L
from fulmen.callbacks import Callback, EMAWeightAveraging, WeightAveraging
from fulmen.utilities.exceptions import MisconfigurationException


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.seen_in_validation = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen_in_validation.append([p.detach().clone() for p in self.parameters()])
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class AfterStep(Callback):
    """Records the weights at every optimizer step (listed before the averaging callback)."""

    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append([p.detach().clone() for p in pl_module.parameters()])


def ema(snapshots, decay):
    """The EMA the callback should hold: the first update copies, each later one blends."""
    average = [t.clone() for t in snapshots[0]]
    fn = get_ema_multi_avg_fn(decay)
    for snapshot in snapshots[1:]:
        fn(average, snapshot, None)
    return average


def test_ema_weights_validate_and_end_training(tmp_path):
    recorder, averaging = AfterStep(), EMAWeightAveraging(decay=0.7)
    model = Net()
    quiet_trainer(tmp_path, [recorder, averaging], max_epochs=2, val_check_interval=4, num_sanity_val_steps=1).fit(
        model, *loaders()
    )
    steps = len(recorder.weights)
    assert steps == 16 and averaging.n_averaged == 16
    # the sanity check ran before any update: the module's own (initial) weights, no swap
    initial = model.seen_in_validation[0]
    # validation after step 4 saw the EMA of steps 1..4, not the weights of step 4
    for got, want, last in zip(model.seen_in_validation[1], ema(recorder.weights[:4], 0.7), recorder.weights[3]):
        assert torch.equal(got, want)
        assert not torch.equal(got, last)
    assert not all(torch.equal(a, b) for a, b in zip(initial, model.seen_in_validation[1]))
    # the module ends with the EMA of all 16 steps; buffers (BatchNorm statistics) averaged too
    for final, want in zip(model.parameters(), ema(recorder.weights, 0.7)):
        assert torch.equal(final, want)
    assert torch.equal(model.net[1].running_mean, averaging.average_model.module.net[1].running_mean)


def test_update_policy_start_and_every_n_and_accumulation(tmp_path):
    averaging = EMAWeightAveraging(decay=0.5, update_every_n_steps=2, update_starting_at_step=1)
    quiet_trainer(tmp_path, [averaging], max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0).fit(
        Net(), *loaders()
    )
    # 8 batches make 4 optimizer steps (step_idx 0..3): of those >= 1, only the even 2 updates
    assert averaging.n_averaged == 1
    by_epoch = EMAWeightAveraging(update_every_n_steps=0, update_starting_at_epoch=1)
    quiet_trainer(tmp_path, [by_epoch], max_epochs=3, limit_val_batches=0).fit(Net(), *loaders())
    assert by_epoch.n_averaged == 2  # ends of epochs 1 and 2
    swa = WeightAveraging()  # the default: equal-weight mean after every optimizer step
    quiet_trainer(tmp_path, [swa], max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0).fit(Net(), *loaders())
    assert swa.n_averaged == 4


def test_checkpoint_holds_average_current_and_bookkeeping(tmp_path):
    averaging = EMAWeightAveraging(decay=0.9)
    path = tmp_path / "mid.ckpt"
    model = Net()
    with pytest.raises(Stop):
        quiet_trainer(tmp_path, [averaging, StopAt(path, "batch", 5)], limit_val_batches=0).fit(model, *loaders())
    checkpoint = torch.load(path, weights_only=True)
    assert_same_tensors(averaging.average_model.module.state_dict(), checkpoint["state_dict"], "state_dict")
    assert_same_tensors(model.state_dict(), checkpoint["current_model_state"], "current_model_state")
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 5
    assert checkpoint["callbacks"]["EMAWeightAveraging"] == {"latest_update_step": 5, "latest_update_epoch": -1}
    # without the callback, the file loads as the averaged model
    loaded = Net.load_from_checkpoint(path)
    assert_same_tensors(averaging.average_model.module.state_dict(), loaded.state_dict(), "loaded")


def test_saving_during_validation_keeps_roles(tmp_path):
    """A checkpoint written while the average is swapped in still stores average and current apart."""
    averaging = EMAWeightAveraging(decay=0.9)
    path = tmp_path / "val.ckpt"
    model = Net()

    class SaveInValidation(Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                trainer.save_checkpoint(path)
                raise Stop

    with pytest.raises(Stop):
        quiet_trainer(tmp_path, [averaging, SaveInValidation()], val_check_interval=3, num_sanity_val_steps=0).fit(
            model, *loaders()
        )
    checkpoint = torch.load(path, weights_only=True)
    # the exception swapped the trained weights back into the module
    assert_same_tensors(model.state_dict(), checkpoint["current_model_state"], "current")
    assert_same_tensors(averaging.average_model.module.state_dict(), checkpoint["state_dict"], "average")
    assert not torch.equal(checkpoint["state_dict"]["net.0.weight"], checkpoint["current_model_state"]["net.0.weight"])


def test_exact_resume(tmp_path):
    def compare(reference, resumed):
        a, b = reference.callbacks[0], resumed.callbacks[0]
        assert_same_tensors(a.average_model.state_dict(), b.average_model.state_dict(), "average")
        assert a.state_dict() == b.state_dict()

    stop_and_resume(
        tmp_path,
        Net,
        lambda: [EMAWeightAveraging(decay=0.8, update_starting_at_step=2, update_starting_at_epoch=1)],
        stops=[("batch", 5), ("validation", 11), ("epoch", 1)],
        compare=compare,
        val_check_interval=3,
        num_sanity_val_steps=1,
    )


def test_validate_from_checkpoint_uses_the_average(tmp_path):
    averaging = EMAWeightAveraging(decay=0.9)
    result = run(tmp_path, Net, lambda: [averaging], max_epochs=1, limit_val_batches=0)
    path = tmp_path / "end.ckpt"
    result.trainer.save_checkpoint(path)
    model = Net()
    quiet_trainer(tmp_path, [EMAWeightAveraging()]).validate(model, loaders()[1], ckpt_path=path)
    assert_same_tensors(averaging.average_model.module.state_dict(), model.state_dict(), "validated weights")


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: EMAWeightAveraging(decay=1.5), "decay"),
        (lambda: EMAWeightAveraging(update_every_n_steps=-1), "update_every_n_steps"),
        (lambda: EMAWeightAveraging(update_starting_at_step=1.5), "update_starting_at_step"),
        (lambda: EMAWeightAveraging(avg_fn=lambda a, b, n: a), "avg_fn"),
        (lambda: WeightAveraging(device="nowhere"), "device"),
        (lambda: WeightAveraging(use_buffers="yes"), "use_buffers"),
        (lambda: WeightAveraging(momentum=0.1), "momentum"),
    ],
)
def test_invalid_arguments(make, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        make()
