"""Lightning's type aliases (``lightning.pytorch.utilities.types``) for annotating hooks.

They describe what fulmen accepts: what a step may return, the shapes ``configure_optimizers``
may take, and what the ``*_dataloader`` hooks may return. Annotations only; nothing checks them.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict, runtime_checkable

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from typing_extensions import NotRequired

__all__ = [
    "EVAL_DATALOADERS",
    "LRSchedulerTypeUnion",
    "LRScheduler",
    "Optimizable",
    "OptimizerConfig",
    "OptimizerLRScheduler",
    "OptimizerLRSchedulerConfig",
    "STEP_OUTPUT",
    "TRAIN_DATALOADERS",
]


@runtime_checkable
class Optimizable(Protocol):
    """Anything that steps like an optimizer (Lightning's ``Optimizable``): ``isinstance(x, Optimizable)``
    holds for torch optimizers and for the optimizers Lite and the Trainer hand back."""

    param_groups: list[dict[Any, Any]]
    defaults: dict[Any, Any]
    state: Any

    def step(self, closure: Any = ...) -> Any: ...

    def zero_grad(self, set_to_none: bool = ...) -> None: ...


#: A step returns a loss tensor, a dict holding ``"loss"`` (and anything else), or nothing.
STEP_OUTPUT = Tensor | Mapping[str, Any] | None

#: Schedulers ``configure_optimizers`` may return (``ReduceLROnPlateau`` needs a ``monitor``).
LRSchedulerTypeUnion = LRScheduler | ReduceLROnPlateau


class OptimizerConfig(TypedDict):
    optimizer: Optimizer


class OptimizerLRSchedulerConfig(TypedDict):
    optimizer: Optimizer
    lr_scheduler: NotRequired[LRSchedulerTypeUnion | Mapping[str, Any]]
    monitor: NotRequired[str]


#: Every return form of ``configure_optimizers``.
OptimizerLRScheduler = (
    Optimizer
    | Sequence[Optimizer]
    | tuple[Sequence[Optimizer], Sequence[LRSchedulerTypeUnion | Mapping[str, Any]]]
    | OptimizerConfig
    | OptimizerLRSchedulerConfig
    | Sequence[OptimizerConfig]
    | Sequence[OptimizerLRSchedulerConfig]
    | None
)

#: ``train_dataloader`` may return any iterable, or a collection of them (combined per batch).
TRAIN_DATALOADERS = Any
#: ``val/test/predict_dataloader`` may return an iterable or a sequence of them (one per dataloader_idx).
EVAL_DATALOADERS = Any
