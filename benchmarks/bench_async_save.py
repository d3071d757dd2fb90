"""How long a checkpoint save blocks the training loop: synchronous durable save vs ``async_save=True``.

A model of 4.2 M fp32 parameters trained with Adam: 48 MiB of weights and optimizer state. In
one fit, after the first optimizer step (so Adam's state exists), the same ``Trainer.save_checkpoint``
is timed round by round in three forms:

- ``bare floor``: ``torch.save`` of the model and optimizer state dicts to a temporary file,
  ``fsync``, rename, directory ``fsync``: the least a durable synchronous save can cost;
- ``sync``: ``trainer.save_checkpoint(path)``, durable and atomic;
- ``async (loop blocked)``: ``trainer.save_checkpoint(path, async_save=True)`` until it returns
  (the state copied to CPU memory); the write is waited for afterwards, outside the timing.

The ratio async / sync is the target (<= 0.25). Files go to a temporary folder on the disk of
the working directory (``--dir`` to choose), not to a RAM-backed /tmp where fsync costs nothing.

    python benchmarks/bench_async_save.py [--rounds 7] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _timing import report
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback

FEATURES = 2048  # Linear(2048, 2048): 4.2 M parameters, 16 MiB; Adam's two moments: 32 MiB more


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(FEATURES, FEATURES)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-4)


def bare_save(module: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"state_dict": module.state_dict(), "optimizer": optimizer.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TimeSaves(Callback):
    """At the first batch end: time the three kinds of save, interleaved, then stop the fit."""

    def __init__(self, folder: Path, rounds: int, warmup: int = 2) -> None:
        self.folder, self.rounds, self.warmup = folder, rounds, warmup
        self.times: dict[str, list[float]] = {"sync": [], "async (loop blocked)": [], "bare floor": []}
        self.background: list[float] = []
        self.size = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        strategy, optimizer = trainer.strategy, trainer.optimizers[0]

        def sync() -> None:
            trainer.save_checkpoint(self.folder / "sync.ckpt")

        def asynchronous() -> None:
            trainer.save_checkpoint(self.folder / "async.ckpt", async_save=True)

        def bare() -> None:
            bare_save(pl_module, optimizer, self.folder / "bare.ckpt")

        contenders = {"sync": sync, "async (loop blocked)": asynchronous, "bare floor": bare}
        for index in range(self.warmup + self.rounds):
            order = list(contenders.items())
            if index % 2:
                order.reverse()
            for name, run in order:
                start = time.perf_counter()
                run()
                blocked = time.perf_counter() - start
                strategy.wait_for_checkpoint_saves()  # the next contender starts with an idle disk
                if index >= self.warmup:
                    self.times[name].append(blocked)
                    if run is asynchronous:
                        self.background.append(time.perf_counter() - start)
        self.size = os.path.getsize(self.folder / "sync.ckpt")
        trainer.should_stop = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the temporary folder is made")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, FEATURES)), batch_size=16)
    with tempfile.TemporaryDirectory(prefix=".bench_async_save-", dir=args.dir) as folder:
        timer = TimeSaves(Path(folder), args.rounds)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(Model(), data)
    print(f"checkpoint: {timer.size / 2**20:.1f} MiB (weights + Adam state), {args.rounds} rounds, median times")
    ok = report(
        "Loop blocked by one save (ratio: to the synchronous save)",
        timer.times,
        baseline="sync",
        targets={"async (loop blocked)": 0.25},
    )
    print(f"  {'async write finished':<22} {statistics.median(timer.background) * 1000:9.2f} ms   (in the background)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
