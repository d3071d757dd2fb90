"""RichProgressBar and RichModelSummary on the real Trainer, drawing into a rich console on a string buffer."""

from __future__ import annotations

import io
import re
import sys

import pytest
import torch
from tests.callbacks.resume_helpers import loaders, stop_and_resume
from torch import nn

import fulmen as L
from fulmen.callbacks import ModelSummary, RichModelSummary, RichProgressBar, TQDMProgressBar
from fulmen.callbacks.rich_progress import RichProgressBarTheme
from fulmen.utilities.exceptions import MisconfigurationException


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def console(buffer):
    return {"file": buffer, "force_terminal": True, "width": 160, "color_system": None}


def trainer(tmp_path, callbacks, **flags):
    defaults = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    defaults.update(flags)
    return L.Trainer(**defaults)


class CountingBar(RichProgressBar):
    """Counts how often the metrics are read (each read moves values off the device)."""

    min_interval = 0.0
    reads = 0

    def get_metrics(self, trainer, pl_module):
        self.reads += 1
        return super().get_metrics(trainer, pl_module)


def test_bar_draws_fit_validate_test_predict(tmp_path):
    buffer = io.StringIO()
    bar = RichProgressBar(console_kwargs=console(buffer), leave=True)
    t = trainer(tmp_path, [bar], enable_model_summary=False, num_sanity_val_steps=1)
    assert t.progress_bar_callback is bar
    assert not any(isinstance(cb, TQDMProgressBar) for cb in t.callbacks)
    model = Net()
    t.fit(model, *loaders())
    t.validate(model, loaders()[1])
    t.test(model, loaders()[1])
    t.predict(model, loaders()[1])
    text = buffer.getvalue()
    for expected in ("Sanity Checking", "Epoch 0", "Epoch 1", "8/8", "train_loss:", "val_loss:", "Validation", "2/2"):
        assert expected in text, expected
    assert "Testing" in text and "Predicting" in text
    assert bar.progress is None  # every live display was closed


def test_metrics_are_read_only_when_the_bar_redraws(tmp_path):
    bar = CountingBar(refresh_rate=4, console_kwargs=console(io.StringIO()))
    trainer(tmp_path, [bar], enable_model_summary=False, limit_val_batches=0).fit(Net(), *loaders())
    # per epoch of 8 batches: batches 4 and 8, and the epoch end
    assert bar.reads == 2 * 3


def test_refresh_rate_zero_draws_nothing(tmp_path):
    buffer = io.StringIO()
    bar = RichProgressBar(refresh_rate=0, console_kwargs=console(buffer))
    trainer(tmp_path, [bar], enable_model_summary=False).fit(Net(), *loaders())
    assert buffer.getvalue() == "" and bar.progress is None


def test_bar_does_not_disturb_exact_resume(tmp_path):
    stop_and_resume(
        tmp_path,
        Net,
        lambda: [RichProgressBar(console_kwargs=console(io.StringIO()))],
        stops=[("batch", 5), ("validation", 12)],
        enable_progress_bar=True,
        val_check_interval=4,
    )


def test_rich_model_summary(tmp_path):
    buffer = io.StringIO()
    summary = RichModelSummary(max_depth=2, console_kwargs=console(buffer))
    t = trainer(tmp_path, [summary], enable_progress_bar=False, max_epochs=1, limit_val_batches=0)
    assert [cb for cb in t.callbacks if isinstance(cb, ModelSummary)] == [summary]
    t.fit(Net(), *loaders())
    text = buffer.getvalue()
    for expected in ("Name", "body.0", "Linear", "head", "Trainable params", "Total params", "Modules in train mode"):
        assert expected in text, expected
    assert "65" in text  # 6*8+8 + 8*1+1 parameters


def test_missing_rich_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fulmen\[rich\]'"):
        RichProgressBar()
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fulmen\[rich\]'"):
        RichModelSummary()


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: RichProgressBar(refresh_rate=-1), "refresh_rate"),
        (lambda: RichProgressBar(leave="yes"), "leave"),
        (lambda: RichProgressBar(theme={"metrics": "bold"}), "theme"),
        (lambda: RichProgressBar(console_kwargs=["file"]), "console_kwargs"),
        (lambda: RichModelSummary(max_depth=-2), "max_depth"),
    ],
)
def test_invalid_arguments(make, name):
    with pytest.raises(MisconfigurationException, match=f"`{name}="):
        make()


def test_theme_is_used(tmp_path):
    buffer = io.StringIO()
    theme = RichProgressBarTheme(metrics_format=".1e", metrics_text_delimiter=" | ")
    bar = RichProgressBar(theme=theme, console_kwargs=console(buffer))
    trainer(tmp_path, [bar], enable_model_summary=False, max_epochs=1, limit_val_batches=0).fit(Net(), *loaders())
    assert re.search(r"train_loss: \d\.\de[+-]\d\d", buffer.getvalue())
