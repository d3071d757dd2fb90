"""``"16-true"`` / ``"bf16-true"``: the whole model in half precision, no float32 master copy."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from fulmen.strategies.precision.precision import Precision, _cast_inputs, _cast_to_default, _default_dtype

_DTYPES = {"16-true": torch.float16, "bf16-true": torch.bfloat16}


class HalfPrecision(Precision):
    """The model's parameters, its inputs and the tensors it creates in ``float16`` (``"16-true"``,
    the default, as in Lightning) or ``bfloat16`` (``"bf16-true"``); outputs come back in torch's
    default dtype."""

    def __init__(self, precision: str = "16-true") -> None:
        if precision not in _DTYPES:
            raise ValueError(f"`precision={precision!r}` is not valid for HalfPrecision. Accepted: {list(_DTYPES)}.")
        self.precision = precision
        self.param_dtype = _DTYPES[precision]

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self.param_dtype)

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        return _default_dtype(self.param_dtype)

    def forward_context(self) -> contextlib.AbstractContextManager:
        return _default_dtype(self.param_dtype)

    def convert_input(self, data: Any) -> Any:
        return _cast_inputs(data, self.param_dtype)

    def convert_output(self, data: Any) -> Any:
        return _cast_to_default(data)
