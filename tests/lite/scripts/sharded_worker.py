"""Run by the sharded-strategy tests: train a few steps, save a full checkpoint, report weights."""

import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Lite
from fulmen.strategies import FSDPStrategy


class Worker(Lite):
    def run(self, out_dir):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        model, optimizer = self.setup(model, optimizer)
        generator = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(32, 8, generator=generator), torch.randn(32, 1, generator=generator))
        loader = self.setup_dataloaders(DataLoader(data, batch_size=4))
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            self.backward(loss)
            optimizer.step()
        path = os.path.join(out_dir, "state.ckpt")
        self.save(path, {"model": model, "optimizer": optimizer, "step": 8})
        if os.path.isdir(path):  # sharded: read back into a fresh setup, then consolidate into one file
            self.check_sharded_round_trip(path, model, optimizer, out_dir)
            from fulmen.checkpointing.consolidation import consolidate_checkpoint

            if self.global_rank == 0:
                consolidate_checkpoint(path, os.path.join(out_dir, "whole.ckpt"))
                os.rename(path, os.path.join(out_dir, "sharded.ckpt"))
                os.rename(os.path.join(out_dir, "whole.ckpt"), path)
            self.barrier()
        if self.global_rank == 0:
            state = torch.load(path, weights_only=True)
            record = {
                "weights": {k: v.flatten().tolist() for k, v in state["model"].items()},
                "optimizer_keys": sorted(state.get("optimizer", {})),
            }
            with open(os.path.join(out_dir, "result.json"), "w") as f:
                json.dump(record, f)

    def check_sharded_round_trip(self, path, model, optimizer, out_dir):
        fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.5)
        fresh, fresh_optimizer = self.setup(fresh, fresh_optimizer)
        remainder = self.load(path, {"model": fresh, "optimizer": fresh_optimizer})
        same_weights = all(
            torch.equal(a.full_tensor(), b.full_tensor()) for a, b in zip(model.parameters(), fresh.parameters())
        )
        moments = [
            torch.equal(optimizer.state[a]["exp_avg"].full_tensor(), fresh_optimizer.state[b]["exp_avg"].full_tensor())
            for a, b in zip(model.parameters(), fresh.parameters())
        ]
        record = {
            "same_weights": same_weights,
            "same_moments": all(moments) and len(moments) == 4,
            "lr": fresh_optimizer.param_groups[0]["lr"],
            "remainder": remainder,
            "files": sorted(os.listdir(path)),
        }
        with open(os.path.join(out_dir, f"round_trip_{self.global_rank}.json"), "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    out_dir, name = sys.argv[1], sys.argv[2]
    strategies = {
        "ddp": "ddp_spawn",
        "ddp_sharded": "ddp_sharded",
        "fsdp": FSDPStrategy(start_method="spawn"),
        "fsdp_grad_op": FSDPStrategy(sharding_strategy="SHARD_GRAD_OP", start_method="spawn"),
        "fsdp_no_shard": FSDPStrategy(sharding_strategy="NO_SHARD", start_method="spawn"),
        "fsdp_sharded_checkpoint": FSDPStrategy(state_dict_type="sharded", start_method="spawn"),
    }
    Worker(accelerator="cpu", devices=2, strategy=strategies[name]).run(out_dir)
