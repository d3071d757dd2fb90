"""A raw PyTorch loop converted to Lite: the changed lines are marked ``# Lite``.

Runs on the CPU in a few seconds:

    python examples/lite_migration.py                      # one process
    fulmen run examples/lite_migration.py --devices=2 --strategy=ddp --precision=bf16-mixed
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Lite, seed_everything  # Lite


def make_data(samples: int = 2048) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 16, generator=generator)
    true_weight = torch.randn(16, 1, generator=generator)
    y = (x @ true_weight > 0).float()
    return TensorDataset(x, y)


def train(epochs: int, lr: float) -> float:
    lite = Lite()  # Lite: flags come from `fulmen run` or the defaults (one CPU process)
    seed_everything(42)

    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model, optimizer = lite.setup(model, optimizer)  # Lite: instead of model.to(device)

    loader = DataLoader(make_data(), batch_size=64, shuffle=True)
    loader = lite.setup_dataloaders(loader)  # Lite: shards data between processes, moves batches

    accuracy = 0.0
    for epoch in range(epochs):
        model.train()
        correct = torch.zeros((), device=lite.device)
        seen = torch.zeros((), device=lite.device)
        for x, y in loader:  # no more x.to(device)
            optimizer.zero_grad()
            logits = model(x)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
            lite.backward(loss)  # Lite: instead of loss.backward()
            optimizer.step()
            correct += ((logits > 0).float() == y).sum()
            seen += y.numel()
        totals = lite.all_reduce(torch.stack([correct, seen]), reduce_op="sum")  # Lite: over all processes
        accuracy = (totals[0] / totals[1]).item()
        lite.print(f"epoch {epoch}: loss {loss.item():.4f}  train accuracy {accuracy:.3f}")  # Lite: rank 0 prints

    lite.save("lite_migration.ckpt", {"model": model, "optimizer": optimizer, "epoch": epochs})  # Lite
    lite.print("saved lite_migration.ckpt")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    train(args.epochs, args.lr)
