"""A LightningModule set up by Lite (``lite.setup(module)``), as Lightning's modules under Fabric.

Lite sets ``module.fabric``; from then on ``self.log``/``self.log_dict`` send the values to Lite's
loggers, ``self.logger``/``self.loggers`` are Lite's, and ``self.clip_gradients`` clips through
Lite. The module knows Lite only through the few methods used here (it never imports ``lite``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from torch import Tensor


def log_through_lite(lite: Any, dictionary: Mapping[str, Any], logger: bool | None, call: str) -> None:
    """Check the values as ``self.log`` does, then ``lite.log_dict`` (``logger=False``: nowhere to send them)."""
    if logger is False:
        return
    if any(isinstance(value, Mapping) for value in dictionary.values()):
        raise ValueError(f"`{call}` was called, but nested dictionaries cannot be logged")
    for name, value in dictionary.items():
        if not isinstance(value, (numbers.Number, Tensor)):
            raise ValueError(
                f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged"
            )
    lite.log_dict(metrics=dict(dictionary))


def clip_through_lite(lite: Any, module: Any, optimizer: Any, value: float | None, algorithm: str | None) -> None:
    """``clip_gradients`` by value or (the default) by norm, through ``lite.clip_gradients``."""
    if value is None:
        return
    by_value = str(getattr(algorithm, "value", algorithm)) == "value"
    lite.clip_gradients(module, optimizer, clip_val=value if by_value else None, max_norm=None if by_value else value)
