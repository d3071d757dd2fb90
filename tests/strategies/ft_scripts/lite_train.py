"""A Lite loop on strategy='fault_tolerant' that records every step as one JSON line (read by the tests).

Env: FT_OUT (a directory), FT_EPOCHS, FT_SLEEP (seconds per step, so that a test can kill mid-run),
FT_RAISE_GROUP / FT_RAISE_AT (that group raises once it has committed that many steps), FT_TIMEOUT,
FT_QUORUM_TIMEOUT (the strategy's timeouts).
Writes ``steps-<group>.jsonl`` (one line per step: pid, epoch, committed, samples, manager step; and a
``"kind": "pending"`` line with the step's samples before its commit vote) and, at the
end, ``final-<group>.pt`` (weights, optimizer and scheduler state, progress).
"""

import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.strategies import FaultTolerantStrategy

out = os.environ["FT_OUT"]
epochs = int(os.environ.get("FT_EPOCHS", "3"))
pause = float(os.environ.get("FT_SLEEP", "0.05"))
group = int(os.environ["FULMEN_REPLICA_GROUP"])

strategy = FaultTolerantStrategy(
    timeout=float(os.environ.get("FT_TIMEOUT", "20")), quorum_timeout=float(os.environ.get("FT_QUORUM_TIMEOUT", "60"))
)
lite = L.Lite(accelerator="cpu", strategy=strategy)
lite.launch()
torch.manual_seed(100 + group)  # different on purpose: step-0 sync must make them equal
# The 256x256 layer is large enough to be averaged while backward runs; the others after it.
model = nn.Sequential(nn.Linear(4, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
model, optimizer = lite.setup(model, optimizer)
ids = torch.arange(64, dtype=torch.float32)
data = TensorDataset(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), ids)
loader = strategy.exactly_once(DataLoader(data, batch_size=4, shuffle=True))
progress = {"global_step": 0}
strategy.register_replica_state("loop", lambda: dict(progress), progress.update)
strategy.register_replica_state("scheduler", scheduler.state_dict, scheduler.load_state_dict)

log = open(os.path.join(out, f"steps-{group}.jsonl"), "a", buffering=1)
while loader.epoch < epochs:
    for x, sample_ids in loader:
        epoch = loader.epoch
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        lite.backward(loss)
        # Before the commit vote: a group killed between its vote and its record still tells which samples
        # it fed to a step that the others committed.
        pending = {"kind": "pending", "group": group, "pid": os.getpid(), "epoch": epoch,
                   "samples": sample_ids.long().tolist(), "global_step": progress["global_step"]}  # fmt: skip
        log.write(json.dumps(pending) + "\n")
        optimizer.step()
        committed = strategy.last_step_committed
        if committed:
            scheduler.step()
            progress["global_step"] += 1
        if str(group) == os.environ.get("FT_RAISE_GROUP") and progress["global_step"] == int(os.environ["FT_RAISE_AT"]):
            raise RuntimeError(f"group {group} fails on purpose at step {progress['global_step']}")
        record = {
            "group": group,
            "pid": os.getpid(),
            "epoch": epoch,
            "committed": committed,
            "samples": sample_ids.long().tolist(),
            "global_step": progress["global_step"],
            "participants": strategy._participation[1],
            "time": time.time(),
        }
        log.write(json.dumps(record) + "\n")
        time.sleep(pause)
torch.save(
    {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "epoch": loader.epoch,
    },
    os.path.join(out, f"final-{group}.pt"),
)
sys.stdout.flush()
