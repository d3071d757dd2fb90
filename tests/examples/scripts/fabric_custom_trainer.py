"""A custom trainer on Fabric, written as Lightning's "build your own trainer" example is (imports changed only).

Usage: python fabric_custom_trainer.py OUT_DIR
"""

import json
import sys
from functools import partial

import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.demos import BoringModel, RandomDataset
from fulmen.lite.wrappers import _unwrap_objects
from fulmen.loggers import CSVLogger
from fulmen.utilities.model_helpers import is_overridden


class CountingCallback:
    def __init__(self):
        self.calls = {}

    def _count(self, name, *args):
        self.calls[name] = self.calls.get(name, 0) + 1

    def on_train_epoch_start(self, *args):
        self._count("on_train_epoch_start")

    def on_train_batch_end(self, *args):
        self._count("on_train_batch_end")


class MiniTrainer:
    def __init__(self, out_dir, max_epochs=2):
        self.callback = CountingCallback()
        self.fabric = L.Fabric(
            accelerator="cpu", devices=1, callbacks=[self.callback], loggers=CSVLogger(out_dir, name="mini")
        )
        self.max_epochs = max_epochs
        self.global_step = 0

    def fit(self, model, train_loader, val_loader):
        self.fabric.launch()
        if isinstance(self.fabric.strategy, L.fabric.strategies.fsdp.FSDPStrategy):
            raise NotImplementedError("not for FSDP")
        train_loader, val_loader = self.fabric.setup_dataloaders(train_loader, val_loader)
        [optimizer], [scheduler] = model.configure_optimizers()
        model, optimizer = self.fabric.setup(model, optimizer)
        losses = []
        for epoch in range(self.max_epochs):
            self.fabric.call("on_train_epoch_start")
            for batch_idx, batch in enumerate(train_loader):
                loss = optimizer.step(partial(self.training_step, model, batch, batch_idx))
                optimizer.zero_grad()
                self.fabric.call("on_train_batch_end", loss, batch, batch_idx)
                self.fabric.log("train_loss", loss.item(), step=self.global_step)
                self.global_step += 1
                losses.append(loss.item())
            scheduler.step()
            if is_overridden("validation_step", _unwrap_objects(model)):
                with torch.no_grad():
                    val = [model.validation_step(b, i)["x"].item() for i, b in enumerate(val_loader)]
                self.fabric.log("val_loss", sum(val) / len(val), step=self.global_step)
            else:
                L.fabric.utilities.rank_zero_warn("no validation_step")
        for logger in self.fabric.loggers:
            logger.finalize("success")
        return losses

    def training_step(self, model, batch, batch_idx):
        loss = model.training_step(batch, batch_idx)["loss"]
        self.fabric.backward(loss)
        return loss


def main(out_dir):
    L.seed_everything(1, verbose=False)
    trainer = MiniTrainer(out_dir)
    losses = trainer.fit(
        BoringModel(), DataLoader(RandomDataset(32, 64), batch_size=8), DataLoader(RandomDataset(32, 16), batch_size=8)
    )
    result = {"steps": trainer.global_step, "first": losses[0], "last": losses[-1], "calls": trainer.callback.calls}
    with open(f"{out_dir}/result.json", "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1])
