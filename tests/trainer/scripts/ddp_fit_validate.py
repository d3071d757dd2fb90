"""strategy="ddp" re-runs this script per rank: fit, then validate, in every rank.

    python ddp_fit_validate.py OUT_DIR

Each rank writes what it saw to ``OUT_DIR/rank_<global rank>.json``: the ranks share one stdout,
where their lines can interleave.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.trainer.helpers import BoringModel, loader, quiet  # noqa: E402

from fulmen import Trainer  # noqa: E402

if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    model = BoringModel()
    trainer = Trainer(**quiet(max_epochs=2, strategy="ddp", devices=2, accelerator="cpu"))
    trainer.fit(model, loader(64))
    results = trainer.validate(model, loader(16), verbose=False)
    record = {
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "steps": trainer.global_step,
        "weight": model.layer.weight[0, 0].item(),
        "val": results[0]["val_loss"],
    }
    (out_dir / f"rank_{trainer.global_rank}.json").write_text(json.dumps(record))
