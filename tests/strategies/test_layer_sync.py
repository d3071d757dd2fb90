"""LayerSync plugins: TorchSyncBatchNorm converts BatchNorm layers (and back); plugins=[...] is
sync_batchnorm=True spelled as a plugin, and a user's own LayerSync is what the strategy applies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fulmen.lite import Lite
from fulmen.plugins import LayerSync, TorchSyncBatchNorm
from fulmen.strategies import select_strategy
from fulmen.utilities.exceptions import MisconfigurationException


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm1d(3)))
    net[1].running_mean += 1.5
    return net


def test_torch_sync_batchnorm_apply_and_revert_keep_the_state():
    net = _net()
    weight = net[1].weight
    synced = TorchSyncBatchNorm().apply(net)
    assert synced is net and isinstance(net[1], nn.SyncBatchNorm) and isinstance(net[2][0], nn.SyncBatchNorm)
    assert torch.equal(net[1].running_mean, torch.full((2,), 1.5)) and net[1].weight is weight
    reverted = TorchSyncBatchNorm().revert(net)
    assert reverted is net and not any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    assert isinstance(net[1], nn.modules.batchnorm._BatchNorm) and net[1].weight is weight
    assert torch.equal(net[1].running_mean, torch.full((2,), 1.5))
    net[1].eval()  # the reverted layer runs in one process (SyncBatchNorm needs a process group to train)
    expected = (torch.ones(1, 2, 3, 3) - 1.5) / torch.sqrt(torch.tensor(1.0) + net[1].eps) * weight.view(1, 2, 1, 1)
    assert torch.allclose(net[1](torch.ones(1, 2, 3, 3)), expected + net[1].bias.view(1, 2, 1, 1))
    single = TorchSyncBatchNorm().apply(nn.BatchNorm1d(4))
    assert isinstance(single, nn.SyncBatchNorm)


class Marking(LayerSync):
    def __init__(self) -> None:
        self.applied: list[nn.Module] = []

    def apply(self, model):
        self.applied.append(model)
        model.marked = True
        return model

    def revert(self, model):
        return model


def test_plugin_reaches_the_strategy_and_decides_the_conversion():
    marking = Marking()
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="ddp", plugins=[marking])
    assert strategy.layer_sync is marking and strategy.world_size == 2
    net = _net()
    assert strategy.convert_sync_batchnorm(net) is net and marking.applied == [net] and net.marked
    default = select_strategy(accelerator="cpu", devices=2, strategy="ddp")
    assert default.layer_sync is None
    converted = default.convert_sync_batchnorm(_net())
    assert isinstance(converted[1], nn.SyncBatchNorm)
    with pytest.raises(MisconfigurationException, match="two LayerSyncs"):
        select_strategy(accelerator="cpu", plugins=[Marking(), TorchSyncBatchNorm()])


def test_one_process_has_nothing_to_synchronise_and_lite_asks_the_plugin():
    marking = Marking()
    lite = Lite(accelerator="cpu", devices=1, plugins=[marking])
    model = lite.setup(_net())
    assert isinstance(model.module[1], nn.BatchNorm2d) and marking.applied == []  # world size 1
