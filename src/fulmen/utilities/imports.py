"""Which optional packages are installed, under the names Lightning's examples test
(``from lightning.pytorch.utilities.imports import _TORCHVISION_AVAILABLE``).

Each flag asks the import system whether the package can be found; nothing is imported.
"""

from __future__ import annotations

import importlib.util


def package_available(name: str) -> bool:
    """Whether ``import name`` would find a package, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_TORCHVISION_AVAILABLE = package_available("torchvision")
_RICH_AVAILABLE = package_available("rich")
_OMEGACONF_AVAILABLE = package_available("omegaconf")
_JSONARGPARSE_AVAILABLE = package_available("jsonargparse")
_ONNX_AVAILABLE = package_available("onnx")
_TENSORBOARD_AVAILABLE = package_available("tensorboard")
_PSUTIL_AVAILABLE = package_available("psutil")
