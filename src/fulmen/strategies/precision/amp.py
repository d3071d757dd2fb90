"""``"16-mixed"`` / ``"bf16-mixed"``: float32 weights, forward under torch.autocast.

float16 needs a GradScaler: the loss is scaled before backward, gradients are unscaled before
clipping, and a step whose gradients hold inf/nan is skipped while the scale shrinks.
bfloat16 has float32's range and needs no scaler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import LBFGS, Optimizer

from fulmen.strategies.precision.precision import Precision, _cast_to_default
from fulmen.utilities.exceptions import MisconfigurationException

_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class MixedPrecision(Precision):
    def __init__(self, precision: str, device: str = "cpu", scaler: torch.amp.GradScaler | None = None) -> None:
        if precision not in _DTYPES:
            raise MisconfigurationException(
                f"`precision={precision!r}` is not valid for MixedPrecision. Accepted: {list(_DTYPES)}."
            )
        if precision == "16-mixed" and scaler is None:
            scaler = torch.amp.GradScaler(device)
        if precision == "bf16-mixed" and scaler is not None:
            raise MisconfigurationException("`scaler` is not used with `precision='bf16-mixed'`; pass scaler=None.")
        self.precision = precision
        self.device = device
        self.scaler = scaler
        self._autocast_dtype = _DTYPES[precision]

    def forward_context(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device, dtype=self._autocast_dtype)

    def pre_backward(self, tensor: Tensor, module: nn.Module | None) -> Tensor:
        return self.scaler.scale(tensor) if self.scaler is not None else tensor

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is None:
            return
        # GradScaler refuses a second unscale in the same step; clipping after a user's own
        # unscale is legitimate, so remember what was done.
        state = self.scaler._per_optimizer_states[id(optimizer)]
        if state["stage"].name != "UNSCALED":
            self.scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        if self.scaler is None:
            return super().optimizer_step(optimizer, closure=closure, **kwargs)
        if isinstance(optimizer, LBFGS):
            raise MisconfigurationException(
                "`precision='16-mixed'` cannot step LBFGS: its closure re-evaluates the loss, which a "
                "GradScaler cannot unscale. Use `precision='bf16-mixed'` or `'32-true'`."
            )
        closure_result = closure() if closure is not None else None
        # GradScaler.step skips the update when a gradient is inf/nan, then update() shrinks the scale.
        step_output = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return closure_result if closure is not None else step_output

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and state_dict:
            self.scaler.load_state_dict(state_dict)

    def convert_output(self, data: Any) -> Any:
        return _cast_to_default(data)
