"""The Trainer computes exactly what a raw PyTorch loop computes: same per-step losses, and
bit-equal (``torch.equal``) final weights, on one process and on two (``ddp_spawn`` on CPU)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Callback, LightningModule, Trainer, seed_everything
from tests.trainer.helpers import quiet


class Regression(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return make_optimizer(self.net)


def make_optimizer(net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)


class LossRecorder(Callback):
    """Keeps rank 0's per-step losses; its state travels back from spawned processes."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].clone())

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = state_dict["losses"]


def dataset(samples: int = 64) -> TensorDataset:
    generator = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(samples, 32, generator=generator), torch.randn(samples, 2, generator=generator))


def raw_loop(net: nn.Module, batches_per_step: list[list[tuple]], accumulate: int = 1) -> list[torch.Tensor]:
    """The loop a user writes: per optimizer step, one batch per process, gradients averaged."""
    optimizer = make_optimizer(net)
    losses = []
    for rank_batches in batches_per_step:
        grads = []
        for x, y in rank_batches:
            net.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(net(x), y) / accumulate
            loss.backward()
            grads.append([p.grad.clone() for p in net.parameters()])
            if len(grads) == 1:  # rank 0's loss, as the Trainer's rank 0 reports it
                losses.append(loss.detach())
        for p, *rank_grads in zip(net.parameters(), *grads):
            p.grad = rank_grads[0] if len(rank_grads) == 1 else sum(rank_grads) / len(rank_grads)
        optimizer.step()
    return losses


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_one_process_matches_a_raw_loop_bit_for_bit():
    seed_everything(0)
    model = Regression()
    reference = copy.deepcopy(model.net)
    loader = DataLoader(dataset(), batch_size=8)
    recorder = LossRecorder()
    Trainer(**quiet(callbacks=[recorder], max_epochs=3)).fit(model, loader)

    batches = [[batch] for _ in range(3) for batch in DataLoader(dataset(), batch_size=8)]
    raw_losses = raw_loop(reference, batches)
    assert torch.equal(torch.stack(recorder.losses), torch.stack(raw_losses))
    assert_same_weights(model.net, reference)


def test_gradient_accumulation_matches_a_raw_loop_bit_for_bit():
    model = Regression()
    reference = copy.deepcopy(model.net)
    recorder = LossRecorder()
    Trainer(**quiet(callbacks=[recorder], max_epochs=1, accumulate_grad_batches=2)).fit(
        model, DataLoader(dataset(), batch_size=8)
    )

    optimizer = make_optimizer(reference)
    raw_losses = []
    for index, (x, y) in enumerate(DataLoader(dataset(), batch_size=8)):
        loss = nn.functional.mse_loss(reference(x), y) / 2
        loss.backward()
        raw_losses.append(loss.detach())
        if index % 2 == 1:
            optimizer.step()
            optimizer.zero_grad()
    assert torch.equal(torch.stack(recorder.losses), torch.stack(raw_losses))
    assert_same_weights(model.net, reference)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_match_a_raw_loop_with_averaged_gradients(monkeypatch):
    monkeypatch.setenv("FULMEN_DIST_TIMEOUT", "30")
    seed_everything(0)
    model = Regression()
    reference = copy.deepcopy(model.net)
    recorder = LossRecorder()
    trainer = Trainer(**quiet(callbacks=[recorder], max_epochs=2, strategy="ddp_spawn", devices=2, accelerator="cpu"))
    trainer.fit(model, DataLoader(dataset(), batch_size=8))
    assert trainer.global_step == 8  # 32 samples per rank: 4 steps per epoch

    # DistributedSampler without shuffling: rank r takes samples r, r + 2, r + 4, ...
    data = dataset()
    shards = [torch.arange(rank, 64, 2) for rank in range(2)]
    steps = []
    for _ in range(2):
        for step in range(4):
            steps.append([data[shard[step * 8 : (step + 1) * 8]] for shard in shards])
    raw_losses = raw_loop(reference, steps)
    assert torch.equal(torch.stack(recorder.losses), torch.stack(raw_losses))
    assert_same_weights(model.net, reference)
    assert trainer.callback_metrics["train_loss"].shape == ()
