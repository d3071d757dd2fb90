"""``python fsdp_fit_validate.py OUT``: Trainer + FSDP on 2 CPU processes, fit with validation.

Each rank writes OUT/rank_N.json.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from tests.trainer.helpers import BoringModel, loader  # noqa: E402

from fulmen import Trainer  # noqa: E402


class Counts(BoringModel):
    validation_batches = 0

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.validation_batches += 1
        return super().validation_step(batch, batch_idx)

    def configure_optimizers(self):
        # FSDP rebuilds this optimizer over its shards: the scheduler must follow it.
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        halve = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": halve, "interval": "step"}}


if __name__ == "__main__":
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="fsdp", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
    )  # fmt: skip
    model = Counts()
    trainer.fit(model, loader(32), loader(16))
    result = {
        "global_step": trainer.global_step,
        "validation_batches": model.validation_batches,
        "val_loss": float(trainer.callback_metrics["val_loss"]),
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
    }
    with open(os.path.join(sys.argv[1], f"rank_{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)
