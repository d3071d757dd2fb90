"""Time to the first resumed training step, from a checkpoint at 5 % and at 90 % of an epoch.

Every sample costs 5 ms to load (``time.sleep`` in ``__getitem__``), 400 samples in batches of 4:
an epoch takes 2 s of loading. fulmen skips the finished samples by index, so both resumes
should take about the same time: one checkpoint load, one batch and the Trainer's set-up
(target: less than 10 % apart). For scale, the same resumes are timed on a loader fulmen cannot
skip by index (a DataLoader subclass), which reads the finished batches again.

    python benchmarks/bench_resume.py [--rounds 5] [--workers 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fulmen as L
from fulmen.callbacks import Callback

SAMPLES, BATCH, SAMPLE_SECONDS = 400, 4, 0.005
BATCHES = SAMPLES // BATCH


class SlowDataset(Dataset):
    """Each sample costs ``delay`` seconds, as reading and decoding a file would."""

    def __init__(self, delay: float) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(SAMPLES, 16, generator=generator)
        self.delay = delay

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return self.x[index]


class ReplayingLoader(DataLoader):
    """A DataLoader subclass: fulmen leaves it as it is and resumes it by reading the finished batches."""


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(16, 1)
        self.first_step_at: float | None = None

    def training_step(self, batch, batch_idx):
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SaveAndStop(Callback):
    def __init__(self, batch: int, path: str) -> None:
        self.batch, self.path = batch, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.batch:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def trainer(root: str, callbacks: list[Callback]) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=root, callbacks=callbacks,
    )  # fmt: skip


def loader(kind: type[DataLoader], delay: float, workers: int) -> DataLoader:
    return kind(SlowDataset(delay), batch_size=BATCH, shuffle=True, num_workers=workers)


def make_checkpoint(root: str, fraction: float, workers: int) -> str:
    path = str(Path(root) / f"at_{int(fraction * 100)}.ckpt")
    L.seed_everything(0)
    trainer(root, [SaveAndStop(round(BATCHES * fraction), path)]).fit(Model(), loader(DataLoader, 0.0, workers))
    return path


class StopAfterFirst(Callback):
    """The rest of the epoch is not what is measured."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = True


def measure(root: str, path: str, kind: type[DataLoader], workers: int) -> float:
    L.seed_everything(0)
    model = Model()
    start = time.perf_counter()
    trainer(root, [StopAfterFirst()]).fit(model, loader(kind, SAMPLE_SECONDS, workers), ckpt_path=path)
    return model.first_step_at - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()):
        paths = {fraction: make_checkpoint(root, fraction, args.workers) for fraction in (0.05, 0.9)}
        measure(root, paths[0.05], DataLoader, args.workers)  # warm-up: imports, first-call caches
        times: dict[tuple[str, float], list[float]] = {}
        for _ in range(args.rounds):  # interleaved, so that drift of a shared machine hits all alike
            for name, kind in (("by index", DataLoader), ("replaying", ReplayingLoader)):
                for fraction, path in paths.items():
                    times.setdefault((name, fraction), []).append(measure(root, path, kind, args.workers))
    print(
        f"\nTime to the first resumed step ({SAMPLES} samples of {SAMPLE_SECONDS * 1000:.0f} ms, batches of "
        f"{BATCH}, {args.workers} workers; median of {args.rounds})"
    )
    ok = True
    for name in ("by index", "replaying"):
        early, late = (statistics.median(times[(name, fraction)]) for fraction in (0.05, 0.9))
        ratio = late / early
        line = f"  {name:<10} at 5 %: {early * 1000:8.1f} ms   at 90 %: {late * 1000:8.1f} ms   ratio {ratio:5.2f}"
        if name == "by index":
            passed = abs(ratio - 1) < 0.10
            ok &= passed
            line += f"   target < 10 % apart  {'OK' if passed else 'MISSED'}"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
