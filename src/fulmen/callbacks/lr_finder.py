"""``LearningRateFinder``: the learning-rate range test at the start of ``fit``, then training with its suggestion.

At ``on_fit_start`` it trains ``num_training_steps`` steps with a rising learning rate (see
:mod:`fulmen.callbacks.lr_search`), puts the weights and optimizer back, and, with ``update_attr``,
sets the model's ``lr``/``learning_rate`` (attribute or ``hparams`` key) and the optimizer to the
suggested rate, so that the fit continues with it. ``optimal_lr`` holds the result. Subclass it
and call ``self.lr_find(trainer, pl_module)`` from another hook to search at other times (at
some epochs of a fine-tuning, say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fulmen.callbacks.callback import Callback
from fulmen.callbacks.lr_search import LRFinder, check_arguments, lr_find

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer


class LearningRateFinder(Callback):
    """Lightning's arguments: ``min_lr``, ``max_lr``, ``num_training_steps``, ``mode`` ("exponential" or
    "linear"), ``early_stop_threshold`` (None: never stop early), ``update_attr``, ``attr_name``."""

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        check_arguments(min_lr, max_lr, num_training_steps, mode, early_stop_threshold, name="num_training_steps")
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = bool(update_attr)
        self._attr_name = attr_name
        #: Set by ``fulmen.tuner.Tuner``: end the fit once the search is done.
        self._early_exit = False
        self.optimal_lr: LRFinder | None = None

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.optimal_lr = lr_find(
            trainer,
            pl_module,
            min_lr=self._min_lr,
            max_lr=self._max_lr,
            num_training=self._num_training_steps,
            mode=self._mode,
            early_stop_threshold=self._early_stop_threshold,
            update_attr=self._update_attr,
            attr_name=self._attr_name,
        )
        if self._early_exit:
            trainer.should_stop = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.lr_find(trainer, pl_module)
