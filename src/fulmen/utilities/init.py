"""Build a model without running its weight initialisation, when a checkpoint overwrites it next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.overrides import TorchFunctionMode


class skip_parameter_init(TorchFunctionMode):  # noqa: N801 - used like a function: `with skip_parameter_init():`
    """Inside the block, every ``torch.nn.init`` function returns its tensor untouched.

    The layers' constructors still allocate their parameters (on the current default device and
    dtype); only the filling is skipped, which for a large model on a GPU saves seconds and, with
    ``torch.device("meta")``, nothing is allocated at all.
    """

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)
