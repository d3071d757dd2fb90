"""The training loop (``trainer/loops/fit.py``): batches a loader leaves out, and what hooks see then."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from fulmen import Trainer
from tests.trainer.helpers import BoringModel, RandomDataset, quiet


class SkipsEvenBatches(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[Any] = []
        self.steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.steps += 1
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.outputs.append(outputs)


def test_a_none_batch_is_skipped_with_one_warning():
    calls = iter(range(100))

    def collate(items):
        return None if next(calls) % 2 == 0 else default_collate(items)

    model = SkipsEvenBatches()
    trainer = Trainer(**quiet(max_epochs=1))
    with pytest.warns(UserWarning, match="train_dataloader yielded None") as record:
        trainer.fit(model, DataLoader(RandomDataset(8), batch_size=2, collate_fn=collate))
    assert sum("yielded None" in str(w.message) for w in record) == 1
    assert model.steps == 2 and trainer.global_step == 2
    assert [o is None for o in model.outputs] == [True, False, True, False]
    assert all(isinstance(o["loss"], torch.Tensor) for o in model.outputs if o is not None)
