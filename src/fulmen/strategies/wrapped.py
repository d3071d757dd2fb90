"""The one contract between the front ends' wrappers and the strategy layer.

The Trainer routes steps through a module wrapper and Lite hands back wrapped modules and
optimizers. The strategy layer must see through them (to find the DDP or FSDP module it set
up, the user's module, the real optimizer), and it learns what a wrapper holds only through
these base classes: ``inner`` is the object the wrapper calls. Nothing probes private names.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer


class WrappedModule(nn.Module):
    """A front end's module wrapper. Subclasses set ``inner`` in ``__init__`` as a plain attribute
    (``self.__dict__["inner"] = module``) so that it is read without ``nn.Module.__getattr__``
    and stays out of ``state_dict`` keys."""

    #: The module this wrapper calls: what the strategy set up (DDP, a sharded module) or the user's module.
    inner: nn.Module


class WrappedOptimizer:
    """A front end's optimizer wrapper; ``inner`` is the optimizer that holds the state."""

    #: The optimizer this wrapper steps.
    inner: Optimizer


def unwrap_module(module: nn.Module) -> nn.Module:
    """The user's own module beneath fulmen's and torch's wrappers (DDP, DP, torch.compile)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(module, WrappedModule):
            module = module.inner
        elif isinstance(module, (DistributedDataParallel, DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile
            module = module._orig_mod
        else:
            return module


def unwrap_optimizer(optimizer: Any) -> Optimizer:
    return optimizer.inner if isinstance(optimizer, WrappedOptimizer) else optimizer


def find_wrapped(module: nn.Module | None, kind: type | tuple[type, ...]) -> Any:
    """The first module of type ``kind`` along the chain of front-end wrappers, else None."""
    while module is not None:
        if isinstance(module, kind):
            return module
        module = module.inner if isinstance(module, WrappedModule) else None
    return None


def wrapper_inner(module: nn.Module) -> nn.Module | None:
    """What a front end's wrapper holds, or None for any other module."""
    return module.inner if isinstance(module, WrappedModule) else None
