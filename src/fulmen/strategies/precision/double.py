"""``"64-true"``: float64 parameters and inputs, for numerically delicate work."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from fulmen.strategies.precision.precision import Precision, _cast_inputs, _cast_to_default, _default_dtype


class DoublePrecision(Precision):
    precision = "64-true"
    param_dtype = torch.float64

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.double()

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        return _default_dtype(torch.float64)

    def forward_context(self) -> contextlib.AbstractContextManager:
        # Tensors created inside forward (torch.ones_like aside) should match the weights.
        return _default_dtype(torch.float64)

    def convert_input(self, data: Any) -> Any:
        return _cast_inputs(data, torch.float64)

    def convert_output(self, data: Any) -> Any:
        return _cast_to_default(data)
