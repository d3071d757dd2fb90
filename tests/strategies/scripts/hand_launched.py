"""One rank of a job started by hand (two shells, a scheduler's script, torchrun without elastic variables).

Usage: python hand_launched.py OUT_DIR trainer|lite DEVICES
The caller sets LOCAL_RANK, RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Writes rank<RANK>.json:
what the strategy saw, the final weights, and whether this process started any of its own.
"""

import json
import os
import sys

import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.strategies.launchers import subprocess_script


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data():
    return torch.arange(64, dtype=torch.float32).view(16, 4) / 64


def run_trainer(devices):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Model()
    trainer.fit(model, DataLoader(data(), batch_size=2))
    strategy = trainer.strategy
    return model.layer, strategy, trainer.global_step


def run_lite(devices):
    lite = L.Fabric(accelerator="cpu", devices=devices, strategy="ddp")
    lite.launch()
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    model, optimizer = lite.setup(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    loader = lite.setup_dataloaders(DataLoader(data(), batch_size=2))
    steps = 0
    for batch in loader:
        lite.backward(model(batch).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    return layer, lite.strategy, steps


def main(out_dir, front, devices):
    torch.manual_seed(0)
    devices = devices if devices == "auto" else int(devices)
    layer, strategy, steps = (run_trainer if front == "trainer" else run_lite)(devices)
    report = {
        "global_rank": strategy.global_rank,
        "local_rank": strategy.local_rank,
        "world_size": strategy.world_size,
        "launcher": type(strategy.launcher).__name__ if strategy.launcher is not None else None,
        "started_children": subprocess_script._children is not None,
        "steps": steps,
        "weight": [round(float(v), 6) for v in layer.weight.detach().flatten()],
    }
    with open(os.path.join(out_dir, f"rank{os.environ['RANK']}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
