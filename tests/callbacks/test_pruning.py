"""ModelPruning on the real Trainer: which weights go, masks during training, lottery ticket, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from tests.callbacks.resume_helpers import (
    Stop,
    StopAt,
    assert_same_tensors,
    loaders,
    quiet_trainer,
    stop_and_resume,
)
from torch import nn

import fulmen as L
from fulmen.callbacks import Callback, ModelPruning
from fulmen.utilities.exceptions import MisconfigurationException


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.1), nn.Linear(12, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)


def effective(module, name):
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


class Snapshot(Callback):
    """Effective weights at fit start and at every epoch end, before the pruning callback runs."""

    def __init__(self):
        self.at_start, self.at_epoch_end = None, []

    def on_fit_start(self, trainer, pl_module):
        self.at_start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_epoch_end(self, trainer, pl_module):
        layers = pl_module.net
        self.at_epoch_end.append(
            {f"{i}.{n}": effective(layers[i], n).detach().clone() for i in (0, 3) for n in ("weight", "bias")}
        )


def test_global_l1_prunes_the_smallest_current_weights(tmp_path):
    snapshot = Snapshot()
    pruning = ModelPruning(
        "l1_unstructured", amount=0.5, use_lottery_ticket_hypothesis=False, make_pruning_permanent=False
    )
    model = Net()
    quiet_trainer(tmp_path, [snapshot, pruning], max_epochs=1, limit_val_batches=0).fit(model, *loaders())
    before = snapshot.at_epoch_end[0]
    scores = torch.cat([t.abs().flatten() for t in before.values()])
    threshold = scores.kthvalue(len(scores) // 2).values  # global: half of all 6*12+12+12+1 values
    for key, value in before.items():
        i, name = key.split(".")
        mask = getattr(model.net[int(i)], name + "_mask")
        assert torch.equal(mask.bool(), value.abs() > threshold), key
    total = sum(getattr(model.net[i], n + "_mask").numel() for i in (0, 3) for n in ("weight", "bias"))
    zeros = sum(int((getattr(model.net[i], n + "_mask") == 0).sum()) for i in (0, 3) for n in ("weight", "bias"))
    assert zeros == total // 2


def test_masks_hold_during_training_and_become_permanent(tmp_path):
    pruning = ModelPruning(
        "random_unstructured", amount=0.3, use_global_unstructured=False, use_lottery_ticket_hypothesis=False
    )
    model = Net()

    class Check(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:  # pruned at the end of epoch 0; weight decay moves `_orig` only
                layer = pl_module.net[0]
                assert torch.all(effective(layer, "weight")[layer.weight_mask == 0] == 0)
                self.masked = int((layer.weight_mask == 0).sum())

    check = Check()
    quiet_trainer(tmp_path, [pruning, check], max_epochs=2, limit_val_batches=0).fit(model, *loaders())
    assert check.masked == 22  # round(0.3 * 72) after the first pruning
    # made permanent at the end: plain parameters, zeros where the mask was (the second pruning
    # took 30% of the 50 that remained)
    assert not hasattr(model.net[0], "weight_orig") and isinstance(model.net[0].weight, nn.Parameter)
    assert int((model.net[0].weight == 0).sum()) == 22 + 15


def test_lottery_ticket_resets_survivors_to_their_initial_values(tmp_path):
    snapshot = Snapshot()
    pruning = ModelPruning("l1_unstructured", amount=0.4, make_pruning_permanent=False)
    model = Net()
    quiet_trainer(tmp_path, [snapshot, pruning], max_epochs=1, limit_val_batches=0).fit(model, *loaders())
    for i in (0, 3):
        layer = model.net[i]
        kept = layer.weight_mask.bool()
        initial = snapshot.at_start[f"net.{i}.weight"]
        assert torch.equal(layer.weight_orig[kept], initial[kept])
        assert not torch.equal(snapshot.at_epoch_end[0][f"{i}.weight"][kept], initial[kept])  # it had trained


def test_structured_local_pruning_removes_rows(tmp_path):
    pruning = ModelPruning(
        "ln_structured",
        parameters_to_prune=None,
        parameter_names=["weight"],
        use_global_unstructured=False,
        amount=0.5,
        pruning_dim=0,
        pruning_norm=1,
        make_pruning_permanent=False,
        use_lottery_ticket_hypothesis=False,
    )
    model = Net()
    quiet_trainer(tmp_path, [pruning], max_epochs=1, limit_val_batches=0).fit(model, *loaders())
    rows = model.net[0].weight_mask.sum(dim=1)
    assert sorted(rows.tolist()) == [0.0] * 6 + [6.0] * 6


def test_checkpoint_holds_permanent_weights_and_loads_without_pruning(tmp_path):
    path = tmp_path / "mid.ckpt"
    pruning = ModelPruning("l1_unstructured", amount=0.5)
    model = Net()
    with pytest.raises(Stop):
        quiet_trainer(tmp_path, [pruning, StopAt(path, "batch", 10)], limit_val_batches=0).fit(model, *loaders())
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["state_dict"]) == {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}
    assert torch.equal(checkpoint["state_dict"]["net.0.weight"], effective(model.net[0], "weight").detach())
    entry = checkpoint["callbacks"][pruning.state_key]
    assert entry["pruned"] == ["net.0.bias", "net.0.weight", "net.3.bias", "net.3.weight"]
    assert set(entry["original"]) == {"net.0.weight", "net.3.weight", "net.0.bias", "net.3.bias"}
    loaded = Net.load_from_checkpoint(path)
    assert int((loaded.net[0].weight == 0).sum()) == int((model.net[0].weight_mask == 0).sum())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pruning_fn": "l1_unstructured", "amount": lambda epoch: 0.2 * (epoch + 1)},
        {
            "pruning_fn": "random_unstructured",
            "amount": 3,
            "parameter_names": ["weight"],
            "use_global_unstructured": False,
            "resample_parameters": True,
            "make_pruning_permanent": False,
        },
        {"pruning_fn": "l1_unstructured", "amount": 0.3, "prune_on_train_epoch_end": False},
    ],
    ids=["global-l1-lottery", "local-random-resampled", "on-validation"],
)
def test_exact_resume(tmp_path, kwargs):
    def compare(reference, resumed):
        for i in (0, 3):
            a, b = reference.module.net[i], resumed.module.net[i]
            assert hasattr(a, "weight_mask") == hasattr(b, "weight_mask")

    # 8 batches per epoch, validation every 4: epoch 0 ends at step 8, pruning happens at epoch
    # ends (or validations), stops fall before, between and right after prunings; after the
    # validation at step 16 the epoch-end pruning follows with no forward pass in between
    stop_and_resume(
        tmp_path,
        Net,
        lambda: [ModelPruning(**kwargs)],
        stops=[("batch", 10), ("validation", 12), ("epoch", 1), ("validation", 16)],
        compare=compare,
        val_check_interval=4,
        num_sanity_val_steps=0,
    )


def test_custom_pruning_method(tmp_path):
    class EveryOther(torch_prune.BasePruningMethod):
        PRUNING_TYPE = "unstructured"

        def __init__(self, amount):
            self.amount = amount

        def compute_mask(self, t, default_mask):
            mask = default_mask.clone()
            mask.view(-1)[::2] = 0
            return mask

    model = Net()
    quiet_trainer(tmp_path, [ModelPruning(EveryOther, make_pruning_permanent=False)], max_epochs=1).fit(
        model, *loaders()
    )
    assert int((model.net[3].weight_mask == 0).sum()) == 6


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pruning_fn": "l2_magic"}, "pruning_fn"),
        ({"pruning_fn": torch_prune.l1_unstructured}, "pruning_fn"),
        ({"pruning_fn": "ln_structured", "use_global_unstructured": False, "pruning_dim": 0}, "pruning_norm"),
        ({"pruning_fn": "random_structured", "use_global_unstructured": False}, "pruning_dim"),
        ({"pruning_fn": "ln_structured", "pruning_dim": 0, "pruning_norm": 2}, "pruning_fn"),
        ({"pruning_fn": "l1_unstructured", "parameter_names": ["gamma"]}, "parameter_names"),
        ({"pruning_fn": "l1_unstructured", "amount": 1.5}, "amount"),
        ({"pruning_fn": "l1_unstructured", "amount": "half"}, "amount"),
        ({"pruning_fn": "l1_unstructured", "verbose": 3}, "verbose"),
        ({"pruning_fn": "l1_unstructured", "apply_pruning": "yes"}, "apply_pruning"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        ModelPruning(**kwargs)


def test_parameters_to_prune_must_belong_to_the_model(tmp_path):
    stranger = nn.Linear(2, 2)
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(stranger, "weight")])
    with pytest.raises(MisconfigurationException, match="parameters_to_prune"):
        quiet_trainer(tmp_path, [pruning]).fit(Net(), *loaders())
    model = Net()
    only_first = ModelPruning(
        "l1_unstructured", parameters_to_prune=[(model.net[0], "weight")], make_pruning_permanent=False
    )
    quiet_trainer(tmp_path, [only_first], max_epochs=1, limit_val_batches=0).fit(model, *loaders())
    assert hasattr(model.net[0], "weight_mask") and not hasattr(model.net[3], "weight_mask")
    assert_same_tensors(model.net[0].weight_mask.sum(), torch.tensor(36.0))
