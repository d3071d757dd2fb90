"""Sends itself a signal at a given step; the Trainer must checkpoint, stop cleanly, and resume.

    python signal_worker.py ROOT SIGNAL STEP [--devices N] [--max-epochs E]

SIGNAL is TERM, USR1 or NONE. With two processes the last rank receives it.
"""

import argparse
import os
import signal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SignalAt(Callback):
    def __init__(self, signum, step, rank):
        self.signum, self.step, self.rank = signum, step, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.signum and trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("signal", choices=["TERM", "USR1", "NONE"])
    parser.add_argument("step", type=int)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=5)
    args = parser.parse_args()
    signum = None if args.signal == "NONE" else getattr(signal, f"SIG{args.signal}")
    L.seed_everything(0)
    data = TensorDataset(torch.randn(32 * args.devices, 4), torch.randn(32 * args.devices, 1))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp_spawn" if args.devices > 1 else "auto",
        max_epochs=args.max_epochs,
        default_root_dir=args.root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[SignalAt(signum, args.step, rank=args.devices - 1)],
    )
    trainer.fit(Model(), DataLoader(data, batch_size=4))
    print(f"STOPPED global_step={trainer.global_step} ckpt_path={trainer.ckpt_path}", flush=True)


if __name__ == "__main__":
    main()
