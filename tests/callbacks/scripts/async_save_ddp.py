"""strategy="ddp" re-runs this script per rank: the same fit with synchronous, then asynchronous, saves.

    python async_save_ddp.py OUT_DIR

Background writes are slowed down, so that rank 0 still writes while both ranks train on. Each
rank records to ``OUT_DIR/rank_<global rank>.json`` how many files it wrote itself, and rank 0
what each folder holds (name: link target or None).
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402
from tests.trainer.helpers import BoringModel, loader, quiet  # noqa: E402

from fulmen import Trainer  # noqa: E402
from fulmen.callbacks import ModelCheckpoint  # noqa: E402
from fulmen.checkpointing import async_writer  # noqa: E402
from fulmen.checkpointing.atomic import atomic_save  # noqa: E402

written = []


def slow(obj, path, storage_options=None):
    time.sleep(0.05)
    atomic_save(obj, path, storage_options)
    written.append(os.path.basename(path))


async_writer.atomic_save = slow


def fit(folder: Path, async_save: bool) -> tuple[Trainer, BoringModel]:
    torch.manual_seed(0)
    model = BoringModel()
    ckpt = ModelCheckpoint(
        dirpath=folder, monitor="train_loss", save_top_k=2, save_last="link", every_n_train_steps=1,
        async_save=async_save,
    )  # fmt: skip
    trainer = Trainer(
        **quiet(max_epochs=2, strategy="ddp", devices=2, accelerator="cpu", enable_checkpointing=True, callbacks=[ckpt])
    )
    trainer.fit(model, loader(64))
    return trainer, model


def tree(folder: Path) -> dict:
    return {
        name: os.path.basename(os.readlink(folder / name)) if os.path.islink(folder / name) else None
        for name in sorted(os.listdir(folder))
    }


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    sync_trainer, sync_model = fit(out_dir / "sync", async_save=False)
    async_trainer, async_model = fit(out_dir / "async", async_save=True)
    record = {
        "rank": async_trainer.global_rank,
        "background_writes": len(written),
        "same_weights": all(torch.equal(a, b) for a, b in zip(sync_model.parameters(), async_model.parameters())),
        "pending_at_end": async_writer.writer().pending,
    }
    if async_trainer.is_global_zero:
        record["trees"] = [tree(out_dir / "sync"), tree(out_dir / "async")]
        last = torch.load(out_dir / "async" / "last.ckpt", weights_only=True)
        record["last_step"] = last["global_step"]
    (out_dir / f"rank_{async_trainer.global_rank}.json").write_text(json.dumps(record))
