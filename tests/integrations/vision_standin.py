"""The torchvision names seed 003 imports, in plain torch: torchvision is not installable here.

(Its wheels need a CUDA build of torch, or fail to load their operators on the CPU build.)
``resnet18`` is a ResNet with torchvision's stem and attribute names (``conv1``, ``bn1``,
``layer1``, ``fc``), one basic block deep so that a test trains it in seconds; ``FashionMNIST``
reads the dataset's own idx files under ``root/FashionMNIST/raw`` (the test writes small ones:
nothing can be downloaded); the transforms do what torchvision's do to such images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset


class _BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class _ResNet(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(_BasicBlock(64))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer1(x)), 1))


def resnet18(num_classes: int = 1000) -> nn.Module:
    return _ResNet(num_classes=num_classes)


def _read_idx(path: Path) -> torch.Tensor:
    data = path.read_bytes()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor in the idx format of the MNIST family."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    path.write_bytes(header + tensor.to(torch.uint8).contiguous().numpy().tobytes())


class FashionMNIST(Dataset):
    def __init__(self, root: str, train: bool = True, download: bool = False, transform=None) -> None:
        raw = Path(root) / "FashionMNIST" / "raw"
        prefix = "train" if train else "t10k"
        images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
        if not images.exists():
            raise RuntimeError(f"FashionMNIST files not found in {os.path.abspath(raw)} (nothing is downloaded here).")
        self.data, self.targets = _read_idx(images), _read_idx(labels).long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image = self.data[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


class ToTensor:
    """An HxW uint8 image to a 1xHxW float tensor in [0, 1]."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.unsqueeze(0).float().div(255)


class Normalize:
    def __init__(self, mean, std) -> None:
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


class Compose:
    def __init__(self, transforms) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x
