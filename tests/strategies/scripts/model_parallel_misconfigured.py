"""``python model_parallel_misconfigured.py``: ModelParallelStrategy's errors at setup, on one process.

Prints one JSON line per case: the exception type and message.
"""

import json
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from tests.strategies.tp_models import Transformer, parallelize  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen.strategies import ModelParallelStrategy  # noqa: E402


class Net(L.LightningModule):
    def __init__(self, dim_name=None):
        super().__init__()
        self.model = Transformer()
        self.dim_name = dim_name

    def configure_model(self):
        if self.dim_name is not None:
            parallelize(self.model, {"tensor_parallel": self.device_mesh[self.dim_name], "data_parallel": None})

    def training_step(self, batch, batch_idx):
        return self.model(batch[:, :-1]).float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def attempt(name, strategy, module):
    trainer = L.Trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_steps=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    try:
        trainer.fit(module, DataLoader(torch.randint(0, 64, (4, 9)), batch_size=4))
        print(json.dumps({"case": name, "error": None}), flush=True)
    except Exception as err:  # noqa: BLE001 - the test reads what it was
        print(json.dumps({"case": name, "error": type(err).__name__, "message": str(err)}), flush=True)


attempt("sizes", ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1), Net())
attempt("not_parallelised", ModelParallelStrategy(), Net())
attempt("dim_typo", ModelParallelStrategy(), Net(dim_name="tensor_paralel"))
