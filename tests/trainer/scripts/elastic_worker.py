"""Trains one epoch of shuffled, indexed samples; stops with a checkpoint mid-epoch, or resumes from it.

    python elastic_worker.py OUT first|resume --devices N [--strategy S] [--stop-after B] [--workers W]

``first`` trains from scratch and, after ``B`` batches on every rank, saves ``OUT/mid.ckpt`` and
stops. ``resume`` continues from ``OUT/mid.ckpt`` to the end of the epoch, on however many
processes it is given. Every rank writes ``OUT/<phase>_rank<r>.json``: its rank, the world size
and the sample indices it trained on, in order.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import fulmen as L  # noqa: E402
from fulmen.callbacks import Callback  # noqa: E402

SAMPLES, BATCH = 48, 4


class Indexed(Dataset):
    """Sample ``i`` is ``(i, features)``: the training step sees which samples it got."""

    def __init__(self) -> None:
        self.x = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int):
        return index, self.x[index] + 0.01 * torch.randn(4)


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        indices, x = batch
        self.seen += indices.tolist()
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SaveAndStop(Callback):
    def __init__(self, after: int, path: str) -> None:
        self.after, self.path = after, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.after:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


class Report(Callback):
    def __init__(self, out: str, phase: str) -> None:
        self.out, self.phase = out, phase

    def on_train_end(self, trainer, pl_module):
        report = {
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "indices": pl_module.seen,
            "epoch": trainer.current_epoch,
        }
        Path(self.out, f"{self.phase}_rank{trainer.global_rank}.json").write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("phase", choices=["first", "resume"])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--stop-after", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    checkpoint = os.path.join(args.out, "mid.ckpt")
    callbacks = [Report(args.out, args.phase)]
    if args.phase == "first":
        callbacks.append(SaveAndStop(args.stop_after, checkpoint))
    L.seed_everything(7)
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy, max_epochs=1, callbacks=callbacks,
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=args.out,
    )  # fmt: skip
    loader = DataLoader(Indexed(), batch_size=BATCH, shuffle=True, num_workers=args.workers)
    trainer.fit(Model(), loader, ckpt_path=checkpoint if args.phase == "resume" else None)


if __name__ == "__main__":
    main()
