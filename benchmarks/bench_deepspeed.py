"""DeepSpeed ZeRO-2 on two CPU processes: fulmen against a hand-written DeepSpeed engine loop, in one run.

- step time: blocks of ``--steps`` training steps of the same MLP, fulmen Lite and the raw engine
  loop interleaved round by round (paired median ratio, see _timing.py); the Trainer's steps
  are paired with raw blocks run from a callback between its own blocks.
- checkpoints: ``lite.save``/``lite.load`` (a sharded directory written aside, fsynced, published
  by an atomic rename, weights-only loading) against ``engine.save_checkpoint``/``load_checkpoint``.

Targets: step time <= 1.03x, save and load <= 1.10x the raw engine. Needs deepspeed.

    python benchmarks/bench_deepspeed.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_times, report  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen import Lite  # noqa: E402
from fulmen.callbacks import Callback  # noqa: E402
from fulmen.strategies import DeepSpeedStrategy  # noqa: E402


def build(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 1),
    )  # fmt: skip


class Regression(L.LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = build(width)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-4)


class PairWithRaw(Callback):
    """Every ``steps`` Trainer steps, time them, then run and time a block of raw engine steps."""

    def __init__(self, steps: int, raw_block) -> None:
        self.steps, self.raw_block = steps, raw_block
        self.trainer_times: list[float] = []
        self.raw_times: list[float] = []
        self.mark = 0.0

    def on_train_start(self, trainer, pl_module):
        self.mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % self.steps:
            return
        self.trainer_times.append(time.perf_counter() - self.mark)
        start = time.perf_counter()
        self.raw_block()
        self.raw_times.append(time.perf_counter() - start)
        self.mark = time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--save-rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds, save_rounds = (3, 2) if args.quick else (args.rounds, args.save_rounds)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the raw loop imports deepspeed before fulmen does
    lite = Lite(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(stage=2))
    lite.launch()
    torch.set_num_threads(1)  # two processes on the same cores
    import deepspeed

    generator = torch.Generator().manual_seed(lite.global_rank)
    x = torch.randn(args.batch_size, args.width, generator=generator)
    y = torch.randn(args.batch_size, 1, generator=generator)

    # The hand-written loop, with the very config fulmen hands to DeepSpeed.
    raw_model = build(args.width)
    config = lite.strategy._full_config()
    engine, *_ = deepspeed.initialize(
        model=raw_model, optimizer=torch.optim.Adam(raw_model.parameters(), lr=1e-4), config=config
    )

    def raw_block() -> None:
        for _ in range(args.steps):
            loss = nn.functional.mse_loss(engine(x), y)
            engine.backward(loss)
            engine.step()

    model = build(args.width)
    model, optimizer = lite.setup(model, torch.optim.Adam(model.parameters(), lr=1e-4))

    def lite_block() -> None:
        for _ in range(args.steps):
            loss = nn.functional.mse_loss(model(x), y)
            lite.backward(loss)
            optimizer.step()
            optimizer.zero_grad()

    times = interleaved_times({"DeepSpeed engine": raw_block, "fulmen Lite": lite_block}, rounds=rounds)
    ok = True
    if lite.is_global_zero:
        ok &= report(
            f"ZeRO-2, 2 processes, MLP width {args.width}: {args.steps} steps, median of {rounds}",
            times,
            "DeepSpeed engine",
            {"fulmen Lite": 1.03},
        )

    # The Trainer's own loop, paired block by block with raw engine blocks.
    pairing = PairWithRaw(args.steps, raw_block)
    blocks = rounds + 2  # one epoch holds them all: no epoch boundary inside a timed block
    dataset = torch.utils.data.TensorDataset(x.repeat(blocks * args.steps, 1), y.repeat(blocks * args.steps, 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DeepSpeedStrategy(stage=2),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[pairing],
        use_distributed_sampler=False,
    )
    trainer.fit(Regression(args.width), loader)
    if lite.is_global_zero:
        paired = {"DeepSpeed engine": pairing.raw_times[2:], "fulmen Trainer": pairing.trainer_times[2:]}
        ok &= report(
            f"the Trainer's loop against the engine's, {args.steps} steps, median of {len(paired['fulmen Trainer'])}",
            paired,
            "DeepSpeed engine",
            {"fulmen Trainer": 1.03},
        )

    # Checkpoints: the same engine state, written and read by DeepSpeed and by fulmen.
    root = lite.broadcast(tempfile.mkdtemp(prefix="bench_deepspeed_", dir=args.dir) if lite.is_global_zero else None)
    ds_dir, fulmen_path = os.path.join(root, "deepspeed"), os.path.join(root, "fulmen.ckpt")
    state = {"model": model, "optimizer": optimizer}

    def ds_save() -> None:
        engine.save_checkpoint(ds_dir, tag="bench")
        lite.barrier()

    def ds_load() -> None:
        engine.load_checkpoint(ds_dir, tag="bench")
        lite.barrier()

    def fulmen_save(sync: bool) -> None:
        lite.strategy.sync_files = sync
        lite.save(fulmen_path, state)

    saves = interleaved_times(
        {
            "DeepSpeed save": ds_save,
            "fulmen save": lambda: fulmen_save(sync=True),
            "fulmen, sync_files=False": lambda: fulmen_save(sync=False),
        },
        rounds=save_rounds,
        warmup=1,
    )
    loads = interleaved_times(
        {"DeepSpeed load": ds_load, "fulmen load": lambda: lite.load(fulmen_path, state)}, rounds=save_rounds, warmup=1
    )
    if lite.is_global_zero:
        size = sum(f.stat().st_size for f in Path(fulmen_path).rglob("*") if f.is_file()) / 2**20
        # DeepSpeed writes without fsync; fulmen fsyncs every shard before publishing, unless told not to.
        targets = {"fulmen save": 1.10, "fulmen, sync_files=False": 1.10}
        ok &= report(f"sharded save, {size:.0f} MiB on disk", saves, "DeepSpeed save", targets)
        ok &= report("sharded load", loads, "DeepSpeed load", {"fulmen load": 1.10})
        print("\nall targets met" if ok else "\nsome targets missed")
        shutil.rmtree(root, ignore_errors=True)
    lite.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
