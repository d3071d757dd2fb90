"""Two ranks train; one fails inside ``training_step`` (between its forward and its backward) at a given batch.

    python step_failure.py OUT FAILING_RANK raise|kill BATCH --strategy S
    fulmen run --num-nodes 2 --node-rank R --devices 1 --strategy S ... step_failure.py -- OUT RANK MODE BATCH

The failing rank raises ``RuntimeError`` or SIGKILLs itself while the other rank waits in the
step's collectives (FSDP's gathers and reductions, DDP's gradient all-reduce). Started by
``python`` the script asks for ``devices=2`` and ``--strategy``; started by ``fulmen run``
(``--from-cli``) the command line gives the flags. Every rank writes its pid to
``OUT/pid_<global rank>`` first, so the test can check that no process outlives the run.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import fulmen as L  # noqa: E402


class FailingModel(L.LightningModule):
    def __init__(self, rank: int, mode: str, batch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.rank, self.mode, self.batch = rank, mode, batch

    def training_step(self, batch, batch_idx):
        loss = self.net(batch[0]).pow(2).mean()
        if self.global_rank == self.rank and batch_idx == self.batch:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rank {self.rank} broke on purpose at batch {batch_idx}")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("rank", type=int)
    parser.add_argument("mode", choices=["raise", "kill"])
    parser.add_argument("batch", type=int)
    parser.add_argument("--strategy", default="fsdp")
    parser.add_argument("--from-cli", action="store_true")
    args = parser.parse_args()
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    Path(args.out, f"pid_{rank}").write_text(str(os.getpid()))
    flags = {} if args.from_cli else {"accelerator": "cpu", "devices": 2, "strategy": args.strategy}
    trainer = L.Trainer(
        **flags, max_epochs=20, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=args.out,
    )  # fmt: skip
    data = TensorDataset(torch.randn(64, 8))
    trainer.fit(FailingModel(args.rank, args.mode, args.batch), DataLoader(data, batch_size=4))
    print(f"unreachable: rank {trainer.global_rank} finished", flush=True)


if __name__ == "__main__":
    main()
