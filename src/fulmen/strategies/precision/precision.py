"""Precision: everything that depends on the numeric format, in one object per mode.

A strategy asks its precision to convert the module and inputs, to open the forward context
(autocast), to run backward (loss scaling) and to step optimizers (unscale, skip on inf).
The base class is full 32-bit precision, where all of that is the identity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.utilities.apply_func import apply_to_collection


class Precision:
    """``"32-true"``: float32 everywhere; the identity for every hook."""

    precision: str = "32-true"
    #: Floating dtype of parameters and inputs inside the model.
    param_dtype: torch.dtype = torch.float32
    #: The gradient scaler (``torch.amp.GradScaler``) of the modes that scale the loss; None otherwise.
    scaler: Any = None

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def module_init_context(self) -> contextlib.AbstractContextManager:
        return self.tensor_init_context()

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Context that the model's forward runs under (autocast for mixed modes)."""
        return contextlib.nullcontext()

    def convert_input(self, data: Any) -> Any:
        return data

    def convert_output(self, data: Any) -> Any:
        """Outputs leave the model in the default dtype; float32 already is (for the usual default)."""
        return data

    def pre_backward(self, tensor: Tensor, module: nn.Module | None) -> Tensor:
        return tensor

    def backward(
        self,
        tensor: Tensor,
        module: nn.Module | None,
        *args: Any,
        backward_fn: Callable[..., None] | None = None,
        **kwargs: Any,
    ) -> None:
        if backward_fn is None:
            tensor.backward(*args, **kwargs)
        else:
            backward_fn(tensor, *args, **kwargs)

    def post_backward(self, tensor: Tensor, module: nn.Module | None) -> Tensor:
        return tensor

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Bring gradients to their true scale before clipping or inspection."""

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        return optimizer.step(closure=closure, **kwargs) if closure is not None else optimizer.step(**kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def teardown(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.precision!r})"


def _cast_floating(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if torch.is_floating_point(tensor) and tensor.dtype != dtype else tensor


def _cast_to_default(data: Any) -> Any:
    return apply_to_collection(data, Tensor, _cast_floating, torch.get_default_dtype())


def _cast_inputs(data: Any, dtype: torch.dtype) -> Any:
    return apply_to_collection(data, Tensor, _cast_floating, dtype)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Generator[None, None, None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
