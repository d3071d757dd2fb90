"""MNIST from local files, and its datamodule, under Lightning's names (``MNIST``, ``MNISTDataModule``).

Lightning downloads MNIST on first use; fulmen's demos never reach the network from a library
call. They read files already on disk, in either layout:

- torchvision's: ``<root>/MNIST/raw/train-images-idx3-ubyte`` (and the labels, and ``t10k-*`` for
  the test split; ``.gz`` files are read as they are);
- Lightning's: ``<root>/MNIST/complete/training.pt`` and ``test.pt`` (``(images, labels)`` tensors).

With torchvision installed and its raw files present, ``MNIST(...)`` is torchvision's dataset (so
``transform=transforms.ToTensor()`` receives PIL images, as in Lightning); otherwise fulmen's own
reader returns ``(1, 28, 28)`` float tensors.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, random_split

from fulmen.datamodule import LightningDataModule
from fulmen.demos.transformer import missing_data_message

__all__ = ["MNIST", "MNISTDataModule"]

_DATASETS_PATH = "./data"
_RAW_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_PROCESSED_FILES = {True: "training.pt", False: "test.pt"}
_HOW_TO_GET = (
    "put torchvision's MNIST files there once (with torchvision installed: "
    "`python -c \"from torchvision.datasets import MNIST; MNIST('{root}', download=True); "
    "MNIST('{root}', train=False, download=True)\"`)"
)


def _find(path: Path) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> Tensor:
    """An IDX file (MNIST's own format: magic, dims, big-endian sizes, unsigned bytes) as a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"'{path}' is not an IDX file of unsigned bytes (MNIST's format).")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8)
    return data.view(*shape)


def _local_files(root: Path, train: bool) -> tuple[Tensor, Tensor] | None:
    raw = root / "MNIST" / "raw"
    images, labels = (_find(raw / name) for name in _RAW_FILES[train])
    if images is not None and labels is not None:
        return _read_idx(images), _read_idx(labels).long()
    processed = root / "MNIST" / "complete" / _PROCESSED_FILES[train]
    if processed.is_file():
        data, targets = torch.load(processed, weights_only=True)
        return data, targets
    return None


class _LocalMNIST(Dataset):
    """MNIST images as normalised ``(1, 28, 28)`` float tensors and integer labels, read from ``root``."""

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        normalize: tuple[float, float] | None = (0.1307, 0.3081),
        download: bool = True,
        transform: Callable[[Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.train = train
        self.normalize = normalize
        self.transform = transform
        self.target_transform = target_transform
        found = _local_files(self.root, train)
        if found is None:
            split = "training" if train else "test"
            raise FileNotFoundError(
                missing_data_message(f"MNIST ({split} split)", self.root / "MNIST", _HOW_TO_GET.format(root=self.root))
            )
        self.data, self.targets = found

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image: Any = self.data[index].float().unsqueeze(0)
        if self.normalize is not None:
            mean, std = self.normalize
            image = (image - mean) / std
        target: Any = int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def MNIST(root: str | Path = _DATASETS_PATH, train: bool = True, download: bool = True, **kwargs: Any) -> Dataset:  # noqa: N802
    """The MNIST split under ``root`` (torchvision's dataset where installed, else fulmen's reader).

    ``download`` is accepted for Lightning's signature; nothing is fetched. Missing files raise
    ``FileNotFoundError`` naming the folder and how to get the data.
    """
    root = Path(root)
    if importlib.util.find_spec("torchvision") is not None and _find(root / "MNIST" / "raw" / _RAW_FILES[train][0]):
        from torchvision.datasets import MNIST as TorchvisionMNIST

        kwargs.pop("normalize", None)
        return TorchvisionMNIST(str(root), train=train, download=False, **kwargs)
    return _LocalMNIST(root, train=train, **kwargs)


class MNISTDataModule(LightningDataModule):
    """MNIST's training split cut into train and ``val_split`` validation images; its test split for test."""

    name = "mnist"

    def __init__(
        self,
        data_dir: str = _DATASETS_PATH,
        val_split: int = 5000,
        num_workers: int = 16,
        normalize: bool = False,
        seed: int = 42,
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        for name, value in (("val_split", val_split), ("num_workers", num_workers)):
            if value < 0:
                raise ValueError(f"`{name}={value}` must be zero or more.")
        if batch_size < 1:
            raise ValueError(f"`batch_size={batch_size}` must be a positive integer.")
        self.data_dir = data_dir
        self.val_split = val_split
        self.num_workers = num_workers
        self.normalize = normalize
        self.seed = seed
        self.batch_size = batch_size

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def default_transforms(self) -> Callable | None:
        """torchvision's ``ToTensor`` (``Normalize(0.5, 0.5)`` after it with ``normalize``), if installed."""
        if importlib.util.find_spec("torchvision") is None:
            return None
        from torchvision import transforms

        if self.normalize:
            return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=(0.5,), std=(0.5,))])
        return transforms.ToTensor()

    def _dataset(self, train: bool) -> Dataset:
        transform = self.default_transforms
        extra = {"transform": transform} if transform is not None else {}
        return MNIST(self.data_dir, train=train, download=False, **extra)

    def prepare_data(self) -> None:
        """Checks that both splits are on disk (Lightning downloads them here)."""
        MNIST(self.data_dir, train=True)
        MNIST(self.data_dir, train=False)

    def setup(self, stage: str) -> None:
        dataset = self._dataset(train=True)
        if self.val_split >= len(dataset):
            raise ValueError(f"`val_split={self.val_split}` leaves no training images of {len(dataset)}.")
        lengths = [len(dataset) - self.val_split, self.val_split]
        generator = torch.Generator().manual_seed(self.seed)
        self.dataset_train, self.dataset_val = random_split(dataset, lengths, generator=generator)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(train=False), shuffle=False)
