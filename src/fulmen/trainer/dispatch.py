"""The order in which the Trainer calls hooks, and the one dispatcher that calls them.

This docstring is the reference for hook order; ``tests/trainer/test_hook_order.py`` runs
fit, validate, test and predict with every hook recorded and compares the record with the
pseudocode below, expanded for the run's number of epochs and batches. ``callbacks.X`` means
every callback that overrides ``X``, in ``Trainer(callbacks=[...])`` order; ``module.X`` the
``LightningModule``; ``datamodule.X`` the ``LightningDataModule`` when one is given. A hook
nobody overrides is not called at all. ``transfer_batch_to_device`` and the two batch-transfer
hooks belong to the datamodule instead when it overrides them.

.. code-block:: python

    def fit():
        module.configure_callbacks()
        datamodule.prepare_data()         # on local rank 0 of each node (global rank 0 with
        module.prepare_data()             # prepare_data_per_node=False); the other ranks wait
        datamodule.setup(stage="fit")
        callbacks.setup(stage="fit")
        module.setup(stage="fit")
        module.configure_model()          # inside the strategy's module init context
        module.configure_optimizers()
        callbacks.on_fit_start()
        module.on_fit_start()             # then the gradients are zeroed (nn.Module.zero_grad, every stage)
        if sanity check:                  # num_sanity_val_steps > 0 and validation is enabled
            callbacks.on_sanity_check_start()
            validation_run()              # at most num_sanity_val_steps batches per loader, not logged
            callbacks.on_sanity_check_end()
        datamodule.train_dataloader()     # or module.train_dataloader(), or the loader passed to fit
        callbacks.on_train_start()
        module.on_train_start()
        for epoch in epochs:              # until max_epochs, max_steps, max_time or should_stop
            if reload due:                # reload_dataloaders_every_n_epochs
                datamodule.train_dataloader()
            callbacks.on_train_epoch_start()
            module.on_train_epoch_start()
            for batch in train batches:
                module.on_before_batch_transfer(batch, 0)
                module.transfer_batch_to_device(batch, device, 0)
                module.on_after_batch_transfer(batch, 0)
                callbacks.on_train_batch_start(batch, batch_idx)
                module.on_train_batch_start(batch, batch_idx)     # returning -1 ends the epoch now
                if automatic optimization:
                    if accumulating:      # inside an accumulation window: no optimizer step
                        closure()
                    else:         # the hook calls optimizer.step(closure), which runs closure():
                        module.optimizer_step(epoch, batch_idx, optimizer, closure)
                        closure()
                else:
                    module.training_step(batch, batch_idx)        # calls manual_backward, opt.step()
                if scheduler due:         # "step" schedulers every `frequency` steps, "epoch" ones
                    module.lr_scheduler_step(scheduler, None)     # after the epoch's last batch
                callbacks.on_train_batch_end(outputs, batch, batch_idx)
                module.on_train_batch_end(outputs, batch, batch_idx)
                if validation due:        # val_check_interval, check_val_every_n_epoch, should_stop
                    module.on_validation_model_zero_grad()
                    validation_run()
            callbacks.on_train_epoch_end()        # every callback but checkpointing / early stopping
            module.on_train_epoch_end()
            if checkpointing or early stopping callbacks:
                callbacks.on_train_epoch_end()    # those, after the module: they monitor what it logs
            if plateau scheduler due:
                module.lr_scheduler_step(scheduler, monitored_value)
        callbacks.on_train_end()
        module.on_train_end()
        callbacks.on_fit_end()
        module.on_fit_end()
        datamodule.teardown(stage="fit")
        callbacks.teardown(stage="fit")
        module.teardown(stage="fit")

    def closure():                        # called once per batch; LBFGS-like optimizers call it again
        module.training_step(batch, batch_idx)
        if first batch of an accumulation window:
            callbacks.on_before_zero_grad(optimizer)
            module.on_before_zero_grad(optimizer)
            module.optimizer_zero_grad(epoch, batch_idx, optimizer)
        callbacks.on_before_backward(loss)
        module.on_before_backward(loss)
        module.backward(loss)             # loss / accumulate_grad_batches, through the strategy
        callbacks.on_after_backward()
        module.on_after_backward()
        if not accumulating:
            callbacks.on_before_optimizer_step(optimizer)
            module.on_before_optimizer_step(optimizer)
            module.configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def validation_run():                 # grad disabled (inference_mode) throughout
        if first run or reload due:
            datamodule.val_dataloader()
        module.on_validation_model_eval() # model.eval()
        callbacks.on_validation_start()
        module.on_validation_start()
        callbacks.on_validation_epoch_start()
        module.on_validation_epoch_start()
        for batch in val batches:         # every val dataloader in turn; with several of them the
            module.on_before_batch_transfer(batch, dataloader_idx)   # hooks and validation_step
            module.transfer_batch_to_device(batch, device, dataloader_idx)   # also get
            module.on_after_batch_transfer(batch, dataloader_idx)    # dataloader_idx
            callbacks.on_validation_batch_start(batch, batch_idx)
            module.on_validation_batch_start(batch, batch_idx)
            module.validation_step(batch, batch_idx)
            callbacks.on_validation_batch_end(outputs, batch, batch_idx)
            module.on_validation_batch_end(outputs, batch, batch_idx)
        callbacks.on_validation_epoch_end()
        module.on_validation_epoch_end()
        callbacks.on_validation_end()
        module.on_validation_end()
        module.on_validation_model_train()   # model.train() (validate() restores the mode it found)

    def validate():
        module.configure_callbacks()
        datamodule.prepare_data()
        module.prepare_data()
        datamodule.setup(stage="validate")
        callbacks.setup(stage="validate")
        module.setup(stage="validate")
        module.configure_model()
        validation_run()
        datamodule.teardown(stage="validate")
        callbacks.teardown(stage="validate")
        module.teardown(stage="validate")

    def test():
        module.configure_callbacks()
        datamodule.prepare_data()
        module.prepare_data()
        datamodule.setup(stage="test")
        callbacks.setup(stage="test")
        module.setup(stage="test")
        module.configure_model()
        datamodule.test_dataloader()
        module.on_test_model_eval()
        callbacks.on_test_start()
        module.on_test_start()
        callbacks.on_test_epoch_start()
        module.on_test_epoch_start()
        for batch in test batches:
            module.on_before_batch_transfer(batch, dataloader_idx)
            module.transfer_batch_to_device(batch, device, dataloader_idx)
            module.on_after_batch_transfer(batch, dataloader_idx)
            callbacks.on_test_batch_start(batch, batch_idx)
            module.on_test_batch_start(batch, batch_idx)
            module.test_step(batch, batch_idx)
            callbacks.on_test_batch_end(outputs, batch, batch_idx)
            module.on_test_batch_end(outputs, batch, batch_idx)
        callbacks.on_test_epoch_end()
        module.on_test_epoch_end()
        callbacks.on_test_end()
        module.on_test_end()
        module.on_test_model_train()
        datamodule.teardown(stage="test")
        callbacks.teardown(stage="test")
        module.teardown(stage="test")

    def predict():
        module.configure_callbacks()
        datamodule.prepare_data()
        module.prepare_data()
        datamodule.setup(stage="predict")
        callbacks.setup(stage="predict")
        module.setup(stage="predict")
        module.configure_model()
        datamodule.predict_dataloader()
        module.on_predict_model_eval()
        callbacks.on_predict_start()
        module.on_predict_start()
        callbacks.on_predict_epoch_start()
        module.on_predict_epoch_start()
        for batch in predict batches:
            module.on_before_batch_transfer(batch, dataloader_idx)
            module.transfer_batch_to_device(batch, device, dataloader_idx)
            module.on_after_batch_transfer(batch, dataloader_idx)
            callbacks.on_predict_batch_start(batch, batch_idx)
            module.on_predict_batch_start(batch, batch_idx)
            module.predict_step(batch, batch_idx)
            callbacks.on_predict_batch_end(outputs, batch, batch_idx)
            module.on_predict_batch_end(outputs, batch, batch_idx)
        callbacks.on_predict_epoch_end()
        module.on_predict_epoch_end()
        callbacks.on_predict_end()
        module.on_predict_end()
        datamodule.teardown(stage="predict")
        callbacks.teardown(stage="predict")
        module.teardown(stage="predict")

On an exception in any of them: ``callbacks.on_exception``, ``datamodule.on_exception``,
``module.on_exception``, then every logger's ``finalize("failed")``, then the exception is
re-raised. ``Trainer.save_checkpoint`` calls ``callbacks.state_dict``,
``callbacks.on_save_checkpoint`` and ``module.on_save_checkpoint`` in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.callback import CALLBACK_HOOKS, MONITOR_ROLES, Callback
from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule
from fulmen.module.module import MODULE_HOOKS
from fulmen.trainer import profiling
from fulmen.utilities.overrides import is_overridden

if TYPE_CHECKING:
    from fulmen.trainer.run import Run
    from fulmen.trainer.trainer import Trainer

#: Module hooks whose default does work; the loops call them (or do that work) even when not overridden.
BATCH_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
_DATAMODULE_HOOKS = ("prepare_data", "setup", "teardown", "on_exception", *BATCH_TRANSFER_HOOKS)
#: Module methods the Trainer calls through the dispatcher that are not hooks.
_MODULE_METHODS = ("configure_optimizers",)


class Hooks:
    """Who implements which hook, computed once per run, and the calls in documented order.

    ``self.log`` attributes a value to the hook that is running, so each call runs inside
    ``run.results.hook(name)``.
    """

    def __init__(
        self,
        trainer: Trainer,
        module: LightningModule,
        callbacks: Sequence[Callback],
        datamodule: LightningDataModule | None,
        run: Run | None = None,
    ) -> None:
        self._trainer = trainer
        self._module = module
        self._run = run
        self.callbacks: dict[str, list[Callable[..., Any]]] = {
            name: [getattr(cb, name) for cb in callbacks if is_overridden(cb, Callback, name)]
            for name in CALLBACK_HOOKS
        }
        # Checkpointing and early stopping see what the module logs in its own on_train_epoch_end.
        epoch_end = [cb for cb in callbacks if is_overridden(cb, Callback, "on_train_epoch_end")]
        self.epoch_end_first = [cb.on_train_epoch_end for cb in epoch_end if cb.trainer_role not in MONITOR_ROLES]
        self.epoch_end_monitors = [cb.on_train_epoch_end for cb in epoch_end if cb.trainer_role in MONITOR_ROLES]
        self.module: dict[str, Callable[..., Any] | None] = {
            name: getattr(module, name) if is_overridden(module, LightningModule, name) else None
            for name in (*MODULE_HOOKS, *_MODULE_METHODS)
        }
        self.datamodule: dict[str, Callable[..., Any] | None] = {
            name: getattr(datamodule, name)
            if datamodule is not None and is_overridden(datamodule, LightningDataModule, name)
            else None
            for name in _DATAMODULE_HOOKS
        }
        # The batch-transfer hooks run once per batch: the datamodule's if it overrides them,
        # the module's otherwise; None when neither does (the loop then only moves the batch).
        self.transfer: dict[str, Callable[..., Any] | None] = {}
        for name in BATCH_TRANSFER_HOOKS:
            chosen = datamodule is not None and is_overridden(datamodule, LightningDataModule, name, True)
            self.transfer[name] = self.datamodule[name] if chosen else self.module[name]

        #: Whether calling each hook would run anything (read on the per-batch path).
        self.active: dict[str, bool] = {
            name: bool(self.callbacks.get(name)) or self.module.get(name) is not None
            for name in {*self.callbacks, *self.module}
        }
        profiler = trainer.profiler
        if profiling.active(profiler):  # chosen once here: the calls themselves never test for a profiler
            profiling.profile_hooks(self, profiler, module, callbacks, datamodule)

    # Every known hook has an entry in ``active``, ``callbacks``, ``module`` and ``datamodule``:
    # looking a name up there (``[name]``, not ``.get``) makes a misspelt hook fail at once.
    def any(self, name: str) -> bool:
        """Whether a call of ``name`` would run anything."""
        return self.active[name]

    def call(self, name: str, *args: Any) -> Any:
        """``callbacks.name(trainer, module, *args)`` then ``module.name(*args)``; returns the module's result."""
        if not self.active[name]:
            return None
        fns = self.callbacks.get(name)
        module_fn = self.module.get(name)
        with self._run.results.hook(name):
            if fns:
                trainer, module = self._trainer, self._module
                for fn in fns:
                    fn(trainer, module, *args)
            return module_fn(*args) if module_fn is not None else None

    def call_callbacks(self, name: str, *args: Any, fns: list[Callable[..., Any]] | None = None, **kwargs: Any) -> None:
        fns = self.callbacks[name] if fns is None else fns
        if not fns:
            return
        with self._run.results.hook(name):
            trainer, module = self._trainer, self._module
            for fn in fns:
                fn(trainer, module, *args, **kwargs)

    def call_module(self, name: str, *args: Any, always: bool = False, **kwargs: Any) -> Any:
        """The module's hook; with ``always`` even when not overridden (hooks whose default does work)."""
        fn = self.module[name]
        if fn is None:
            if not always:
                return None
            fn = getattr(self._module, name)
        with self._run.results.hook(name):
            return fn(*args, **kwargs)

    def call_datamodule(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = self.datamodule[name]
        return fn(*args, **kwargs) if fn is not None else None

    def train_epoch_end(self) -> None:
        """``on_train_epoch_end``: callbacks, the module, then the monitoring callbacks."""
        self.call_callbacks("on_train_epoch_end", fns=self.epoch_end_first)
        self.call_module("on_train_epoch_end")
        self.call_callbacks("on_train_epoch_end", fns=self.epoch_end_monitors)
