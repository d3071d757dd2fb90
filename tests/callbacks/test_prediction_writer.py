"""BasePredictionWriter on the real Trainer: files on disk, batch indices, intervals."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.prediction_writer import BasePredictionWriter
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return batch[0] * 10 + dataloader_idx


class FileWriter(BasePredictionWriter):
    def __init__(self, folder, write_interval):
        super().__init__(write_interval)
        self.folder = folder

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        torch.save(
            {"prediction": prediction, "indices": batch_indices},
            self.folder / f"batch_{trainer.global_rank}_{dataloader_idx}_{batch_idx}.pt",
        )

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        torch.save({"predictions": predictions, "indices": batch_indices}, self.folder / "epoch.pt")


def loader(n=10, batch_size=4, shuffle=False):
    return DataLoader(TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1)), batch_size, shuffle=shuffle)


def predict(tmp_path, writer, dataloaders, return_predictions=False):
    t = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[writer],
    )
    return t.predict(Model(), dataloaders, return_predictions=return_predictions)


def test_batch_interval_writes_a_file_per_batch(tmp_path):
    out = predict(tmp_path, FileWriter(tmp_path, "batch"), loader())
    assert out is None
    files = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert files == ["batch_0_0_0.pt", "batch_0_0_1.pt", "batch_0_0_2.pt"]
    last = torch.load(tmp_path / "batch_0_0_2.pt")
    assert last["indices"] == [8, 9]
    torch.testing.assert_close(last["prediction"], torch.tensor([[80.0], [90.0]]))


def test_epoch_interval_writes_everything_once(tmp_path):
    predict(tmp_path, FileWriter(tmp_path, "epoch"), loader())
    assert [p.name for p in tmp_path.glob("*.pt")] == ["epoch.pt"]
    saved = torch.load(tmp_path / "epoch.pt")
    assert saved["indices"] == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]]
    torch.testing.assert_close(torch.cat(saved["predictions"]).squeeze(1), torch.arange(10.0) * 10)


def test_batch_and_epoch_with_two_dataloaders(tmp_path):
    predict(tmp_path, FileWriter(tmp_path, "batch_and_epoch"), [loader(4, 2), loader(3, 2)])
    names = sorted(p.name for p in tmp_path.glob("batch_*.pt"))
    assert names == ["batch_0_0_0.pt", "batch_0_0_1.pt", "batch_0_1_0.pt", "batch_0_1_1.pt"]
    saved = torch.load(tmp_path / "epoch.pt")
    assert saved["indices"] == [[[0, 1], [2, 3]], [[0, 1], [2]]]
    assert len(saved["predictions"]) == 2  # one list per dataloader
    torch.testing.assert_close(saved["predictions"][1][1], torch.tensor([[21.0]]))  # 2 * 10 + dataloader 1


def test_shuffled_loader_gives_no_indices(tmp_path):
    with pytest.warns(UserWarning, match="batch_indices` is None"):
        predict(tmp_path, FileWriter(tmp_path, "batch"), loader(shuffle=True))
    assert torch.load(tmp_path / "batch_0_0_0.pt")["indices"] is None


def test_predictions_are_still_returned(tmp_path):
    out = predict(tmp_path, FileWriter(tmp_path, "epoch"), loader(4), return_predictions=True)
    assert len(out) == 1


def test_missing_override_says_which_method(tmp_path):
    with pytest.raises(NotImplementedError, match="write_on_batch_end"):
        predict(tmp_path, BasePredictionWriter("batch"), loader())


def test_invalid_interval():
    with pytest.raises(MisconfigurationException, match="`write_interval='step'`.*'batch_and_epoch'"):
        BasePredictionWriter("step")
