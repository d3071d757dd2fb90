"""LambdaCallback on the real Trainer: each function runs at its hook with the hook's arguments."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.callback import CALLBACK_HOOKS
from fulmen.callbacks.lambda_function import LambdaCallback
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_hooks_run_with_their_arguments(tmp_path):
    calls = []
    model = Model()
    callback = LambdaCallback(
        setup=lambda trainer, module, stage: calls.append(("setup", stage, module is model)),
        on_train_epoch_start=lambda trainer, module: calls.append(("epoch", trainer.current_epoch)),
        on_train_batch_end=lambda trainer, module, outputs, batch, batch_idx: calls.append(
            ("batch", batch_idx, sorted(outputs))
        ),
        on_validation_end=lambda trainer, module: calls.append(("val", trainer.sanity_checking)),
        on_fit_end=None,  # None leaves a hook alone
    )
    t = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    loader = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)
    t.fit(model, loader, loader)
    assert calls == [
        ("setup", "fit", True),
        ("val", True),
        ("epoch", 0),
        ("batch", 0, ["loss"]),
        ("batch", 1, ["loss"]),
        ("val", False),
        ("epoch", 1),
        ("batch", 0, ["loss"]),
        ("batch", 1, ["loss"]),
        ("val", False),
    ]
    assert "on_fit_end" not in vars(callback)


def test_unknown_hook_names_list_the_valid_ones():
    with pytest.raises(MisconfigurationException) as err:
        LambdaCallback(on_epoch_end=print, on_train_start=print, on_banana=print)
    message = str(err.value)
    assert "'on_banana', 'on_epoch_end'" in message
    assert "on_train_start'" not in message.split("Valid names")[0]
    for name in CALLBACK_HOOKS:
        assert name in message.split("Valid names")[1]


def test_a_hook_must_be_callable():
    with pytest.raises(MisconfigurationException, match="`on_train_start=3`"):
        LambdaCallback(on_train_start=3)
