"""Run by the multi-process Lite tests: every rank records what it saw in ``OUT/rank_N.json``."""

import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Lite


class Worker(Lite):
    def run(self, out_dir, mode):
        if mode == "crash" and self.global_rank == 1:
            self.barrier()
            raise ValueError("rank one broke on purpose")
        if mode == "stuck" and self.global_rank == 1:
            time.sleep(600)
        if mode in ("crash", "stuck"):
            self.barrier()
            self.barrier()
            return "unreachable"

        record = {"rank": self.global_rank, "world_size": self.world_size}
        dataset = TensorDataset(torch.arange(16, dtype=torch.float32).unsqueeze(1).repeat(1, 4))
        loader = self.setup_dataloaders(DataLoader(dataset, batch_size=2, shuffle=False))
        record["seen"] = [int(v) for (x,) in loader for v in x[:, 0]]
        shuffled = self.setup_dataloaders(DataLoader(dataset, batch_size=2, shuffle=True))
        record["shuffled"] = [int(v) for (x,) in shuffled for v in x[:, 0]]

        torch.manual_seed(0)
        layer = nn.Linear(4, 1)
        model, optimizer = self.setup(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
        x = torch.full((2, 4), float(self.global_rank + 1))
        self.backward(model(x).sum())
        record["grad_synced"] = model.module.weight.grad.flatten().tolist()
        optimizer.zero_grad()
        with self.no_backward_sync(model):
            self.backward(model(x).sum())
        record["grad_unsynced"] = model.module.weight.grad.flatten().tolist()

        record["gather"] = self.all_gather(torch.tensor([self.global_rank, 10 + self.global_rank])).tolist()
        uneven = self.all_gather(torch.arange(self.global_rank + 1))
        record["gather_uneven"] = [t.tolist() for t in uneven]
        value = torch.tensor(float(self.global_rank + 1))
        record["sum"] = self.all_reduce(value, reduce_op="sum").item()
        record["mean"] = self.all_reduce(value, reduce_op="mean").item()
        record["max"] = self.all_reduce(value, reduce_op="max").item()
        record["broadcast"] = self.broadcast({"from": self.global_rank, "payload": [1, 2, 3]}, src=1)
        start = time.monotonic()
        if self.global_rank == 0:
            time.sleep(1.0)
        self.barrier()
        record["barrier_wait"] = time.monotonic() - start
        with open(os.path.join(out_dir, f"rank_{self.global_rank}.json"), "w") as f:
            json.dump(record, f)
        return self.global_rank


if __name__ == "__main__":
    out_dir, strategy, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    result = Worker(accelerator="cpu", devices=2, strategy=strategy).run(out_dir, mode)
    print(f"RESULT {result}")
