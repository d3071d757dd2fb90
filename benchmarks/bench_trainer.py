"""Trainer.fit against the identical raw PyTorch loop, interleaved in one run; prints median ratios.

Targets on the tiny Linear(32, 2) model (where per-step overhead shows): the default Trainer,
with ``self.log`` every step, <= 1.25x raw; ``barebones=True`` <= 1.10x. On a compute-bound MLP
every mode <= 1.01x. When Lightning is installed in the same environment its ratios are printed
beside fulmen's (fulmen never imports it otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_times, report  # noqa: E402

import fulmen  # noqa: E402


def tiny() -> nn.Module:
    return nn.Linear(32, 2)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2))


def make_loader(features: int, samples: int, batch_size: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, features, generator=generator)
    data = TensorDataset(inputs, torch.randn(samples, 2, generator=generator))
    return DataLoader(data, batch_size=batch_size)


def raw_fit(build, loader: DataLoader) -> None:
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()


def module_class(base: type, log: bool):
    class Regressor(base):
        def __init__(self, build) -> None:
            super().__init__()
            self.net = build()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            if log:  # barebones forbids self.log, as it does in Lightning
                self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    return Regressor


def framework_fit(framework, build, loader: DataLoader, root: str, barebones: bool) -> None:
    module = module_class(framework.LightningModule, log=not barebones)(build)
    flags = {"barebones": True} if barebones else {"default_root_dir": root}
    trainer = framework.Trainer(accelerator="cpu", devices=1, max_epochs=1, **flags)
    # The bar and summary still draw (into a buffer), so their cost is measured, not the terminal's.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(module, loader)


def compare(name: str, build, features: int, samples: int, batch_size: int, rounds: int, targets: dict) -> bool:
    loader = make_loader(features, samples, batch_size)
    root = tempfile.mkdtemp(prefix="fulmen-bench-")
    contenders = {
        "raw PyTorch": lambda: raw_fit(build, loader),
        "fulmen default": lambda: framework_fit(fulmen, build, loader, root, barebones=False),
        "fulmen barebones": lambda: framework_fit(fulmen, build, loader, root, barebones=True),
    }
    if importlib.util.find_spec("lightning") is not None:
        import lightning

        contenders["lightning default"] = lambda: framework_fit(lightning, build, loader, root, barebones=False)
        contenders["lightning barebones"] = lambda: framework_fit(lightning, build, loader, root, barebones=True)
    times = interleaved_times(contenders, rounds=rounds)
    return report(f"{name}: Trainer.fit of one epoch, median of {rounds}", times, "raw PyTorch", targets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    ok = compare("tiny Linear(32, 2)", tiny, 32, 8192, 16, rounds, {"fulmen default": 1.25, "fulmen barebones": 1.10})
    ok &= compare(
        "compute-bound MLP",
        mlp,
        512,
        16384,
        256,
        max(rounds // 2, 3),
        {"fulmen default": 1.01, "fulmen barebones": 1.01},
    )
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
