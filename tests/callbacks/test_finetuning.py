"""BaseFinetuning / BackboneFinetuning on the real Trainer: freezing, the unfreeze epoch and its LR, resume."""

from __future__ import annotations

import pytest
import torch
from tests.callbacks.resume_helpers import assert_same_tensors, loaders, quiet_trainer, stop_and_resume
from torch import nn

import fulmen as L
from fulmen.callbacks import BackboneFinetuning, BaseFinetuning, Callback
from fulmen.utilities.exceptions import MisconfigurationException


class WithBackbone(L.LightningModule):
    def __init__(self, scheduler=False):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(16, 1)
        self.scheduler = scheduler

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.05, momentum=0.9)
        if self.scheduler:
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]
        return optimizer


class EpochStart(Callback):
    """Records, after the finetuning callback ran, the groups' learning rates and what is trainable."""

    def __init__(self):
        self.lrs, self.trainable, self.backbone = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])
        self.trainable.append(all(p.requires_grad for p in pl_module.backbone.parameters()))
        self.backbone.append([p.detach().clone() for p in pl_module.backbone.parameters()])


def test_backbone_unfreezes_at_its_epoch_with_its_learning_rate(tmp_path):
    recorder = EpochStart()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 4.0)
    model = WithBackbone()
    with pytest.warns(UserWarning, match="2 parameter"):  # the BatchNorm's, trainable from the start
        quiet_trainer(tmp_path, [finetuning, recorder], max_epochs=4, limit_val_batches=0).fit(model, *loaders())
    # epoch 0 frozen; epoch 1 a group at 0.1 * 0.05; then x4 per epoch, capped at the head's 0.05
    assert recorder.trainable == [False, True, True, True]
    assert recorder.lrs == [[0.05], [0.05, pytest.approx(0.005)], [0.05, pytest.approx(0.02)], [0.05, 0.05]]
    # the Linear weight did not move while frozen, and does once unfrozen (its bias, before a
    # BatchNorm, gets no gradient either way)
    assert torch.equal(recorder.backbone[0][0], recorder.backbone[1][0])
    assert not torch.equal(recorder.backbone[1][0], recorder.backbone[2][0])
    assert finetuning.previous_backbone_lr == 0.05
    state = finetuning.state_dict()
    # the BatchNorm layer was trainable from the start, so it is in the first group already
    assert [g["params"] for g in state["internal_optimizer_metadata"][0]] == [
        ["backbone.1.weight", "backbone.1.bias", "head.weight", "head.bias"],
        ["backbone.0.weight", "backbone.0.bias"],
    ]
    assert state["last_finetuned_epoch"] == 3 and state["frozen_parameters"] == []


@pytest.mark.filterwarnings("ignore:.*already in SGD's parameter groups")
def test_exact_resume(tmp_path):
    def compare(reference, resumed):
        assert reference.callbacks[0].state_dict() == resumed.callbacks[0].state_dict()
        flags = [p.requires_grad for p in reference.module.parameters()]
        assert flags == [p.requires_grad for p in resumed.module.parameters()]
        assert_same_tensors(
            reference.trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            resumed.trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "scheduler",
        )

    # 8 batches per epoch; validation every 3; the backbone joins at epoch 1 (steps 9..16), its
    # learning rate grows at epoch 2 (steps 17..24)
    stop_and_resume(
        tmp_path,
        lambda: WithBackbone(scheduler=True),
        lambda: [BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.5)],
        stops=[("batch", 4), ("batch", 10), ("validation", 14), ("epoch", 1), ("batch", 20)],
        compare=compare,
        val_check_interval=3,
        num_sanity_val_steps=0,
    )


class Halves(BaseFinetuning):
    """Unfreezes `first` at epoch 1 and `second` at epoch 2, each with an explicit learning rate."""

    def freeze_before_training(self, pl_module):
        self.freeze([pl_module.first, pl_module.second], train_bn=False)

    def finetune_function(self, pl_module, epoch, optimizer):
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.first, optimizer, lr=0.01)
            self.unfreeze_and_add_param_group(pl_module.first, optimizer, lr=0.01)  # adds nothing twice
        if epoch == 2:
            self.unfreeze_and_add_param_group(pl_module.second, optimizer, initial_denom_lr=5.0)


class TwoHalves(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = nn.Linear(6, 6)
        self.head = nn.Linear(6, 1)
        with torch.no_grad():  # equal values everywhere: identity, not equality, tells parameters apart
            for p in self.parameters():
                p.fill_(0.1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.second(self.first(x))), y)

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.1)


@pytest.mark.filterwarnings("ignore:.*already in Adam's parameter groups", "ignore:.*no `validation_step`")
def test_custom_finetuning_and_its_resume(tmp_path):
    def compare(reference, resumed):
        groups = resumed.trainer.optimizers[0].param_groups
        assert [g["lr"] for g in groups] == [0.1, 0.01, pytest.approx(0.02)]

    reference = stop_and_resume(
        tmp_path,
        TwoHalves,
        lambda: [Halves()],
        stops=[("batch", 12), ("epoch", 1)],
        compare=compare,
        limit_val_batches=0,
    )
    assert len(reference.trainer.optimizers[0].param_groups) == 3


def test_flatten_filter_and_freeze_helpers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2)))
    assert [type(m).__name__ for m in BaseFinetuning.flatten_modules(model)] == ["Linear", "BatchNorm1d", "Linear"]
    BaseFinetuning.freeze(model, train_bn=False)
    assert not any(p.requires_grad for p in model.parameters())
    assert model[1][0].track_running_stats is False
    BaseFinetuning.make_trainable(model[1])
    assert model[1][0].track_running_stats is True
    assert len(list(BaseFinetuning.filter_params(model, train_bn=False))) == 2  # the inner Linear only
    assert len(list(BaseFinetuning.filter_params(model, requires_grad=False))) == 2  # the outer Linear


def test_needs_a_backbone(tmp_path):
    class NoBackbone(WithBackbone):
        def __init__(self):
            super().__init__()
            del self.backbone
            self.backbone = None

        def forward(self, x):
            return self.head(torch.zeros(len(x), 16))

    with pytest.raises(MisconfigurationException, match="backbone"):
        quiet_trainer(tmp_path, [BackboneFinetuning()]).fit(NoBackbone(), *loaders())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"unfreeze_backbone_at_epoch": -1}, "unfreeze_backbone_at_epoch"),
        ({"lambda_func": 2.0}, "lambda_func"),
        ({"backbone_initial_ratio_lr": 0}, "backbone_initial_ratio_lr"),
        ({"backbone_initial_lr": -0.1}, "backbone_initial_lr"),
        ({"should_align": "yes"}, "should_align"),
        ({"rounding": -2}, "rounding"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        BackboneFinetuning(**kwargs)
