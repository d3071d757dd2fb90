"""Weight averaging: keep a running average of the weights (SWA-style or an EMA) beside the model.

It exists because an average of the weights visited during training usually evaluates better
than the last weights alone, at the cost of one extra copy of the parameters. The average lives
in a ``torch.optim.swa_utils.AveragedModel`` and is updated after optimizer steps (or epochs)
chosen by :meth:`WeightAveraging.should_update`.

What the user sees, as in Lightning 2.x:

* validation during fit runs on the averaged weights (they are swapped in at
  ``on_validation_epoch_start`` and back at ``on_validation_epoch_end``; a swap is an exact copy
  both ways);
* when training ends the module holds the averaged weights;
* a checkpoint's ``"state_dict"`` holds the averaged weights (so ``load_from_checkpoint`` and
  ``validate(ckpt_path=...)`` use them), ``"current_model_state"`` the weights being trained and
  ``"averaging_state"`` the average's bookkeeping (``n_averaged``). Resuming fit from such a file
  restores both, so the run continues bit for bit.

fulmen differs in one place on purpose: before the first update there is no average, so
validation and the end of training keep the module's own weights instead of the copy taken
when fit started.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer

#: Keyword arguments passed on to ``AveragedModel``.
_AVERAGED_MODEL_KWARGS = ("avg_fn", "multi_avg_fn")
_PREFIX = "module."  # where AveragedModel keeps the copy's entries in its state_dict


def _check_device(device: Any) -> torch.device | int | None:
    if device is None or (isinstance(device, int) and not isinstance(device, bool)):
        return device
    if isinstance(device, (str, torch.device)):
        try:
            return torch.device(device)
        except RuntimeError:
            pass
    raise invalid_argument("device", device, "None (beside the model), a torch.device, a device string or an index")


class WeightAveraging(Callback):
    """Average the weights after every optimizer step (by default) and use the average to validate.

    Args:
        device: where the averaged copy lives; ``None`` (default) beside the model. ``"cpu"``
            saves accelerator memory at the cost of a copy per update.
        use_buffers: average the buffers (BatchNorm statistics) too. With ``False`` the copy's
            buffers follow the model's at each update, as ``AveragedModel`` does.
        **kwargs: ``avg_fn`` or ``multi_avg_fn`` for ``AveragedModel``; the default is the
            equal-weight running mean (SWA).

    Override :meth:`should_update` to choose when the average is updated.
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(_AVERAGED_MODEL_KWARGS))
        if unknown:
            raise invalid_argument(unknown[0], kwargs[unknown[0]], f"keyword arguments {_AVERAGED_MODEL_KWARGS}")
        for name, fn in kwargs.items():
            if fn is not None and not callable(fn):
                raise invalid_argument(name, fn, "None or a function (see torch.optim.swa_utils.AveragedModel)")
        if not isinstance(use_buffers, bool):
            raise invalid_argument("use_buffers", use_buffers, (True, False))
        self._device = _check_device(device)
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: AveragedModel | None = None
        # global_step at the last update: 0 means the first candidate is the first optimizer step
        # (which comes after N batches with accumulate_grad_batches=N).
        self._latest_update_step = 0
        # The epoch whose end last updated the average; -1: none yet.
        self._latest_update_epoch = -1
        self._swapped = False

    # --------------------------------------------------------------------------- the policy
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to update after optimizer step ``step_idx`` or epoch ``epoch_idx`` (both from 0).

        Called with one of them set. The default updates after every optimizer step.
        """
        return step_idx is not None

    @property
    def average_model(self) -> AveragedModel | None:
        """The ``AveragedModel``: known once fit has started."""
        return self._average_model

    @property
    def n_averaged(self) -> int:
        """How many updates the average holds."""
        return int(self._average_model.n_averaged) if self._average_model is not None else 0

    # ------------------------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            # A new fit starts a new average; a resumed one gets its own back from the checkpoint.
            self._average_model = None
            self._latest_update_step = 0
            self._latest_update_epoch = -1
            self._swapped = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here rather than in setup: `configure_model` has created every layer by now, and the
        # module sits on its device.
        self._ensure_average_model(pl_module)

    def _ensure_average_model(self, pl_module: LightningModule) -> AveragedModel:
        if self._average_model is None:
            device = self._device if self._device is not None else pl_module.device
            self._average_model = AveragedModel(pl_module, device=device, use_buffers=self._use_buffers, **self._kwargs)
        return self._average_model

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # Batches inside an accumulation window share a step: one update per optimizer step.
        if step > self._latest_update_step and self.should_update(step_idx=step - 1):
            self._ensure_average_model(pl_module).update_parameters(pl_module)
            self._latest_update_step = step

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and self.should_update(epoch_idx=epoch):
            self._ensure_average_model(pl_module).update_parameters(pl_module)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.n_averaged > 0:
            self._copy_average_to(pl_module)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # During fit only: afterwards the module already holds the average, and a later
        # `validate` may be given another module.
        if self.n_averaged > 0 and not self._swapped and trainer.state.fn == TrainerFn.FITTING:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # A failure inside validation must not leave the averaged weights in the module: a rescue
        # checkpoint written after this hook would store them as the weights being trained.
        if self._swapped and pl_module is not None:
            self._swap(pl_module)

    # ---------------------------------------------------------------------------- swapping
    def _pairs(self, pl_module: nn.Module) -> Any:
        average = self._average_model.module
        return zip(
            itertools.chain(average.parameters(), average.buffers()),
            itertools.chain(pl_module.parameters(), pl_module.buffers()),
        )

    @torch.no_grad()
    def _swap(self, pl_module: nn.Module) -> None:
        for average, current in self._pairs(pl_module):
            kept = current.detach().clone()
            current.copy_(average.to(current.device))
            average.copy_(kept.to(average.device))
        self._swapped = not self._swapped

    @torch.no_grad()
    def _copy_average_to(self, pl_module: nn.Module) -> None:
        for average, current in self._pairs(pl_module):
            current.copy_(average.to(current.device))

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step, "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = int(state_dict["latest_update_step"])
        self._latest_update_epoch = int(state_dict.get("latest_update_epoch", -1))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return  # outside fit there is no average: the file holds the module's weights as they are
        average_state = self._average_model.state_dict()
        copy = {name[len(_PREFIX) :]: value for name, value in average_state.items() if name.startswith(_PREFIX)}
        bookkeeping = {name: value for name, value in average_state.items() if not name.startswith(_PREFIX)}
        # While swapped (a save during validation) the module holds the average and the copy the
        # weights being trained.
        current, average = (copy, checkpoint["state_dict"]) if self._swapped else (checkpoint["state_dict"], copy)
        checkpoint["current_model_state"] = current
        checkpoint["state_dict"] = average
        checkpoint["averaging_state"] = bookkeeping

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # validate/test/predict use "state_dict", the averaged weights
        if "current_model_state" not in checkpoint or "averaging_state" not in checkpoint:
            rank_zero_warn(
                "The checkpoint was not written with weight averaging: the average starts anew from the weights "
                "being trained."
            )
            return
        average_state = {_PREFIX + name: value for name, value in checkpoint["state_dict"].items()}
        average_state.update(checkpoint["averaging_state"])
        self._ensure_average_model(pl_module).load_state_dict(average_state)
        # The Trainer loads "state_dict" into the module after this hook: point it at the
        # weights being trained.
        checkpoint["state_dict"] = checkpoint["current_model_state"]
        rank_zero_info(f"{type(self).__name__}: resumed an average of {self.n_averaged} updates.")


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights: ``average = decay * average + (1 - decay) * weights``.

    Args:
        device: where the average lives (``None``: beside the model).
        use_buffers: average the buffers too.
        decay: how much of the average each update keeps, in [0, 1].
        update_every_n_steps: update after every this many optimizer steps (0: never by steps).
        update_starting_at_step: the first optimizer step (from 0) that may update; ``None``: the first.
        update_starting_at_epoch: also update at the end of every epoch from this one on (from 0);
            ``None``: never at epoch ends.
    """

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        given = sorted(set(kwargs) & set(_AVERAGED_MODEL_KWARGS))
        if given:
            raise invalid_argument(
                given[0], kwargs[given[0]], "nothing: EMAWeightAveraging sets its own; use WeightAveraging for another"
            )
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise invalid_argument("decay", decay, "a float in [0, 1]")
        if (
            isinstance(update_every_n_steps, bool)
            or not isinstance(update_every_n_steps, int)
            or update_every_n_steps < 0
        ):
            raise invalid_argument("update_every_n_steps", update_every_n_steps, "an int >= 0 (0: never by steps)")
        for name, value in (
            ("update_starting_at_step", update_starting_at_step),
            ("update_starting_at_epoch", update_starting_at_epoch),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise invalid_argument(name, value, "None or an int >= 0")
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=get_ema_multi_avg_fn(decay), **kwargs)
        self.decay = float(decay)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        if epoch_idx is not None:
            return self.update_starting_at_epoch is not None and epoch_idx >= self.update_starting_at_epoch
        return False
