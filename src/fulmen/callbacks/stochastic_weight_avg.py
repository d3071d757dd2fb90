"""Stochastic Weight Averaging (SWA): finish training with the average of the last epochs' weights.

It exists because averaging the weights visited late in training, with a constant or cyclic
learning rate, tends to land in a flatter region of the loss than any single point, which
generalises better (Izmailov et al., 2018) at no extra training cost.

What happens, epoch by epoch (epochs counted from 0):

* from ``swa_start`` on, the learning rate is annealed to ``swa_lrs`` by
  ``torch.optim.swa_utils.SWALR``, which replaces the module's scheduler (if any);
* at the end of every epoch from ``swa_start`` on, the weights are folded into a
  ``torch.optim.swa_utils.AveragedModel`` (kept on ``device``);
* when training ends, the averaged weights are copied into the module and, if it has BatchNorm
  layers, their running statistics are recomputed with one pass over the training data (the
  statistics of the individual epochs do not describe the averaged weights).

Its state (the average so far, the SWA scheduler) is saved in checkpoints, so a resumed run
continues the same average.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel

from fulmen.callbacks.callback import Callback
from fulmen.module import LightningModule, LRSchedulerConfig
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

_AvgFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class StochasticWeightAveraging(Callback):
    """Average the weights of the last epochs of training (see the module docstring).

    Args:
        swa_lrs: the learning rate SWA anneals to: one float for every parameter group, or a
            list with one per group.
        swa_epoch_start: when averaging starts: an int ``n`` >= 1 means the ``n``-th epoch
            (epoch ``n - 1`` counted from 0); a float in (0, 1] a fraction of ``max_epochs``.
        annealing_epochs: epochs over which the learning rate moves to ``swa_lrs``.
        annealing_strategy: ``"cos"`` or ``"linear"`` annealing.
        avg_fn: ``avg_fn(averaged_param, param, num_averaged) -> new averaged_param``; the
            default is the equal-weight running mean.
        device: where the averaged copy lives (``None``: beside the module). CPU by default, so
            SWA costs no accelerator memory.
    """

    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        avg_fn: _AvgFn | None = None,
        device: torch.device | str | None = torch.device("cpu"),  # noqa: B008 - an immutable default
    ) -> None:
        if isinstance(swa_epoch_start, bool) or not (
            (isinstance(swa_epoch_start, int) and swa_epoch_start >= 1)
            or (isinstance(swa_epoch_start, float) and 0 < swa_epoch_start <= 1)
        ):
            raise invalid_argument("swa_epoch_start", swa_epoch_start, "an int >= 1 or a float in (0, 1]")
        lrs = swa_lrs if isinstance(swa_lrs, (list, tuple)) else [swa_lrs]
        if not lrs or any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0 for lr in lrs):
            raise invalid_argument("swa_lrs", swa_lrs, "a positive float, or a list of positive floats")
        if isinstance(annealing_epochs, bool) or not isinstance(annealing_epochs, int) or annealing_epochs < 0:
            raise invalid_argument("annealing_epochs", annealing_epochs, "an int >= 0")
        if annealing_strategy not in ("cos", "linear"):
            raise invalid_argument("annealing_strategy", annealing_strategy, ("cos", "linear"))
        if avg_fn is not None and not callable(avg_fn):
            raise invalid_argument("avg_fn", avg_fn, "None or a function (averaged_param, param, num_averaged)")
        if device is not None and not isinstance(device, (torch.device, str)):
            raise invalid_argument("device", device, "None, a torch.device or a device string like 'cpu'")
        self._swa_lrs = swa_lrs
        self._swa_epoch_start = swa_epoch_start
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn
        self._device = torch.device(device) if device is not None else None
        self._average_model: AveragedModel | None = None
        self._swa_scheduler: SWALR | None = None
        self._swa_start: int | None = None
        self._max_epochs: int | None = None
        self._latest_update_epoch = -1
        self._pending_model_state: dict[str, Any] | None = None
        self._pending_scheduler_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------- window
    @property
    def swa_start(self) -> int:
        """The first epoch (from 0) of the averaging window; known once fit has started."""
        if self._swa_start is None:
            raise RuntimeError("`swa_start` is known once `fit` starts (it may depend on `max_epochs`).")
        return self._swa_start

    @property
    def swa_end(self) -> int:
        """The last epoch (from 0) of the averaging window: the last epoch of training."""
        if self._max_epochs is None:
            raise RuntimeError("`swa_end` is known once `fit` starts.")
        return self._max_epochs - 1

    @property
    def n_averaged(self) -> int:
        """How many epochs' weights the average holds."""
        return int(self._average_model.n_averaged) if self._average_model is not None else 0

    @property
    def average_model(self) -> AveragedModel | None:
        return self._average_model

    def _in_window(self, epoch: int) -> bool:
        return self.swa_start <= epoch <= self.swa_end

    # ----------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                f"`StochasticWeightAveraging` works with one optimizer; `configure_optimizers` gave "
                f"{len(trainer.optimizers)}."
            )
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationException(
                "`StochasticWeightAveraging` replaces the learning-rate scheduler, so it works with at most one; "
                f"`configure_optimizers` gave {len(trainer.lr_scheduler_configs)}."
            )
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise MisconfigurationException(
                f"`StochasticWeightAveraging` averages the last epochs of training, so it needs "
                f"`Trainer(max_epochs=...)`; got max_epochs={max_epochs}."
            )
        self._max_epochs = max_epochs
        if isinstance(self._swa_epoch_start, float):
            self._swa_start = max(int(max_epochs * self._swa_epoch_start) - 1, 0)
        else:
            self._swa_start = self._swa_epoch_start - 1
        if self._swa_start > self.swa_end:
            rank_zero_warn(
                f"`StochasticWeightAveraging(swa_epoch_start={self._swa_epoch_start})` starts after the last epoch "
                f"(max_epochs={max_epochs}): no weights will be averaged."
            )
        if self._pending_model_state is not None:  # resuming: rebuild the average saved in the checkpoint
            self._make_average_model(pl_module)
            self._average_model.load_state_dict(self._pending_model_state)
            self._pending_model_state = None

    def _make_average_model(self, pl_module: LightningModule) -> None:
        # AveragedModel keeps a deep copy; the module's own copy drops its Trainer reference.
        self._average_model = AveragedModel(pl_module, device=self._device or pl_module.device, avg_fn=self._avg_fn)

    def on_train_epoch_start(self, trainer: Any, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._swa_scheduler is not None or not self._in_window(epoch):
            return
        if self._average_model is None:
            self._make_average_model(pl_module)
        optimizer = trainer.optimizers[0]
        groups = optimizer.param_groups
        lrs = list(self._swa_lrs) if isinstance(self._swa_lrs, (list, tuple)) else [self._swa_lrs] * len(groups)
        if len(lrs) != len(groups):
            raise invalid_argument(
                "swa_lrs", self._swa_lrs, f"one float, or a list of {len(groups)} (one per parameter group)"
            )
        self._swa_scheduler = SWALR(
            optimizer, swa_lr=lrs, anneal_epochs=self._annealing_epochs, anneal_strategy=self._annealing_strategy
        )
        if self._pending_scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._pending_scheduler_state)
            self._pending_scheduler_state = None
        config = LRSchedulerConfig(self._swa_scheduler, interval="epoch", frequency=1)
        configs = trainer.lr_scheduler_configs
        if configs:
            previous = configs[0]
            if previous.interval != "epoch" or previous.frequency != 1:
                rank_zero_warn(
                    f"`StochasticWeightAveraging` steps its scheduler every epoch; the scheduler it replaces "
                    f"stepped every {previous.frequency} {previous.interval}(s)."
                )
            rank_zero_info(f"SWA: `{type(previous.scheduler).__name__}` is replaced by `SWALR` from epoch {epoch}.")
            configs[0] = config
        else:
            configs.append(config)

    def on_train_epoch_end(self, trainer: Any, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self._in_window(epoch) or epoch <= self._latest_update_epoch:
            return
        if self._average_model is None:
            self._make_average_model(pl_module)
        self._average_model.update_parameters(pl_module)
        self._latest_update_epoch = epoch

    def on_train_end(self, trainer: Any, pl_module: LightningModule) -> None:
        if self._average_model is None or self.n_averaged == 0:
            return
        self.transfer_weights(self._average_model.module, pl_module)
        if _has_batch_norm(pl_module):
            self.update_batch_norm(trainer, pl_module)

    # --------------------------------------------------------------------- the final pass
    @staticmethod
    def transfer_weights(source: nn.Module, target: nn.Module) -> None:
        """Copy ``source``'s parameters into ``target`` (same architecture), on ``target``'s devices."""
        with torch.no_grad():
            for src, dst in zip(source.parameters(), target.parameters()):
                dst.copy_(src.to(dst.device))

    def update_batch_norm(self, trainer: Any, pl_module: LightningModule) -> None:
        """Recompute BatchNorm running statistics for the averaged weights over one pass of the training data."""
        loader = trainer.train_dataloader
        if loader is None:
            rank_zero_warn("SWA: no training dataloader to recompute the BatchNorm statistics with; they are kept.")
            return
        norms = [m for m in pl_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = {m: m.momentum for m in norms}
        modes = {m: m.training for m in pl_module.modules()}
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the whole pass, not an exponential one
        pl_module.train()
        limit = trainer.num_training_batches
        batches = loader if limit == math.inf else itertools.islice(loader, int(limit))
        try:
            with torch.no_grad():
                for batch in batches:
                    self.forward_for_batch_norm(pl_module, trainer.strategy.batch_to_device(batch))
        finally:
            for norm, momentum in momenta.items():
                norm.momentum = momentum
            for module, training in modes.items():
                module.training = training

    def forward_for_batch_norm(self, pl_module: LightningModule, batch: Any) -> None:
        """One forward pass for the BatchNorm update; override when ``module(batch[0])`` is not the input.

        ``batch`` is already on the module's device. The default calls the module on the first
        element of a tuple/list batch, or on the batch itself.
        """
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        pl_module(inputs)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": self.n_averaged,
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": self._swa_scheduler.state_dict() if self._swa_scheduler is not None else None,
            "average_model_state": self._average_model.state_dict() if self._average_model is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_epoch = int(state_dict.get("latest_update_epoch", -1))
        self._pending_scheduler_state = state_dict.get("scheduler_state")
        self._pending_model_state = state_dict.get("average_model_state")
        self._average_model = None
        self._swa_scheduler = None
