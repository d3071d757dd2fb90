"""Trains with the stateful callbacks; can SIGKILL itself at a step, or resume from "last".

    python callbacks_resume_worker.py OUT MODE SET [--kill-at N]

MODE: ``full``, ``kill`` (SIGKILL when global_step reaches N, in on_train_batch_end) or
``resume`` (``ckpt_path="last"``). SET: ``ema-finetune`` (EMAWeightAveraging and
BackboneFinetuning) or ``prune`` (ModelPruning). A finished run writes ``OUT/final.pt``.
"""

import argparse
import os
import signal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fulmen as L
from fulmen.callbacks import BackboneFinetuning, Callback, EMAWeightAveraging, ModelCheckpoint, ModelPruning


class NoisyDataset(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index] + 0.01 * torch.randn(6), self.y[index]


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(16, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.backbone(x)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.head(self.backbone(x)), y))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.01)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.8)]


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("mode", choices=["full", "kill", "resume"])
    parser.add_argument("set", choices=["ema-finetune", "prune"])
    parser.add_argument("--kill-at", type=int, default=-1)
    args = parser.parse_args()

    L.seed_everything(7)
    model = Net()
    if args.set == "ema-finetune":
        callbacks = [EMAWeightAveraging(decay=0.9), BackboneFinetuning(unfreeze_backbone_at_epoch=1)]
    else:
        callbacks = [ModelPruning("l1_unstructured", amount=0.2)]
    callbacks += [
        ModelCheckpoint(dirpath=os.path.join(args.out, "steps"), every_n_train_steps=3, save_top_k=0, save_last=True),
        ModelCheckpoint(dirpath=os.path.join(args.out, "val"), monitor="val_loss", save_last=True),
    ]
    if args.mode == "kill":
        callbacks.insert(0, KillAt(args.kill_at))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, val_check_interval=5, callbacks=callbacks, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=args.out,
    )  # fmt: skip
    train = DataLoader(NoisyDataset(32, 0), batch_size=4, shuffle=True)
    val = DataLoader(NoisyDataset(8, 1), batch_size=4)
    trainer.fit(model, train, val, ckpt_path="last" if args.mode == "resume" else None)
    torch.save(model.state_dict(), os.path.join(args.out, "final.pt"))


if __name__ == "__main__":
    main()
