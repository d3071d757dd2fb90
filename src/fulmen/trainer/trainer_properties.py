"""Read-only Trainer properties that answer from the strategy or the callback list.

Split from ``trainer.py`` so that the Trainer's file holds configuration, entry points and the
properties of the current call; these two mixins hold the rest of Lightning's public surface.
"""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.callback import CHECKPOINT, EARLY_STOPPING, PROGRESS_BAR, Callback
from fulmen.strategies import Strategy
from fulmen.trainer.defaults import with_role


class StrategyProperties:
    """Hardware and rank questions, answered by ``self.strategy``."""

    _strategy: Strategy

    @property
    def accelerator(self) -> Any:
        return self._strategy.accelerator

    @property
    def precision(self) -> str:
        return self._strategy.precision.precision

    @property
    def precision_plugin(self) -> Any:
        return self._strategy.precision

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def num_nodes(self) -> int:
        return self._strategy.num_nodes

    @property
    def num_devices(self) -> int:
        return len(self._strategy.parallel_devices)

    @property
    def device_ids(self) -> list[int]:
        devices = self._strategy.parallel_devices
        return [d.index if d.index is not None else i for i, d in enumerate(devices)]

    @property
    def scaler(self) -> Any:
        """The precision's gradient scaler (``16-mixed``), else None."""
        return self._strategy.precision.scaler

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        return self._strategy.distributed_sampler_kwargs


class CallbackLookups:
    """The built-in callbacks of ``self.callbacks`` by kind (checkpointing, early stopping, progress bar)."""

    callbacks: list[Callback]

    @property
    def checkpoint_callbacks(self) -> list[Callback]:
        return with_role(self.callbacks, CHECKPOINT)

    @property
    def checkpoint_callback(self) -> Callback | None:
        callbacks = self.checkpoint_callbacks
        return callbacks[0] if callbacks else None

    @property
    def early_stopping_callbacks(self) -> list[Callback]:
        return with_role(self.callbacks, EARLY_STOPPING)

    @property
    def early_stopping_callback(self) -> Callback | None:
        callbacks = self.early_stopping_callbacks
        return callbacks[0] if callbacks else None

    @property
    def progress_bar_callback(self) -> Callback | None:
        return next(iter(with_role(self.callbacks, PROGRESS_BAR)), None)
