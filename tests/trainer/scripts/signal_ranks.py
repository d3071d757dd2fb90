"""Two ranks train; the last one gets SIGTERM after a given step. Each rank reports where it stopped.

    python signal_ranks.py OUT STEP

Every training step sleeps 20 ms, so that the ranks' agreed check interval (about
``FULMEN_SIGNAL_CHECK_SECONDS`` of training) spans several batches. Every rank writes
``OUT/rank<r>.json``: the global step and batch it stopped at, how many batches it trained and
how many all-reduces the Python side of torch.distributed ran (the gradient all-reduce of DDP
runs in C++ and is not counted).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import fulmen as L  # noqa: E402
from fulmen.callbacks import Callback  # noqa: E402

ALL_REDUCES = [0]
_all_reduce = dist.all_reduce


def counted_all_reduce(*args, **kwargs):
    ALL_REDUCES[0] += 1
    return _all_reduce(*args, **kwargs)


dist.all_reduce = counted_all_reduce


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.batches = 0

    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        self.batches += 1
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SignalAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == trainer.world_size - 1:
            os.kill(os.getpid(), signal.SIGTERM)


class Report(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        report = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "batches": pl_module.batches,
            "all_reduces": ALL_REDUCES[0],
        }
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def main() -> None:
    out, step = sys.argv[1], int(sys.argv[2])
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, default_root_dir=out,
        callbacks=[SignalAt(step), Report(out)], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    data = TensorDataset(torch.randn(200, 4))  # 25 batches of 4 per rank and epoch
    trainer.fit(Model(), DataLoader(data, batch_size=4))


if __name__ == "__main__":
    main()
