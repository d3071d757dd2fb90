"""``Callback``: code that runs at fixed points of training, kept out of the model.

Subclass it and override the hooks you need; every hook receives the ``trainer`` and the
``pl_module`` (the ``LightningModule`` being trained). A hook that no callback overrides is
never called, so unused hooks cost nothing per step.

When each hook runs, relative to the ``LightningModule``'s own hooks, is written down once, as
the loop in pseudocode, in :mod:`fulmen.trainer.dispatch`. For a hook that both a callback and the
module implement, the callbacks run first (in the order of ``Trainer(callbacks=[...])``), then
the module — except ``on_train_epoch_end``, where checkpointing and early-stopping callbacks run
after the module so that they can monitor values the module logs in that hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor
from torch.optim import Optimizer

from fulmen.utilities.annotations import resolve_init_annotations

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer


#: The roles a callback can declare for the Trainer (``Callback.trainer_role``).
CHECKPOINT, EARLY_STOPPING, PROGRESS_BAR, MODEL_SUMMARY = (
    "checkpoint",
    "early_stopping",
    "progress_bar",
    "model_summary",
)
#: Roles whose ``on_train_epoch_end`` runs after the module's: they act on what it logged there.
MONITOR_ROLES = (CHECKPOINT, EARLY_STOPPING)


class Callback:
    """Base class of callbacks; every hook is a no-op here."""

    #: What the Trainer treats this kind of callback as, declared by the class (and inherited by
    #: subclasses) so that the Trainer never looks callback classes up by name: ``"checkpoint"``
    #: (runs last in every hook, ``trainer.checkpoint_callbacks``), ``"early_stopping"``,
    #: ``"progress_bar"``, ``"model_summary"`` (``trainer.*_callback``, the default one is not added
    #: again), or None.
    trainer_role: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        resolve_init_annotations(cls)  # real types in the signature, as Lightning's have

    @property
    def state_key(self) -> str:
        """Where this callback's ``state_dict`` lives in a checkpoint's ``"callbacks"`` entry.

        Callbacks that may appear several times with different arguments make it unique, e.g.
        with ``self._generate_state_key(monitor=self.monitor)``.
        """
        return self.__class__.__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        """A state key from the class name and identifying arguments: ``Name{'monitor': 'loss'}``."""
        return f"{self.__class__.__qualname__}{repr(kwargs)}"

    # ------------------------------------------------------------------------ set up / tear down
    def log(self, name: str, value: Any, **kwargs: Any) -> None:
        """``self.log`` from a callback hook: recorded as the module's ``self.log`` is, in the running hook.

        Takes ``LightningModule.log``'s keyword arguments (``prog_bar``, ``on_step``, ...).
        """
        trainer = self.__dict__.get("_trainer")
        module = trainer.lightning_module if trainer is not None else None
        if module is None:
            raise RuntimeError(
                f"`{type(self).__name__}.log({name!r}, ...)` was called outside the hooks a Trainer runs: log from a "
                "callback hook such as on_train_batch_end."
            )
        module.log(name, value, **kwargs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """When fit, validate, test or predict begins; ``stage`` names which ("fit", "validate", ...)."""

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """When fit, validate, test or predict ends."""

    # ------------------------------------------------------------------------------------- fit
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When fit begins (after setup and optimizer configuration)."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When fit ends."""

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Before the validation sanity check."""

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After the validation sanity check."""

    # ------------------------------------------------------------------------------- training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When the training loop begins."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When the training loop ends."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a training epoch begins."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a training epoch ends (after validation, if it ran at the end of the epoch).

        Epoch-level values are in ``trainer.callback_metrics``. To collect step outputs, keep
        them on the module in ``training_step`` and read them here.
        """

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Before ``training_step``; the batch is already on the device."""

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After the optimizer step (automatic optimization) or ``training_step`` (manual).

        ``outputs`` is ``training_step``'s output as a dict with a detached ``"loss"``.
        """

    # ----------------------------------------------------------------------------- validation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a validation run begins (during fit, validate, or the sanity check)."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a validation run ends."""

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a validation epoch begins."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a validation epoch ends."""

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Before ``validation_step``."""

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """After ``validation_step``; ``outputs`` is what it returned."""

    # ----------------------------------------------------------------------------------- test
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When testing begins."""

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When testing ends."""

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a test epoch begins."""

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a test epoch ends."""

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Before ``test_step``."""

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """After ``test_step``; ``outputs`` is what it returned."""

    # -------------------------------------------------------------------------------- predict
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When prediction begins."""

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When prediction ends."""

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a prediction epoch begins."""

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """When a prediction epoch ends."""

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Before ``predict_step``."""

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """After ``predict_step``; ``outputs`` is the prediction."""

    # --------------------------------------------------------------------------- optimization
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        """Before ``loss.backward()``."""

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``loss.backward()``, before the optimizer step; gradients are available."""

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        """Before ``optimizer.step()`` and before gradient clipping."""

    def on_before_zero_grad(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        """Before ``optimizer.zero_grad()``."""

    # ------------------------------------------------------------------------------ exception
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """When fit, validate, test or predict raises; the exception is re-raised afterwards."""

    # ----------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """This callback's state, saved in checkpoints under ``state_key``."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """When a checkpoint is saved; add to or change ``checkpoint`` in place."""

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """When a checkpoint is loaded; ``checkpoint`` is the whole loaded dict."""


#: Every hook a callback may override, in the order they are documented above.
CALLBACK_HOOKS: tuple[str, ...] = tuple(
    name
    for name, value in vars(Callback).items()
    if callable(value) and (name in ("setup", "teardown") or name.startswith("on_"))
)
