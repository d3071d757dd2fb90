"""The device banner a Trainer logs when it is created, in Lightning's words.

Lightning users read these lines to confirm which hardware a run uses (and scripts grep them):
``GPU available: False, used: False`` and ``TPU available: False, using: 0 TPU cores``, INFO
lines of the ``fulmen`` logger on rank zero, plus Lightning's warning when a GPU sits idle.
"""

from __future__ import annotations

from typing import Any

import torch

from fulmen.utilities.exceptions import PossibleUserWarning
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn


def _gpu_kind() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return None


def device_banner(accelerator: Any) -> list[str]:
    """The banner's lines for a run on ``accelerator`` (an Accelerator; its ``name`` says which)."""
    kind, used = _gpu_kind(), getattr(accelerator, "name", "")
    available = f"True ({kind})" if kind else "False"
    return [f"GPU available: {available}, used: {used in ('cuda', 'mps')}", "TPU available: False, using: 0 TPU cores"]


def log_device_banner(accelerator: Any) -> None:
    """Log the banner on rank zero; warn, as Lightning does, when CUDA is there but unused."""
    for line in device_banner(accelerator):
        rank_zero_info(line)
    if torch.cuda.is_available() and getattr(accelerator, "name", "") != "cuda":
        rank_zero_warn(
            "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.",
            category=PossibleUserWarning,
        )
