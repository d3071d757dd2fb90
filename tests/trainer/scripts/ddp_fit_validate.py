"""strategy="ddp" re-runs this script per rank: fit, then validate, in every rank."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.trainer.helpers import BoringModel, loader, quiet  # noqa: E402

from fulmen import Trainer  # noqa: E402

if __name__ == "__main__":
    model = BoringModel()
    trainer = Trainer(**quiet(max_epochs=2, strategy="ddp", devices=2, accelerator="cpu"))
    trainer.fit(model, loader(64))
    results = trainer.validate(model, loader(16), verbose=False)
    weight = model.layer.weight[0, 0].item()
    print(
        f"rank={trainer.global_rank} world={trainer.world_size} steps={trainer.global_step} weight={weight!r} "
        f"val={results[0]['val_loss']:.6f}",
        flush=True,
    )
