"""Checkpoints cross between Lightning and fulmen: a file Lightning 2.6 wrote loads and resumes here.

The fixture was written by Lightning itself (fixtures/make_lightning_checkpoint.py). The other
direction (Lightning's ``load_from_checkpoint`` on a fulmen file) needs Lightning installed, which
fulmen never depends on; the key it requires is checked in test_trainer_compat.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L

FIXTURES = Path(__file__).parent / "fixtures"


class LightningNet(L.LightningModule):
    """The fixture's model, with only the import line changed."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.a = torch.nn.Linear(4, hidden)
        self.b = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.b(self.a(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_a_lightning_checkpoint_loads_with_its_hyperparameters_and_weights():
    model = LightningNet.load_from_checkpoint(FIXTURES / "lightning_2_6.ckpt")
    expected = torch.load(FIXTURES / "lightning_2_6_weights.pt", weights_only=True)
    assert model.hparams.hidden == 6
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in expected.items())


def test_fit_resumes_from_a_lightning_checkpoint():
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model = LightningNet(hidden=6)
    trainer.fit(model, DataLoader(data, batch_size=8), ckpt_path=str(FIXTURES / "lightning_2_6.ckpt"))
    assert trainer.current_epoch == 3 and trainer.global_step == 12  # 2 epochs from the file, 1 here
