"""A Fabric-style script run by ``fulmen run model`` on two processes; each rank writes ``OUT/rank_N.json``.

It uses the Fabric 2.x names a migrating user keeps: all_gather on collections, rank_zero_first,
log with loggers from the constructor, callbacks with call, init_module, save(filter=) and a
strategy name with find_unused_parameters (the flag comes from the command line).
"""

import json
import os
import sys
import time

import torch
from torch import nn

from fulmen import Lite
from fulmen.loggers import CSVLogger


class Recorder:
    """A user's logger: fulmen's loggers write on rank zero only, this one records every rank."""

    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append([metrics, step])


class EpochEnd:
    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, loss, epoch):
        self.seen.append([loss, epoch])


class TwoHeads(nn.Module):
    """Only ``used`` takes part in the loss: DDP needs find_unused_parameters=True for ``unused``."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 1)
        self.unused = nn.Linear(4, 1)

    def forward(self, x):
        return self.used(x)


out_dir = sys.argv[1]
recorder, callback = Recorder(), EpochEnd()
csv = CSVLogger(out_dir, name="logs", version=0)
lite = Lite(accelerator="cpu", loggers=[csv, recorder], callbacks=[callback])
rank = lite.global_rank
record = {"rank": rank, "world_size": lite.world_size, "strategy": type(lite.strategy).__name__}
record["ddp_kwargs"] = getattr(lite.strategy, "ddp_kwargs", None)

# all_gather keeps the structure: a list stays a list, each tensor gains a leading dim of 2.
losses = [torch.tensor([1.0 * rank, 10.0 * rank]) for _ in range(3)]
gathered = lite.all_gather(losses)
record["list_type"] = type(gathered).__name__
record["list_shapes"] = [list(t.shape) for t in gathered]
record["list_values"] = [t.tolist() for t in gathered]
as_dict = lite.all_gather({"loss": torch.tensor(float(rank)), "count": 5, "pair": (torch.tensor([rank]),)})
record["dict"] = {
    "loss": as_dict["loss"].tolist(),
    "count": as_dict["count"].tolist(),
    "pair_type": type(as_dict["pair"]).__name__,
    "pair": as_dict["pair"][0].tolist(),
}

# rank_zero_first: rank 0 prepares a file; rank 1 enters only once it exists.
marker = os.path.join(out_dir, "prepared.txt")
with lite.rank_zero_first():
    if rank == 0:
        time.sleep(0.5)
        with open(marker, "w") as f:
            f.write("ready")
    record["marker_seen"] = os.path.exists(marker)

with lite.init_module():
    model = TwoHeads()
record["init_device"] = str(model.used.weight.device)
model, optimizer = lite.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
for step in range(2):  # a second step fails without find_unused_parameters=True
    loss = model(torch.ones(2, 4) * (rank + 1)).sum()
    optimizer.zero_grad()
    lite.backward(loss)
    optimizer.step()
    lite.log("loss", loss, step=step)
    lite.call("on_train_epoch_end", loss=loss.item(), epoch=step)
lite.log_dict({"final": torch.tensor(1.5), "rank_sum": lite.all_reduce(rank, reduce_op="sum")}, step=2)
lite.logger.finalize("success")
record["recorder"] = recorder.calls
record["callback"] = callback.seen

lite.save(
    os.path.join(out_dir, "ckpt.pt"), {"model": model, "step": 2}, filter={"model": lambda k, v: k.startswith("used.")}
)
loaded = lite.load(os.path.join(out_dir, "ckpt.pt"))
record["saved_keys"] = sorted(loaded["model"])

with open(os.path.join(out_dir, f"rank_{rank}.json"), "w") as f:
    json.dump(record, f)
