"""``BatchSizeFinder``: the largest batch size that fits in memory, found at the start of ``fit``.

At ``on_fit_start`` it tries batch sizes (see :mod:`fulmen.callbacks.batch_size_search`) by setting
the ``batch_arg_name`` attribute of the model or datamodule (or their ``hparams`` key) and
training ``steps_per_trial`` steps with each; the weights and optimizer are put back and the fit
continues with the size found, held in ``optimal_batch_size``. One process only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fulmen.callbacks.batch_size_search import check_arguments, check_batch_attribute, scale_batch_size
from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer


class BatchSizeFinder(Callback):
    """Lightning's arguments: ``mode`` ("power" or "binsearch"), ``steps_per_trial``, ``init_val`` (the first
    size tried), ``max_trials``, ``batch_arg_name``, ``margin`` (binsearch keeps that share below the
    largest size that fitted) and ``max_val`` (no larger size is tried)."""

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int | None = 8192,
    ) -> None:
        check_arguments(mode, steps_per_trial, init_val, max_trials, batch_arg_name, margin, max_val)
        self._margin = margin
        self._max_val = max_val
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        #: Set by ``fulmen.tuner.Tuner``: end the fit once the search is done.
        self._early_exit = False
        self.optimal_batch_size: int | None = init_val

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise MisconfigurationException(
                f"The batch size finder runs in one process; this Trainer runs {trainer.world_size}. Find the batch "
                "size on one device, then pass it to the distributed run."
            )
        check_batch_attribute(pl_module, self._batch_arg_name, trainer.datamodule)

    def scale_batch_size(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.optimal_batch_size = scale_batch_size(
            trainer,
            pl_module,
            mode=self._mode,
            steps_per_trial=self._steps_per_trial,
            init_val=self._init_val,
            max_trials=self._max_trials,
            batch_arg_name=self._batch_arg_name,
            margin=self._margin,
            max_val=self._max_val,
        )
        if self._early_exit:
            trainer.should_stop = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.scale_batch_size(trainer, pl_module)
