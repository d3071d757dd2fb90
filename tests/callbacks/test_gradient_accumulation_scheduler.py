"""GradientAccumulationScheduler on the real Trainer: optimizer steps per epoch follow the schedule."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from fulmen.callbacks.lambda_function import LambdaCallback
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n=8):
    return DataLoader(TensorDataset(torch.ones(n, 2)), batch_size=1)


def trainer(tmp_path, callbacks, max_epochs=4, **kwargs):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


def test_steps_per_epoch_follow_the_schedule(tmp_path):
    steps, factors = [], []
    record = LambdaCallback(
        on_train_epoch_end=lambda trainer, module: (
            steps.append(trainer.global_step),
            factors.append(trainer.accumulate_grad_batches),
        )
    )
    scheduler = GradientAccumulationScheduler({1: 2, 2: 4, 3: 3})
    trainer(tmp_path, [scheduler, record]).fit(Model(), loader())
    assert factors == [1, 2, 4, 3]
    # 8 batches: 8 steps, then 4, then 2, then 3 (the epoch's last batch always steps)
    assert steps == [8, 12, 14, 17]


def test_gradients_are_summed_over_the_window(tmp_path):
    grads = []
    record = LambdaCallback(
        on_before_optimizer_step=lambda trainer, module, optimizer: grads.append(module.layer.bias.grad.item())
    )
    trainer(tmp_path, [GradientAccumulationScheduler({0: 4}), record], max_epochs=1).fit(Model(), loader())
    # d(sum)/d(bias) is 1 per batch; the loss is divided by the factor, so each window's sum is 1
    assert grads == pytest.approx([1.0, 1.0])


def test_lookup():
    scheduler = GradientAccumulationScheduler({5: 2, 10: 8})
    assert scheduler.scheduling == {5: 2, 10: 8, 0: 1}
    assert [scheduler.get_accumulate_grad_batches(e) for e in (0, 4, 5, 9, 10, 99)] == [1, 1, 2, 2, 8, 8]
    assert scheduler.going_to_accumulate_grad_batches()
    assert not GradientAccumulationScheduler({0: 1}).going_to_accumulate_grad_batches()


@pytest.mark.parametrize(
    ("scheduling", "match"),
    [
        ({}, "`scheduling={}`"),
        ([(0, 1)], "`scheduling="),
        ({-1: 2}, "epoch number"),
        ({"1": 2}, "epoch number"),
        ({1: 0}, "accumulation factor"),
        ({1: 2.0}, "accumulation factor"),
    ],
)
def test_invalid_scheduling(scheduling, match):
    with pytest.raises(MisconfigurationException, match=match):
        GradientAccumulationScheduler(scheduling)


@pytest.mark.parametrize(
    ("scheduling", "lightning_words"),
    [({-1: 2}, "Epoch should be an int"), ({1: 0}, "Accumulation factor should be an int")],
)
def test_invalid_scheduling_says_what_lightning_says(scheduling, lightning_words):
    with pytest.raises(MisconfigurationException, match=lightning_words):
        GradientAccumulationScheduler(scheduling)


def test_warns_when_the_module_overrides_the_optimizer_hooks(tmp_path):
    class OwnStep(Model):
        def optimizer_step(self, *args, **kwargs):
            super().optimizer_step(*args, **kwargs)

    t = trainer(tmp_path, [GradientAccumulationScheduler({0: 2})], max_epochs=1)
    with pytest.warns(UserWarning, match="overrides `optimizer_step`.*the hooks will not be called on every batch"):
        t.fit(OwnStep(), loader())


def test_conflicts_with_the_trainer_flag(tmp_path):
    t = trainer(tmp_path, [GradientAccumulationScheduler({1: 2})], accumulate_grad_batches=2)
    expected = "`accumulate_grad_batches` and are using the `Gradient.*accumulate_grad_batches=2"
    with pytest.raises(MisconfigurationException, match=expected):
        t.fit(Model(), loader())


def test_refuses_manual_optimization(tmp_path):
    class Manual(Model):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            pass

    with pytest.raises(RuntimeError, match="is not supported for manual optimization"):
        trainer(tmp_path, [GradientAccumulationScheduler({1: 2})]).fit(Manual(), loader())


def test_reusing_the_trainer_for_a_second_fit(tmp_path):
    scheduler = GradientAccumulationScheduler({1: 2})
    t = trainer(tmp_path, [scheduler], max_epochs=2)
    t.fit(Model(), loader())
    t.fit(Model(), loader())  # the factor it set last time is its own, not a user flag
    assert t.accumulate_grad_batches == 2
