"""The GPU check: ``make gpu-check`` (``python benchmarks/bench_gpu.py --tests``), under 8 minutes.

1. ``--tests``: runs every test in ``tests/gpu`` (16-mixed with gradient scaling, bf16-mixed,
   placement and non-blocking transfers, asynchronous saves of CUDA tensors, DeepSpeed and FSDP on
   one GPU, device stats) and counts the outcomes.
2. A bf16-mixed step benchmark: ``Trainer.fit`` (barebones) against the identical raw loop with
   ``torch.autocast(dtype=torch.bfloat16)``, same model, same batches already on the GPU,
   interleaved rounds; the median per-step ratio. Goal: <= 1.05x.

Prints one short table. Without CUDA it says so and exits 0 (CPU-only CI never runs it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import fulmen as L  # noqa: E402

STEPS, WIDTH, BATCH = 60, 2048, 256
SKIP = 10  # steps before the clock starts, in both loops: kernels chosen, allocator warm


def run_tests() -> tuple[str, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "tests/gpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=360,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-400:]
    if result.returncode != 0:
        print(result.stdout[-6000:], result.stderr[-2000:], sep="\n")
    return summary, time.perf_counter() - start


def model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(WIDTH, WIDTH), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, 1))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * BATCH, WIDTH, generator=generator)
    y = torch.randn(STEPS * BATCH, 1, generator=generator)
    return [(x[i : i + BATCH].cuda(), y[i : i + BATCH].cuda()) for i in range(0, len(x), BATCH)]


class Module(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x).float(), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


def raw_loop(data) -> float:
    net = model().cuda()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    for index, (x, y) in enumerate(data):
        if index == SKIP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(net(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (len(data) - SKIP)


class _Clock(L.Callback):
    """Starts at the same step as the raw loop's clock and stops after the last step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == SKIP:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == STEPS - 1:
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start


def trainer_loop(data) -> float:
    clock = _Clock()
    trainer = L.Trainer(
        accelerator="cuda", devices=1, precision="bf16-mixed", max_epochs=1, barebones=True, callbacks=[clock]
    )
    trainer.fit(Module(model()), DataLoader(_Listed(data), batch_size=None))
    return clock.seconds / (len(data) - SKIP)


class _Listed(torch.utils.data.Dataset):
    """The batches as they are (already on the GPU): both loops read the same tensors."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


def benchmark(rounds: int) -> tuple[float, float, float]:
    data = batches()
    raw_loop(data)
    trainer_loop(data)  # warm-up: kernels, allocator, autocast caches
    raw, fulmen_times = [], []
    for index in range(rounds):
        pair = (raw_loop, trainer_loop) if index % 2 == 0 else (trainer_loop, raw_loop)
        for run in pair:
            (raw if run is raw_loop else fulmen_times).append(run(data))
    ratio = statistics.median(f / r for f, r in zip(fulmen_times, raw))
    return statistics.median(raw) * 1000, statistics.median(fulmen_times) * 1000, ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", action="store_true", help="run tests/gpu first")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to run (tests/gpu skip themselves).")
        return 0
    rows = [("device", torch.cuda.get_device_name(0)), ("torch", torch.__version__)]
    failed = False
    if args.tests:
        summary, seconds = run_tests()
        rows.append(("tests/gpu", f"{summary} ({seconds:.0f} s)"))
        failed = "failed" in summary or "error" in summary
    raw_ms, trainer_ms, ratio = benchmark(args.rounds)
    rows += [
        (f"raw bf16 step (MLP {WIDTH}x4, batch {BATCH})", f"{raw_ms:.2f} ms"),
        ("Trainer bf16-mixed step (barebones)", f"{trainer_ms:.2f} ms"),
        ("Trainer / raw (median of rounds)", f"{ratio:.3f}x  goal <= 1.05x  {'OK' if ratio <= 1.05 else 'MISSED'}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nfulmen gpu-check")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
