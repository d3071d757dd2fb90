"""A raw PyTorch loop under DeepSpeed ZeRO-2 with Lite, on two CPU processes.

    python examples/lite_deepspeed.py            # ZeRO-2: optimizer state and gradients sharded
    python examples/lite_deepspeed.py --offload  # ... and the optimizer state in CPU memory

The loop is the one you would write for DDP: ``lite.setup`` hands back the model and optimizer
wrapped over DeepSpeed's engine, ``lite.backward`` runs the engine's backward, ``optimizer.step()``
its step, ``lite.no_backward_sync`` accumulates gradients, and ``lite.save``/``lite.load`` write
and read a sharded checkpoint directory. Needs ``pip install fulmen[deepspeed]``.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Lite, seed_everything
from fulmen.strategies import DeepSpeedStrategy


def make_data(samples: int = 4096) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 16, generator=generator)
    y = torch.tanh(x @ torch.randn(16, 1, generator=generator) / 4)
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--checkpoint", default="lite_deepspeed.ckpt")
    args = parser.parse_args()

    lite = Lite(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(stage=2, offload_optimizer=args.offload))
    lite.launch()  # starts the second process; the rest of the script runs in both
    seed_everything(42)

    model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)  # on the original optimizer
    model, optimizer = lite.setup(model, optimizer)
    loader = lite.setup_dataloaders(DataLoader(make_data(), batch_size=32, shuffle=True))

    start_epoch = 0
    if os.path.isdir(args.checkpoint):  # resume: DeepSpeed restores its shards, Lite the rest
        rest = lite.load(args.checkpoint, {"model": model, "optimizer": optimizer, "scheduler": scheduler})
        start_epoch = rest["epoch"]
        lite.print(f"resumed from {args.checkpoint} at epoch {start_epoch}")

    for epoch in range(start_epoch, args.epochs):
        total = torch.zeros(())
        for index, (x, y) in enumerate(loader):
            stepping = (index + 1) % args.accumulate == 0
            with lite.no_backward_sync(model, enabled=not stepping):
                loss = nn.functional.mse_loss(model(x), y)
                lite.backward(loss / args.accumulate)
            if stepping:
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
            total += loss.detach()
        mean = lite.all_reduce(total / len(loader))
        lite.print(f"epoch {epoch}: loss {mean.item():.4f}")
        lite.save(args.checkpoint, {"model": model, "optimizer": optimizer, "scheduler": scheduler, "epoch": epoch + 1})


if __name__ == "__main__":
    main()
