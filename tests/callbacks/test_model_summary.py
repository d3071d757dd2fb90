"""ModelSummary and summarize(): the numbers equal the module's real parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.model_summary import ModelSummary, human_readable_count, summarize
from fulmen.utilities.exceptions import MisconfigurationException


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)
        self.frozen = nn.Linear(8, 3)
        self.frozen.requires_grad_(False)
        self.norm = nn.BatchNorm1d(8).eval()

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        return self(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_rows_and_totals_match_the_module():
    net = Net()
    summary = summarize(net, max_depth=1)
    assert summary.layer_names == ["encoder", "head", "frozen", "norm"]
    assert summary.layer_types == ["Sequential", "Linear", "Linear", "BatchNorm1d"]
    for row in summary:
        layer = getattr(net, row.name)
        assert row.params == sum(p.numel() for p in layer.parameters())
        assert row.trainable_params == sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert summary.param_nums == [40 + 72, 18, 27, 16]
    assert summary.total_parameters == sum(p.numel() for p in net.parameters()) == 173
    assert summary.trainable_parameters == 173 - 27
    assert summary.non_trainable_parameters == 27
    assert summary.model_size == pytest.approx(173 * 4 / 1e6)
    assert summary[3].mode == "eval" and summary[0].mode == "train"
    assert (summary.training_modules, summary.eval_modules) == (6, 1)


def test_depth():
    net = Net()
    assert len(summarize(net, 0)) == 0
    deep = summarize(net, -1)
    assert deep.layer_names == ["encoder", "encoder.0", "encoder.1", "encoder.2", "head", "frozen", "norm"]
    assert deep.param_nums[1:4] == [40, 0, 72]
    assert summarize(net, 2).layer_names == deep.layer_names


def test_shared_and_lazy_parameters():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = self.a  # the same module twice
            self.lazy = nn.LazyLinear(5)

    summary = summarize(Shared(), -1)
    assert summary.layer_names == ["a", "lazy"]  # a shared module appears once
    assert summary.total_parameters == 12  # the lazy layer counts 0 until its first forward


def test_table_text():
    text = str(summarize(Net()))
    lines = text.splitlines()
    assert lines[0].split("|")[1:] == [" Name    ", " Type        ", " Params ", " Mode"]
    assert "1 | head    | Linear      | 18     | train" in text
    assert "146       Trainable params" in text
    assert "27        Non-trainable params" in text
    assert "173       Total params" in text
    assert "0.001     Total estimated model params size (MB)" in text


def test_human_readable_count():
    assert [human_readable_count(n) for n in (0, 999, 1000, 12_345, 2_500_000, 7_100_000_000, 3 * 10**12)] == [
        "0", "999", "1.0 K", "12.3 K", "2.5 M", "7.1 B", "3.0 T"
    ]  # fmt: skip


def fit(tmp_path, callbacks, **kwargs):
    t = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )
    t.fit(Net(), DataLoader(TensorDataset(torch.ones(2, 4)), batch_size=2))
    return t


def test_printed_at_fit_start(tmp_path, capsys):
    fit(tmp_path, [ModelSummary(max_depth=-1)])
    out = capsys.readouterr().out
    assert "encoder.2 | Linear" in out
    assert "173       Total params" in out


def test_default_callback_and_depth_zero(tmp_path, capsys):
    t = fit(tmp_path, [])
    assert any(isinstance(cb, ModelSummary) for cb in t.callbacks)
    assert "Total params" in capsys.readouterr().out
    fit(tmp_path, [ModelSummary(max_depth=0)])
    assert "Total params" not in capsys.readouterr().out


def test_invalid_depth():
    with pytest.raises(MisconfigurationException, match="`max_depth=-2`"):
        ModelSummary(max_depth=-2)
    with pytest.raises(MisconfigurationException, match="`max_depth=1.5`"):
        summarize(nn.Linear(1, 1), 1.5)
