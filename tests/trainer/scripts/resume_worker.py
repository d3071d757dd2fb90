"""Trains a small dropout MLP with shuffled data; can kill itself at a step, or resume from "last".

    python resume_worker.py OUT MODE [--kill-at N] [--workers W] [--strategy S]

MODE: ``full`` trains without interruption; ``kill`` SIGKILLs the process (rank 1 with two
processes) when global_step reaches N; ``resume`` continues from ``ckpt_path="last"``. Every
mode that finishes writes ``OUT/final.pt`` with the weights.
"""

import argparse
import os
import signal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fulmen as L
from fulmen.callbacks import Callback, ModelCheckpoint
from fulmen.strategies import FSDPStrategy, ModelParallelStrategy


class NoisyDataset(Dataset):
    """Draws from torch's generator in __getitem__, as random augmentations do."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=generator)
        self.y = torch.randn(n, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index] + 0.01 * torch.randn(8), self.y[index]


class DropoutRegressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=7)}


class TensorParallelRegressor(DropoutRegressor):
    """The same network, split column- then row-wise over the tensor-parallel ranks (ModelParallelStrategy)."""

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(
            self.net, self.device_mesh["tensor_parallel"], {"0": ColwiseParallel(), "3": RowwiseParallel()}
        )
        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


class KillAt(Callback):
    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("mode", choices=["full", "kill", "resume"])
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--strategy", default="auto")
    args = parser.parse_args()
    devices = 2 if args.strategy != "auto" else 1

    L.seed_everything(1234, workers=True)
    model = TensorParallelRegressor() if args.strategy == "model_parallel" else DropoutRegressor()
    # Fresh workers each epoch (persistent_workers=False): their generators are seeded from the
    # main process when an epoch starts, which a resumed epoch reproduces.
    train = DataLoader(NoisyDataset(64 * devices), shuffle=True, batch_size=4, num_workers=args.workers)
    val = DataLoader(NoisyDataset(16), batch_size=4)
    callbacks = [
        # A checkpoint every 3 steps (taken in on_train_batch_end) and one after each validation
        # (taken in on_validation_end, in the middle of the epoch): "last" is the newer of the two.
        ModelCheckpoint(dirpath=os.path.join(args.out, "steps"), every_n_train_steps=3, save_top_k=0, save_last=True),
        ModelCheckpoint(dirpath=os.path.join(args.out, "val"), monitor="val_loss", save_top_k=1, save_last=True),
    ]
    if args.mode == "kill":
        callbacks.insert(0, KillAt(args.kill_at, rank=devices - 1))
    strategy = args.strategy
    if strategy.startswith("fsdp"):  # fsdp_full / fsdp_sharded: the checkpoint kind
        strategy = FSDPStrategy(state_dict_type=strategy.split("_")[1])
    elif strategy == "model_parallel":  # tensor parallel over both processes, DCP checkpoints
        strategy = ModelParallelStrategy()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=3,
        val_check_interval=5,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=args.out,
    )
    trainer.fit(model, train, val, ckpt_path="last" if args.mode == "resume" else None)
    # Sharded parameters (FSDP) are gathered whole; rank zero writes them.
    final = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    if trainer.is_global_zero:
        torch.save(final, os.path.join(args.out, "final.pt"))
    print(f"finished at global_step={trainer.global_step}")


if __name__ == "__main__":
    main()
