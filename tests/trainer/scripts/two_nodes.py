"""One rank of a two-node job on one machine: trains a shuffled epoch and checkpoints; reports what it saw.

    fulmen run --num-nodes 2 --node-rank R --devices 1 --strategy ddp ... two_nodes.py -- OUT
    SLURM_* variables for 2 nodes ... python two_nodes.py OUT --flags

Started by ``fulmen run`` the Trainer gets its flags from the command line; with ``--flags`` it
passes ``num_nodes=2, devices=1, strategy="ddp"`` itself (as a SLURM job script does). Every rank
writes ``OUT/rank<global rank>.json``: node rank, global and local rank, world size, the sample
indices it trained on and the environment class; rank 0 also writes ``OUT/last.ckpt``.
"""

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import fulmen as L  # noqa: E402
from fulmen.callbacks import Callback  # noqa: E402

SAMPLES, BATCH = 24, 4


class Indexed(Dataset):
    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int):
        return index, torch.full((4,), float(index))


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        indices, x = batch
        self.seen += indices.tolist()
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.001)


class Report(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        strategy = trainer.strategy
        report = {
            "node_rank": trainer.node_rank,
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "indices": pl_module.seen,
            "environment": type(strategy.cluster_environment).__name__,
            "weight": pl_module.net.weight.detach().flatten().tolist(),
        }
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def main() -> None:
    out = sys.argv[1]
    flags = {"num_nodes": 2, "devices": 1, "strategy": "ddp", "accelerator": "cpu"} if "--flags" in sys.argv else {}
    L.seed_everything(3)
    trainer = L.Trainer(
        **flags, max_epochs=1, callbacks=[Report(out)], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(Model(), DataLoader(Indexed(), batch_size=BATCH, shuffle=True))
    trainer.save_checkpoint(os.path.join(out, "last.ckpt"))


if __name__ == "__main__":
    main()
