"""Lite against the identical raw PyTorch loop, interleaved in one run; prints median ratios.

Targets: Lite <= 1.03x raw on the tiny Linear(32, 2) model (where per-step overhead shows),
and on a compute-bound MLP (where it must vanish).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_times, report  # noqa: E402

from fulmen import Lite  # noqa: E402


def tiny_model() -> nn.Module:
    return nn.Linear(32, 2)


def mlp_model() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2))


def make_loader(features: int, samples: int, batch_size: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, features, generator=generator)
    data = TensorDataset(inputs, torch.randn(samples, 2, generator=generator))
    return DataLoader(data, batch_size=batch_size)


def raw_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> None:
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()


def lite_epoch(lite: Lite, model: nn.Module, optimizer: torch.optim.Optimizer, loader) -> None:
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        lite.backward(loss)
        optimizer.step()


def compare(name: str, build, features: int, samples: int, batch_size: int, rounds: int, target: float) -> bool:
    torch.manual_seed(0)
    raw_model = build()
    raw_opt = torch.optim.SGD(raw_model.parameters(), lr=1e-3)
    raw_loader = make_loader(features, samples, batch_size)

    lite = Lite(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    lite_model = build()
    lite_model, lite_opt = lite.setup(lite_model, torch.optim.SGD(lite_model.parameters(), lr=1e-3))
    lite_loader = lite.setup_dataloaders(make_loader(features, samples, batch_size))

    times = interleaved_times(
        {
            "raw PyTorch": lambda: raw_epoch(raw_model, raw_opt, raw_loader),
            "fulmen Lite": lambda: lite_epoch(lite, lite_model, lite_opt, lite_loader),
        },
        rounds=rounds,
    )
    return report(f"{name}: one epoch, median of {rounds}", times, "raw PyTorch", {"fulmen Lite": target})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    torch.set_num_threads(1)
    ok = compare("tiny Linear(32, 2)", tiny_model, 32, 4096, 16, rounds, target=1.03)
    ok &= compare("compute-bound MLP", mlp_model, 512, 2048, 256, max(rounds // 3, 3), target=1.03)
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
