"""The transformer language model as Lightning's basic example writes it (imports changed only), on local text.

Usage: python language_model.py DATA_DIR OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, random_split

import fulmen as L
from fulmen.demos import Transformer, WikiText2


class LanguageModel(L.LightningModule):
    def __init__(self, vocab_size):
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size, ninp=32, nhead=2, nhid=32, nlayers=1, dropout=0.0)

    def training_step(self, batch, batch_idx):
        input, target = batch
        loss = F.nll_loss(self.model(input, target), target.view(-1))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        input, target = batch
        self.log("val_loss", F.nll_loss(self.model(input, target), target.view(-1)), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def main(data_dir, out_dir):
    L.seed_everything(42)
    dataset = WikiText2(data_dir=Path(data_dir), block_size=8)
    n = len(dataset)
    train, val = random_split(dataset, [n - 10, 10])
    model = LanguageModel(vocab_size=dataset.vocab_size)
    trainer = L.Trainer(
        default_root_dir=out_dir, gradient_clip_val=0.25, max_epochs=3, accelerator="cpu", enable_progress_bar=False
    )
    trainer.fit(model, DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=5))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    Path(out_dir, "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
