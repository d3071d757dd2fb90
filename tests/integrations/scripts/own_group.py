"""Two processes that create their own gloo process group, then hand it to fulmen Trainers.

    python own_group.py OUT

Each rank writes ``OUT/rank<r>.json``: the error a Trainer whose flags describe one process
raises, and what a Trainer with devices=2 saw when it joined the group and trained.
"""

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def run(rank: int, out: str, port: int) -> None:
    from tests.integrations.ray_jobs import Classifier, loaders

    import fulmen as L

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=20)
    )
    record = {}
    try:
        L.Trainer(accelerator="cpu", strategy="ddp", devices=1, logger=False).fit(Classifier(), loaders()[0])
        record["mismatch"] = "no error"
    except Exception as err:
        record["mismatch"] = f"{type(err).__name__}: {err}"
    L.seed_everything(0)
    model = Classifier()
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loaders()[0])
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(2)]
    dist.all_gather(gathered, weights)
    record.update(
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        local_rank=trainer.local_rank,
        batches=trainer.num_training_batches,
        launcher=repr(trainer.strategy.launcher),
        ranks_agree=torch.equal(gathered[0], gathered[1]),
    )
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    from fulmen.strategies.environments.lightning import find_free_network_port

    mp.spawn(run, args=(sys.argv[1], find_free_network_port()), nprocs=2)
