"""Gradient accumulation scheduler: change ``accumulate_grad_batches`` from epoch to epoch.

It exists for schedules such as "small effective batches early for fast progress, larger ones
later for stable gradients" without restarting the run. At the start of every training epoch it
sets ``trainer.accumulate_grad_batches`` to the factor of the latest scheduled epoch reached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.module import LightningModule
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.overrides import is_overridden
from fulmen.utilities.rank_zero import rank_zero_warn


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over a number of batches that depends on the epoch.

    Args:
        scheduling: ``{epoch: factor}``; from ``epoch`` (0-based) on, gradients of ``factor``
            batches are summed before each optimizer step. Epochs before the first key use 1.

    Example: ``GradientAccumulationScheduler({0: 1, 4: 2, 8: 4})`` steps every batch in epochs
    0-3, every 2 batches in epochs 4-7 and every 4 batches from epoch 8 on.
    """

    def __init__(self, scheduling: Mapping[int, int]) -> None:
        accepted = "a non-empty dict {epoch (int >= 0): accumulation factor (int >= 1)}, e.g. {0: 1, 4: 2}"
        if not isinstance(scheduling, Mapping) or not scheduling:
            raise invalid_argument("scheduling", scheduling, accepted)
        for epoch, factor in scheduling.items():
            if not _is_int(epoch) or epoch < 0:
                said = f"Epoch should be an int greater than or equal to 0. Got {epoch!r}."
                raise invalid_argument(f"scheduling key {epoch!r}", epoch, "an epoch number, an int >= 0", said)
            if not _is_int(factor) or factor < 1:
                said = f"Accumulation factor should be an int greater than 0. Got {factor!r}."
                raise invalid_argument(f"scheduling[{epoch!r}]", factor, "an accumulation factor, an int >= 1", said)
        self.scheduling = dict(scheduling)
        if 0 not in self.scheduling:
            self.scheduling[0] = 1
        self.epochs = sorted(self.scheduling)
        self._last_set: int | None = None

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(factor > 1 for factor in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor in force at ``epoch``."""
        factor = 1
        for start in self.epochs:
            if epoch >= start:
                factor = self.scheduling[start]
        return factor

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                "Automatic gradient accumulation and the `GradientAccumulationScheduler` is not supported for "
                "manual optimization: there you step the optimizer yourself. Remove the callback, or accumulate in "
                "`training_step`."
            )
        overridden = [
            name
            for name in ("optimizer_step", "optimizer_zero_grad")
            if is_overridden(pl_module, LightningModule, name)
        ]
        if overridden and self.going_to_accumulate_grad_batches():
            rank_zero_warn(
                f"The provided model overrides {' and '.join(f'`{n}`' for n in overridden)}, so with "
                "`GradientAccumulationScheduler` accumulating, the hooks will not be called on every batch "
                "(rather, they are called on every optimization step)."
            )
        current = trainer.accumulate_grad_batches
        if current != 1 and current != self._last_set:
            raise MisconfigurationException(
                "You have set `accumulate_grad_batches` and are using the `GradientAccumulationScheduler` callback: "
                f"both set the accumulation factor. Keep one: remove `Trainer(accumulate_grad_batches={current})`, "
                "or the callback."
            )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_set = self.get_accumulate_grad_batches(trainer.current_epoch)
        trainer.accumulate_grad_batches = self._last_set
