"""MNIST from local files (torchvision's raw IDX layout or Lightning's processed tensors); a clear error without."""

from __future__ import annotations

import gzip
import importlib.util

import pytest
import torch

from fulmen.demos.mnist_datamodule import MNIST, MNISTDataModule

NEEDS_NO_TORCHVISION = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="with torchvision, MNIST is torchvision's dataset"
)


def _idx(tensor: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    return header + tensor.to(torch.uint8).numpy().tobytes()


def _write_raw(root, count: int, compress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % 10
    for prefix, n in (("train", count), ("t10k", count // 2)):
        for kind, data in (("images-idx3", images[:n]), ("labels-idx1", labels[:n])):
            path = raw / f"{prefix}-{kind}-ubyte"
            if compress:
                with gzip.open(str(path) + ".gz", "wb") as handle:
                    handle.write(_idx(data))
            else:
                path.write_bytes(_idx(data))
    return images, labels


@NEEDS_NO_TORCHVISION
@pytest.mark.parametrize("compress", [False, True])
def test_reads_idx_files_and_normalises(tmp_path, compress):
    images, labels = _write_raw(tmp_path, 40, compress)
    train = MNIST(tmp_path, train=True)
    test = MNIST(tmp_path, train=False, download=True)
    assert len(train) == 40 and len(test) == 20
    image, label = train[7]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 7
    assert torch.allclose(image, (images[7].float().unsqueeze(0) - 0.1307) / 0.3081)
    raw_image, _ = MNIST(tmp_path, normalize=None)[7]
    assert torch.equal(raw_image, images[7].float().unsqueeze(0))
    scaled, target = MNIST(tmp_path, transform=lambda x: x * 0, target_transform=lambda y: y + 100)[3]
    assert scaled.abs().sum() == 0 and target == 103


@NEEDS_NO_TORCHVISION
def test_reads_lightning_processed_files(tmp_path):
    folder = tmp_path / "MNIST" / "complete"
    folder.mkdir(parents=True)
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    images[2] = 255
    torch.save((images, torch.arange(6)), folder / "training.pt")
    dataset = MNIST(str(tmp_path), train=True, normalize=None)
    assert len(dataset) == 6 and dataset[2][0].max() == 255 and dataset[2][1] == 2


def test_missing_data_names_the_folder_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        MNIST(tmp_path / "empty", train=False)
    message = str(error.value)
    assert str(tmp_path / "empty" / "MNIST") in message and "test split" in message and "download=True" in message
    with pytest.raises(FileNotFoundError, match="MNIST"):
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()


@NEEDS_NO_TORCHVISION
def test_datamodule_splits_and_loads(tmp_path):
    _write_raw(tmp_path, 40, compress=False)
    datamodule = MNISTDataModule(data_dir=str(tmp_path), val_split=8, num_workers=0, batch_size=4, seed=1)
    assert datamodule.num_classes == 10 and datamodule.name == "mnist"
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert len(datamodule.dataset_train) == 32 and len(datamodule.dataset_val) == 8
    assert set(datamodule.dataset_train.indices).isdisjoint(datamodule.dataset_val.indices)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 1, 28, 28) and labels.shape == (4,)
    assert len(datamodule.val_dataloader()) == 2 and len(datamodule.test_dataloader()) == 5
    again = MNISTDataModule(data_dir=str(tmp_path), val_split=8, num_workers=0, seed=1)
    again.setup("fit")
    assert again.dataset_val.indices == datamodule.dataset_val.indices  # the seed fixes the split
    with pytest.raises(ValueError, match="val_split=40"):
        MNISTDataModule(data_dir=str(tmp_path), val_split=40, num_workers=0).setup("fit")
    with pytest.raises(ValueError, match="batch_size=0"):
        MNISTDataModule(batch_size=0)
