"""Per-step cost of watching for signals under DDP: the Trainer against raw PyTorch DDP, in the same processes.

Two CPU processes (gloo on loopback) train a tiny Linear(32, 2), where per-step overhead shows.
Contenders, interleaved round by round:

- ``raw DDP``: the loop a user writes with ``DistributedDataParallel``;
- ``fulmen, check every step``: ``FULMEN_SIGNAL_CHECK_SECONDS=0``, the ranks all-reduce the
  "signal received" flag after every batch (what fulmen did before);
- ``fulmen, agreed interval``: the default, the flag travels at batch counts every rank agreed on
  (about once a second).

Each prints its median seconds per step and its ratio to raw DDP from the same round.

    python benchmarks/bench_ddp_signals.py [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from _timing import print_ratios, two_rank_times
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def loader(steps: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    samples = steps * 8
    data = TensorDataset(torch.randn(samples, 32, generator=generator), torch.randn(samples, 2, generator=generator))
    return DataLoader(data, batch_size=8)


def median_step(stamps: list[float]) -> float:
    deltas = [b - a for a, b in zip(stamps, stamps[1:])][5:]  # the first steps warm up
    return statistics.median(deltas)


def raw_ddp(steps: int) -> float:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = loader(steps).dataset
    shard = torch.utils.data.DistributedSampler(data, shuffle=False)
    stamps = []
    for x, y in DataLoader(data, batch_size=8, sampler=shard):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return median_step(stamps)


def fulmen_fit(steps: int, check_seconds: str | None) -> float:
    import fulmen as L
    from fulmen.callbacks import Callback

    class Stamps(Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.stamps.append(time.perf_counter())

    class Regressor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(32, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    if check_seconds is None:
        os.environ.pop("FULMEN_SIGNAL_CHECK_SECONDS", None)
    else:
        os.environ["FULMEN_SIGNAL_CHECK_SECONDS"] = check_seconds
    stamps = Stamps()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, callbacks=[stamps], logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(Regressor(), loader(steps))
    return median_step(stamps.stamps)


def worker(steps: int, rounds: int, out: str) -> None:
    """One rank (started by torchrun): every contender per round, in the same process group."""
    warnings.filterwarnings("ignore")
    runs = {
        "raw DDP": lambda: raw_ddp(steps),
        "fulmen, check every step": lambda: fulmen_fit(steps, "0"),
        "fulmen, agreed interval": lambda: fulmen_fit(steps, None),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        fulmen_fit(20, None)  # joins the process group (it outlives the fit) and warms up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(rounds):
        order = list(runs.items()) if round_index % 2 == 0 else list(reversed(runs.items()))
        for name, run in order:
            dist.barrier()
            with contextlib.redirect_stdout(io.StringIO()):
                times[name].append(run())
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.steps, args.rounds, args.worker)
        return 0
    times = two_rank_times(__file__, "--steps", str(args.steps), "--rounds", str(args.rounds))
    print(f"\nPer-step time under DDP, 2 CPU processes, tiny Linear(32, 2) ({args.steps} steps, {args.rounds} rounds)")
    print_ratios(times, "raw DDP", 1e6, "us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
