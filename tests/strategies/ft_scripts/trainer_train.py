"""The Trainer on strategy='fault_tolerant' (from `fulmen run --replica-groups`), recording each batch as one JSON line.

Env: FT_OUT, FT_EPOCHS, FT_SLEEP, FT_INNER (the strategy inside a group when it has several processes),
FT_MAX_STEPS, FT_EVERY (ModelCheckpoint's every_n_train_steps, 4), FT_RESUME (fit from ``ckpt_path="last"``),
FT_WORKERS (the training DataLoader's num_workers; the loader's counts go into ``loader-<name>.json``),
FT_START_DELAY_<group> (seconds that group sleeps before it starts).
Writes ``steps-<group>.jsonl`` from on_train_batch_end (pid, epoch, committed, samples, global_step) and
``final-<group>.pt``; ModelCheckpoint(save_last=True) writes into ``FT_OUT/checkpoints`` from whichever
group is rank 0 of the quorum. A group of several processes writes ``steps-<group>-<rank>.jsonl`` and
``final-<group>-<rank>.pt`` (the local shards, under FSDP).
"""

import json
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.strategies import FaultTolerantStrategy

out = os.environ["FT_OUT"]
group = int(os.environ["FULMEN_REPLICA_GROUP"])
rank = int(os.environ.get("RANK", "0"))
name = f"{group}-{rank}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else str(group)
pause = float(os.environ.get("FT_SLEEP", "0.05"))
time.sleep(float(os.environ.get(f"FT_START_DELAY_{group}", "0")))


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(100 + group)  # different on purpose: step-0 sync makes them equal
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        self.window: list[int] = []  # the samples of this step's batch
        self.log_file = open(os.path.join(out, f"steps-{name}.jsonl"), "a", buffering=1)  # noqa: SIM115

    def training_step(self, batch, batch_idx):
        x, ids = batch
        self.window += ids.long().tolist()
        return self.net(x).pow(2).mean()

    def on_before_optimizer_step(self, optimizer):
        # Before the commit vote: a group killed between its vote and its record still tells which samples
        # it fed to a step that the others committed.
        pending = {"kind": "pending", "group": group, "rank": rank, "pid": os.getpid(), "samples": self.window,
                   "epoch": self.trainer.current_epoch, "global_step": self.trainer.global_step}  # fmt: skip
        self.log_file.write(json.dumps(pending) + "\n")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        strategy = self.trainer.strategy
        record = {"group": group, "rank": rank, "pid": os.getpid(), "epoch": self.trainer.current_epoch,
                  "batch_idx": batch_idx,
                  "committed": strategy.last_step_committed, "samples": self.window,
                  "global_step": self.trainer.global_step, "participants": strategy._participation[1],
                  "lr": self.trainer.optimizers[0].param_groups[0]["lr"], "time": time.time()}  # fmt: skip
        self.log_file.write(json.dumps(record) + "\n")
        self.window = []
        time.sleep(pause)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": step, "interval": "step"}}


ids = torch.arange(64, dtype=torch.float32)
data = TensorDataset(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), ids)
model = Model()
checkpoints = ModelCheckpoint(
    dirpath=os.path.join(out, "checkpoints"), save_last=True, every_n_train_steps=int(os.environ.get("FT_EVERY", "4"))
)
inner = os.environ.get("FT_INNER")
trainer = L.Trainer(
    accelerator="cpu",
    strategy=FaultTolerantStrategy(inner=inner, timeout=20, quorum_timeout=60) if inner else "fault_tolerant",
    max_epochs=int(os.environ.get("FT_EPOCHS", "3")),
    max_steps=int(os.environ.get("FT_MAX_STEPS", "-1")),
    callbacks=[checkpoints],
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)
workers = int(os.environ.get("FT_WORKERS", "0"))
loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=workers)
trainer.fit(model, loader, ckpt_path="last" if os.environ.get("FT_RESUME") else None)
fed = trainer.train_dataloader
with open(os.path.join(out, f"loader-{name}.json"), "w") as f:
    json.dump({"prefetched": fed.prefetched, "loaded_in_process": fed.loaded_in_process}, f)


def local(state):
    """A DTensor's local shard (FSDP): each rank compares its own part with the same rank in the other group."""
    if hasattr(state, "to_local"):
        return state.to_local()
    return {k: local(v) for k, v in state.items()} if isinstance(state, dict) else state


optimizer = trainer.optimizers[0]
torch.save({"model": local(model.state_dict()), "optimizer": local(optimizer.state_dict()),
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "progress": {"global_step": trainer.global_step, "epoch": trainer.current_epoch}},
           os.path.join(out, f"final-{name}.pt"))  # fmt: skip
