"""``LightningModule``: an ``nn.Module`` that also says how it is trained, validated, tested and used.

The Trainer calls its hooks; when exactly is written down once, as the loop in pseudocode, in
:mod:`fulmen.trainer.dispatch`. The module never touches devices, processes or precision itself:
the methods that need them (``log`` with ``sync_dist``, ``all_gather``, ``manual_backward``,
``clip_gradients``) ask the Trainer, which asks its ``Strategy``.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Generator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.checkpointing.migration import match_module_keys
from fulmen.checkpointing.rebuild import instantiate, read_checkpoint, restricted_classmethod
from fulmen.module import export
from fulmen.module.data_hooks import DataHooks
from fulmen.module.hooks import ModelHooks
from fulmen.module.lite_link import clip_through_lite, log_through_lite
from fulmen.module.optimizer import LightningOptimizer
from fulmen.utilities.apply_func import apply_to_collection
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.hparams import HyperparametersMixin
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.module.run_link import RunLink
    from fulmen.trainer import Trainer


class LightningModule(ModelHooks, DataHooks, HyperparametersMixin, nn.Module):
    """Subclass it: define ``training_step`` and ``configure_optimizers`` at least."""

    #: Checkpoint keys of the hyperparameters, as Lightning names them.
    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"
    #: Properties TorchScript must not compile (they reach the Trainer): ``torch.jit.script(model)`` works.
    __jit_unused_properties__: list[str] = [  # noqa: RUF012
        "trainer", "device", "dtype", "automatic_optimization", "strict_loading", "example_input_array",
        "current_epoch", "global_step", "global_rank", "local_rank", "logger", "loggers", "hparams",
        "hparams_initial", "_attached", "_log_hyperparams_enabled", "fabric", "device_mesh", "on_gpu",
    ]  # fmt: skip

    #: Run ``prepare_data`` on local rank 0 of every node (True) or only on global rank 0 (False).
    prepare_data_per_node: bool = True
    allow_zero_length_dataloader_with_multiple_devices: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d = self.__dict__
        d["_trainer"] = None
        d["_fabric"] = None
        d["_example_input_array"] = None
        d["_automatic_optimization"] = True
        d["_strict_loading"] = None
        d["_param_requires_grad_state"] = {}
        d["_device"] = torch.device("cpu")
        d["_dtype"] = torch.get_default_dtype()

    # ------------------------------------------------------------------------------ properties
    @property
    def trainer(self) -> Trainer:
        trainer = self.__dict__.get("_trainer")
        if trainer is None and not self.__dict__.get("_jit_is_scripting", False):
            raise RuntimeError(f"{type(self).__qualname__} is not attached to a `Trainer`.")
        return trainer

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        for child in self.children():  # an ensemble's inner modules share its Trainer, as in Lightning
            if isinstance(child, LightningModule):
                child.trainer = trainer
        self.__dict__["_trainer"] = trainer

    @property
    def fabric(self) -> Any:
        """The ``Lite`` that set this module up (``lite.setup(module)``), or None; see ``module.lite_link``."""
        return self.__dict__.get("_fabric")

    @fabric.setter
    def fabric(self, lite: Any) -> None:
        for child in self.children():
            if isinstance(child, LightningModule):
                child.fabric = lite
        # A strong reference (Lightning keeps a weak one): `Lite(...).setup(module)` in one line must
        # still log; the cycle Lite -> module -> Lite is collected as any other.
        self.__dict__["_fabric"] = lite

    def _run_link(self) -> RunLink:
        """The Trainer call that runs this module: what ``manual_backward`` and ``clip_gradients`` need."""
        run = self.trainer.current_run
        if run is None:
            raise RuntimeError(
                f"{type(self).__qualname__} is attached to a Trainer that is not running it: call this from a hook."
            )
        return run

    @property
    def _attached(self) -> bool:
        return self.__dict__.get("_trainer") is not None

    @property
    def device(self) -> torch.device:
        """The device the module's parameters are on (updated by ``.to()``, ``.cuda()``, ...)."""
        return self.__dict__.get("_device", torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        return self.__dict__.get("_dtype", torch.get_default_dtype())

    @property
    def on_gpu(self) -> bool:
        """Whether the module is on a CUDA device (``self.device.type == "cuda"``)."""
        return self.device.type == "cuda"

    @property
    def device_mesh(self) -> Any:
        """The strategy's ``DeviceMesh`` (``ModelParallelStrategy``: dims ``("data_parallel",
        "tensor_parallel")``) for ``configure_model`` to lay the module out on; None under others."""
        source = self.__dict__.get("_trainer") or self.__dict__.get("_fabric")
        return None if source is None else source.strategy.device_mesh

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> LightningModule:
        result = super()._apply(fn, *args, **kwargs)
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), None)
        if tensor is not None:
            self.__dict__["_device"] = tensor.device
            if tensor.is_floating_point():
                self.__dict__["_dtype"] = tensor.dtype
        return result

    @property
    def automatic_optimization(self) -> bool:
        """False: ``training_step`` calls the optimizers itself (manual optimization)."""
        return self.__dict__.get("_automatic_optimization", True)

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self.__dict__["_automatic_optimization"] = value

    @property
    def strict_loading(self) -> bool:
        strict = self.__dict__.get("_strict_loading")
        return True if strict is None else strict

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self.__dict__["_strict_loading"] = value

    @property
    def example_input_array(self) -> Any:
        """An example input (for graph logging and the model summary)."""
        return self.__dict__.get("_example_input_array")

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self.__dict__["_example_input_array"] = example

    @property
    def current_epoch(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.current_epoch if trainer is not None else 0

    @property
    def global_step(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.global_step if trainer is not None else 0

    @property
    def global_rank(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.global_rank if trainer is not None else 0

    @property
    def local_rank(self) -> int:
        trainer = self.__dict__.get("_trainer")
        return trainer.local_rank if trainer is not None else 0

    @property
    def logger(self) -> Any:
        lite = self.__dict__.get("_fabric")
        if lite is not None:
            return lite.loggers[0]  # IndexError without loggers, as under Lightning's Fabric
        trainer = self.__dict__.get("_trainer")
        return trainer.logger if trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        lite = self.__dict__.get("_fabric")
        if lite is not None:
            return lite.loggers
        trainer = self.__dict__.get("_trainer")
        return trainer.loggers if trainer is not None else []

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only, without breaking the progress bar."""
        trainer = self.__dict__.get("_trainer")
        if trainer is not None and not trainer.is_global_zero:
            return
        bar = trainer.progress_bar_callback if trainer is not None else None
        if bar is not None and getattr(bar, "is_enabled", False) and hasattr(bar, "print"):
            bar.print(*args, **kwargs)
        else:
            print(*args, **kwargs)

    # ---------------------------------------------------------------------------------- steps
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Compute and return the training loss (a tensor, or a dict with ``"loss"``; None skips the batch)."""
        raise MisconfigurationException(
            f"`training_step` must be implemented in {type(self).__name__} to be used with `Trainer.fit`."
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one validation batch; log what you want to monitor."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one test batch."""

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """Return the prediction for one batch; by default ``self(batch)``."""
        batch = kwargs.get("batch", args[0] if args else None)
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return the optimizers (and schedulers): see :mod:`fulmen.module.optimizer` for the forms."""
        rank_zero_warn(
            f"`configure_optimizers` is not implemented in {type(self).__name__}: training runs without an optimizer."
        )
        return None

    def configure_callbacks(self) -> Any:
        """Callbacks this model always wants; they replace Trainer callbacks of the same type."""
        return []

    def configure_model(self) -> None:
        """Create layers here to have them built on the right device (called once per fit/validate/...)."""

    def configure_sharded_model(self) -> None:
        """The older name of ``configure_model``."""

    # -------------------------------------------------------------------------------- logging
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any | None = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Record a value for the loggers, the progress bar and ``trainer.callback_metrics``.

        ``on_step``/``on_epoch`` default by hook: per step in ``training_step`` and the training
        batch hooks, per epoch in validation/test steps and every epoch-level hook. Epoch values
        reduce the step values with ``reduce_fx`` ("mean" weighted by ``batch_size``, "sum",
        "max", "min" or a callable on the stacked values); ``sync_dist`` reduces across
        processes too. A torchmetrics ``Metric`` is computed at epoch end and reset.
        """
        lite = self.__dict__.get("_fabric")
        if lite is not None:
            log_through_lite(lite, {name: value}, logger, f"self.log({name}, {value})")
            return
        trainer = self.__dict__.get("_trainer")
        if trainer is None:
            rank_zero_warn(
                "You are trying to `self.log()` but the `self.trainer` reference is not registered on the model "
                f"yet: `self.log({name!r}, ...)` was called, but the module is not attached to a Trainer; the value "
                "is dropped. Log from the hooks the Trainer calls."
            )
            return
        run = trainer.current_run
        results = run.results if run is not None else None
        if trainer.predicting:
            raise MisconfigurationException(
                "You are trying to `self.log()` but the loop's result collection is not registered yet: "
                f"`self.log({name!r}, ...)` was called during `predict`, which does not support logging."
            )
        if results is None:
            raise MisconfigurationException(
                f"`self.log({name!r}, ...)` was called outside the Trainer's loops. "
                "Log from the hooks the Trainer calls (training_step, on_train_epoch_end, ...)."
            )
        results.log(
            name,
            value,
            prog_bar,
            logger,
            on_step,
            on_epoch,
            reduce_fx,
            enable_graph,
            sync_dist,
            sync_dist_group,
            add_dataloader_idx,
            batch_size,
            rank_zero_only,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any | None = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``log`` every entry of ``dictionary`` (a dict or a torchmetrics ``MetricCollection``)."""
        if not hasattr(dictionary, "items"):
            raise invalid_argument("dictionary", dictionary, "a dict of name -> value, or a MetricCollection")
        lite = self.__dict__.get("_fabric")
        if lite is not None:
            log_through_lite(lite, dictionary, logger, f"self.log_dict({dict(dictionary)})")
            return
        for name, value in dictionary.items():
            self.log(
                name,
                value,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                enable_graph=enable_graph,
                sync_dist=sync_dist,
                sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size,
                rank_zero_only=rank_zero_only,
            )

    # ---------------------------------------------------------------------------- distributed
    def all_gather(self, data: Any, group: Any | None = None, sync_grads: bool = False) -> Any:
        """Gather tensors (or collections of them) from every process.

        With several processes each tensor gains a leading dim of world size; one process returns it unchanged.
        """
        strategy = self.trainer.strategy

        def gather(tensor: Tensor) -> Any:
            return strategy.all_gather(tensor, group=group, sync_grads=sync_grads)

        data = apply_to_collection(data, (numbers.Number,), lambda x: torch.tensor(x, device=self.device))
        return apply_to_collection(data, Tensor, gather)

    # --------------------------------------------------------------------------- optimization
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer (or list of them) from ``configure_optimizers``, as set up by the Trainer."""
        run = self.trainer.current_run
        if run is None:
            return []
        optimizers = run.lightning_optimizers if use_pl_optimizer else run.optimizers
        if len(optimizers) == 1:
            return optimizers[0]
        return list(optimizers)

    def lr_schedulers(self) -> Any:
        """The scheduler (or list of them) from ``configure_optimizers``, or None."""
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        schedulers = [config.scheduler for config in configs]
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Replaces ``loss.backward()`` in manual optimization (precision scaling, hooks, engines)."""
        if self.automatic_optimization:
            raise MisconfigurationException(
                "`manual_backward` is for manual optimization; set `self.automatic_optimization = False` first."
            )
        self._run_link().backward(loss, *args, **kwargs)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Called to run backward on the loss; override for custom behaviour."""
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: Optimizer | LightningOptimizer) -> None:
        """Freeze every parameter that ``optimizer`` does not train (undo with ``untoggle_optimizer``)."""
        state: dict[Tensor, bool] = {}
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                for param in group["params"]:
                    if param not in state:
                        state[param] = param.requires_grad
                        param.requires_grad = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.requires_grad = state.get(param, True)
        self.__dict__["_param_requires_grad_state"] = state

    def untoggle_optimizer(self, optimizer: Optimizer | LightningOptimizer) -> None:
        """Restore the ``requires_grad`` flags that ``toggle_optimizer`` changed."""
        state = self.__dict__.get("_param_requires_grad_state", {})
        raw = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        for opt in self.trainer.optimizers:
            if opt is raw:
                continue
            for group in opt.param_groups:
                for param in group["params"]:
                    if param in state:
                        param.requires_grad = state[param]
        self.__dict__["_param_requires_grad_state"] = {}

    @contextmanager
    def toggled_optimizer(self, optimizer: Optimizer | LightningOptimizer) -> Generator[None, None, None]:
        """``toggle_optimizer`` for the duration of a ``with`` block."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or by value."""
        lite = self.__dict__.get("_fabric")
        if lite is not None:
            clip_through_lite(lite, self, optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        self._run_link().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Called before every optimizer step with the Trainer's clipping flags; override to clip your way."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step the optimizer. An override must call ``optimizer.step(closure=optimizer_closure)``."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        """Step one scheduler; ``metric`` is the monitored value for ReduceLROnPlateau."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # -------------------------------------------------------------------------------- export
    @torch.no_grad()
    def to_torchscript(
        self, file_path: str | os.PathLike | None = None, method: str = "script", example_inputs: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        """The module as TorchScript (``"script"`` or ``"trace"`` on ``example_inputs`` / ``example_input_array``)."""
        example = example_inputs if example_inputs is not None else self.example_input_array
        return export.to_torchscript(self, file_path, method, example, **kwargs)

    @torch.no_grad()
    def to_onnx(self, file_path: str | os.PathLike | Any = None, input_sample: Any = None, **kwargs: Any) -> Any:
        """Export the module as ONNX on ``input_sample`` (default: ``example_input_array``), as Lightning does.

        ``file_path``: a path or a binary file object to write; None writes no file and returns
        torch's ``ONNXProgram`` (the dynamo exporter, which needs ``onnxscript``).
        """
        sample = input_sample if input_sample is not None else self.example_input_array
        return export.to_onnx(self, file_path, sample, **kwargs)

    def freeze(self) -> LightningModule:
        """Make every parameter untrainable and switch to eval mode; returns the module (as Lightning's)."""
        for param in self.parameters():
            param.requires_grad = False
        return self.eval()

    def unfreeze(self) -> LightningModule:
        """Make every parameter trainable and switch to train mode; returns the module (as Lightning's)."""
        for param in self.parameters():
            param.requires_grad = True
        return self.train()

    # --------------------------------------------------------------------- checkpoint hooks
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to or change the checkpoint dict before it is written."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what ``on_save_checkpoint`` added."""

    @restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Any,
        map_location: Any = None,
        hparams_file: str | Any = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> LightningModule:
        """Rebuild the module from a checkpoint: ``cls(**saved hyperparameters, **kwargs)`` plus its weights.

        ``map_location`` places the tensors (and the module) like ``torch.load``'s argument;
        ``strict`` defaults to ``strict_loading``; ``weights_only=False`` lets a trusted file hold
        types beyond fulmen's allowlist. Works for files saved from a ``torch.compile``d module.
        """
        checkpoint = read_checkpoint(checkpoint_path, map_location, weights_only)
        model = instantiate(cls, checkpoint.get("hyper_parameters"), hparams_file, kwargs)
        model.on_load_checkpoint(checkpoint)
        state_dict = match_module_keys(checkpoint["state_dict"], model)
        model.load_state_dict(state_dict, strict=model.strict_loading if strict is None else strict)
        if isinstance(map_location, (str, torch.device)):
            model.to(map_location)
        return model

    # -------------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        # The Trainer holds processes, files and loggers; a copied or pickled module leaves it behind.
        state = self.__dict__.copy()
        state["_trainer"] = None
        state["_fabric"] = None
        return state


#: Hooks the Trainer calls on the module. Those not overridden are skipped, or (where the default
#: does work, like ``optimizer_step``) done by the Trainer directly.
MODULE_HOOKS: tuple[str, ...] = tuple(
    name
    for name, value in {**vars(ModelHooks), **vars(DataHooks), **vars(LightningModule)}.items()
    if callable(value)
    and (
        name.startswith("on_")
        or name
        in (
            "setup", "teardown", "prepare_data", "configure_model", "configure_sharded_model", "optimizer_step",
            "optimizer_zero_grad",
            "configure_gradient_clipping", "backward", "lr_scheduler_step", "transfer_batch_to_device",
        )
    )
)  # fmt: skip
