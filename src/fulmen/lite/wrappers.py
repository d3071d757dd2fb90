"""What ``Lite.setup*`` hands back: the user's objects, routed through the strategy.

- ``LiteModule``: forward runs under the precision's autocast; inputs are converted to the
  precision's dtype and outputs come back in the default dtype.
- ``LiteOptimizer``: ``step()`` goes through the strategy (loss scaling, skip on inf, engines).
- ``LiteDataLoader``: batches arrive on the device; a distributed sampler gets its epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fulmen.strategies import Strategy, WrappedModule, WrappedOptimizer, set_sampler_epoch
from fulmen.strategies.precision import Precision
from fulmen.utilities.apply_func import apply_to_collection


class LiteModule(WrappedModule):
    def __init__(self, forward_module: nn.Module, original_module: nn.Module, strategy: Strategy) -> None:
        super().__init__()
        self._forward_module = forward_module
        # The same module as a plain attribute: read every step without nn.Module.__getattr__;
        # ``inner`` is what the strategy layer sees through (WrappedModule).
        self.__dict__["_forward"] = self.__dict__["inner"] = forward_module
        # Kept out of nn.Module's registry so state_dict() keys match the user's module exactly.
        self.__dict__["module"] = original_module
        self.__dict__["_strategy"] = strategy

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        precision = self._strategy.precision
        if type(precision) is Precision:  # 32-true: nothing to convert, no context to enter
            return self._forward(*args, **kwargs)
        args, kwargs = precision.convert_input((args, kwargs))
        with precision.forward_context():
            output = self._forward(*args, **kwargs)
        return precision.convert_output(output)

    # Skip nn.Module's hook machinery for the wrapper itself: hooks live on the user's module,
    # and the wrapper would otherwise pay for an extra module call on every step.
    __call__ = forward

    @property
    def device(self) -> torch.device:
        """Where the module's parameters live (the strategy's device for a module without any)."""
        for tensor in (*self.module.parameters(), *self.module.buffers()):
            return tensor.device
        return self._strategy.root_device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the module's floating-point parameters (torch's default without any)."""
        for tensor in (*self.module.parameters(), *self.module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()

    def mark_forward_method(self, method: str | Any) -> None:
        """Run ``method`` (a name, or the bound method) like ``forward``: through the strategy's wrapped
        module (DDP's gradient sync, FSDP's gathering) and the precision's autocast and conversions."""
        name = method if isinstance(method, str) else getattr(method, "__name__", None)
        if name is None or not callable(getattr(self.module, name, None)):
            raise ValueError(f"`mark_forward_method({method!r})`: the module has no method of that name.")
        if name == "forward":
            raise ValueError("`forward` already runs through the strategy; mark other methods only.")
        self.__dict__.setdefault("_forward_methods", set()).add(name)

    def _call_as_forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        original = self.module
        method = getattr(original, name)
        # Route through the (possibly DDP/FSDP-wrapped) forward module with forward swapped for the
        # method, so the strategy's hooks see the call as a forward.
        original.forward = method
        try:
            return self.forward(*args, **kwargs)
        finally:
            del original.forward

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in self.__dict__.get("_forward_methods", ()):
                return lambda *args, **kwargs: self._call_as_forward(name, *args, **kwargs)
            return getattr(self.__dict__["module"], name)


class LiteOptimizer(WrappedOptimizer):
    """Looks like the user's optimizer (``isinstance`` holds; LR schedulers accept it)."""

    def __init__(self, optimizer: Optimizer, strategy: Strategy) -> None:
        # Share the optimizer's attributes (param_groups, state, defaults are the same objects),
        # and become a subclass of its class so that isinstance checks pass.
        self.__dict__ = {k: v for k, v in optimizer.__dict__.items() if k not in ("step", "zero_grad")}
        self.__class__ = type("Lite" + type(optimizer).__name__, (LiteOptimizer, type(optimizer)), {})
        self.optimizer = self.inner = optimizer
        self._strategy = strategy

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        return self._strategy.optimizer_step(self.optimizer, closure=closure, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._strategy.get_optimizer_state(self.optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._strategy.load_optimizer_state(self.optimizer, state_dict)
        # load_state_dict replaces these containers on the optimizer; share the new ones.
        self.__dict__["state"] = self.optimizer.state
        self.__dict__["param_groups"] = self.optimizer.param_groups

    def __repr__(self) -> str:
        return f"Lite({self.optimizer!r})"


class LiteDataLoader:
    def __init__(self, dataloader: DataLoader, strategy: Strategy, move_to_device: bool = True) -> None:
        self.dataloader = dataloader
        self._strategy = strategy
        self._move_to_device = move_to_device
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[Any]:
        set_sampler_epoch(self.dataloader, self._epoch)
        self._epoch += 1
        # DataLoaders produce CPU tensors: on a CPU device there is nothing to move.
        if not self._move_to_device or self._strategy.root_device.type == "cpu":
            yield from self.dataloader
            return
        for batch in self.dataloader:
            yield self._strategy.batch_to_device(batch)

    @property
    def device(self) -> Any:
        return self._strategy.root_device if self._move_to_device else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["dataloader"], name)


def is_wrapped(obj: object) -> bool:
    """Whether ``obj`` was set up by Lite (``Lite.setup*``): a module, optimizer or dataloader wrapper.

    A ``torch.compile``-d wrapped module counts too.
    """
    obj = getattr(obj, "_orig_mod", obj)
    return isinstance(obj, (LiteModule, LiteOptimizer, LiteDataLoader))


def _unwrap_objects(collection: Any) -> Any:
    """The user's own objects inside any collection of Lite wrappers (Lightning's ``_unwrap_objects``)."""

    def unwrap(obj: Any) -> Any:
        obj = getattr(obj, "_orig_mod", obj)
        if isinstance(obj, LiteModule):
            return obj.module
        if isinstance(obj, LiteOptimizer):
            return obj.optimizer
        if isinstance(obj, LiteDataLoader):
            return obj.dataloader
        return obj

    return apply_to_collection(collection, (LiteModule, LiteOptimizer, LiteDataLoader, nn.Module), unwrap)
