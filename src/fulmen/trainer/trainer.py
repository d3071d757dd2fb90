"""``Trainer``: runs a ``LightningModule``'s loops (fit, validate, test, predict) on a ``Strategy``.

The Trainer is configuration plus entry points. The flags shared with Lite (``accelerator``,
``devices``, ``strategy``, ``precision``, ``num_nodes``, ``plugins``) go through
``fulmen.strategies.select_strategy``; the others are validated into a ``TrainerConfig``
(:mod:`fulmen.trainer.configuration`). Each entry point creates a :class:`~fulmen.trainer.run.Run`
that lives for that call; the loops (:mod:`fulmen.trainer.loops`) are functions of it, and the
public properties below read it. The hook order is documented in :mod:`fulmen.trainer.dispatch`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.callbacks.callback import Callback
from fulmen.callbacks.timer import Timer
from fulmen.checkpointing.checkpoint_io import CheckpointIO
from fulmen.datamodule import LightningDataModule
from fulmen.loggers.logger import Logger
from fulmen.module import LightningModule
from fulmen.module.optimizer import LRSchedulerConfig
from fulmen.profilers.profiler import Profiler
from fulmen.strategies import Accelerator, LayerSync, Strategy, select_strategy
from fulmen.strategies.environments import ClusterEnvironment
from fulmen.strategies.precision import Precision
from fulmen.trainer import checkpoint_state as checkpoint_io
from fulmen.trainer import configuration, defaults, flags
from fulmen.trainer.configuration import TrainerConfig, configure, defaults_from_env, set_torch_flags
from fulmen.trainer.execution import execute, execute_spawned, handle_exception, receive_spawned, was_handled
from fulmen.trainer.loaders import as_loader_list, load_train_dataloader, train_loader_from, validation_enabled
from fulmen.trainer.loop_views import EvaluationLoopView, FitLoopView
from fulmen.trainer.metrics import Metrics
from fulmen.trainer.profiling import select_profiler
from fulmen.trainer.results_table import print_results
from fulmen.trainer.run import Run
from fulmen.trainer.setup import replace_optimizers
from fulmen.trainer.state import TrainerState
from fulmen.trainer.trainer_properties import CallbackLookups, StrategyProperties
from fulmen.utilities.device_banner import log_device_banner
from fulmen.utilities.exceptions import ConfigurationTypeError, MisconfigurationException, ModelNotAttachedError
from fulmen.utilities.rank_zero import rank_zero_info
from fulmen.utilities.stages import STAGE_OF, RunningStage, TrainerFn, TrainerStatus

#: What an entry point attaches: the module, the datamodule and the loaders passed in, by key.
_Attached = tuple[LightningModule, "LightningDataModule | None", dict[str, Any]]


def _config_attribute(name: str) -> property:
    def read(self: Trainer) -> Any:
        return getattr(self.config, name)

    def write(self: Trainer, value: Any) -> None:
        setattr(self.config, name, value)

    return property(read, write, doc=f"The ``{name}`` flag, as validated.")


def _stage_flag(stage: RunningStage) -> property:
    """``trainer.training``-style flags: read the running stage, or set it (``False`` clears it)."""

    def write(self: Trainer, value: bool) -> None:
        if value:
            self.state.stage = stage
        elif self.state.stage == stage:
            self.state.stage = None

    return property(lambda self: self.state.stage == stage, write, doc=f"Whether the {stage.value} loop is running.")


def _run_attribute(name: str, default: Any = None) -> property:
    """A property that reads the current call's run (``default`` before any call)."""

    def read(self: Trainer) -> Any:
        run = self.current_run
        if run is not None:
            return getattr(run, name)
        return default() if callable(default) else default

    return property(read, doc=f"The current call's ``{name}``.")


class Trainer(StrategyProperties, CallbackLookups):
    """Train, evaluate and predict with a ``LightningModule``; Lightning 2.x's flags and defaults.

    Hardware (shared with Lite, resolved by ``select_strategy``): ``accelerator``, ``devices``,
    ``strategy``, ``precision``, ``num_nodes``, ``plugins``.
    How long: ``max_epochs`` (1000 when no other limit is set; -1 for none), ``min_epochs``,
    ``max_steps`` (optimizer steps; -1 for none), ``min_steps``, ``max_time`` ("DD:HH:MM:SS",
    timedelta or dict). How much: ``limit_{train,val,test,predict}_batches`` (a float is a
    fraction, an int a number of batches), ``overfit_batches``, ``fast_dev_run``.
    Validation: ``val_check_interval`` (fraction of an epoch, or every N batches),
    ``check_val_every_n_epoch`` (None: count batches across epochs), ``num_sanity_val_steps``.
    Optimization: ``accumulate_grad_batches``, ``gradient_clip_val``, ``gradient_clip_algorithm``
    ("norm" or "value"). Data: ``reload_dataloaders_every_n_epochs``, ``use_distributed_sampler``.
    Output: ``logger`` (True: TensorBoard under ``default_root_dir``), ``callbacks``,
    ``log_every_n_steps``, ``enable_progress_bar``, ``enable_model_summary``,
    ``enable_checkpointing``. PyTorch switches: ``deterministic``, ``benchmark``,
    ``detect_anomaly``, ``inference_mode``, ``sync_batchnorm``. ``barebones=True`` turns off
    everything that costs speed (logging, progress bar, summary, checkpoints, sanity check).
    """

    @defaults_from_env
    def __init__(
        self,
        *,
        accelerator: str | Accelerator = "auto",
        strategy: str | Strategy = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int | None = None,
        precision: int | str | None = None,
        logger: Logger | Iterable[Logger] | bool | None = None,
        callbacks: Callback | list[Callback] | None = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Profiler | str | None = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Precision | ClusterEnvironment | CheckpointIO | LayerSync | str | list[Any] | None = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike | None = None,
        enable_autolog_hparams: bool = True,
    ) -> None:
        # Every parameter is a flag of fulmen.trainer.flags.FLAGS (a test holds the two together).
        strategy_flags, config_flags = flags.split({name: value for name, value in locals().items() if name != "self"})
        # Flags shared with Lite: one resolver, one strategy.
        self._strategy: Strategy = select_strategy(**strategy_flags)
        log_device_banner(self._strategy.accelerator)
        self.config: TrainerConfig = configure(**config_flags)
        config = self.config
        set_torch_flags(config.deterministic, config.benchmark)
        self.loggers = defaults.configure_loggers(config.logger, config.default_root_dir)
        if config.fast_dev_run and self.loggers:
            self.loggers = [defaults.no_op_logger()]
        self.callbacks: list[Callback] = defaults.configure_callbacks(
            callbacks,
            enable_checkpointing=config.enable_checkpointing is not False and not config.fast_dev_run,
            enable_progress_bar=config.enable_progress_bar is not False,
            enable_model_summary=config.enable_model_summary is not False,
            checkpointing_flag=config.enable_checkpointing,
            progress_bar_flag=config.enable_progress_bar,
        )
        #: Progress counters and what the Trainer is doing; they outlive each call.
        self.state = TrainerState()
        self.should_stop = False
        #: The values logged so far (``callback_metrics``, ...); they outlive each call.
        self.metrics = Metrics()
        #: The latest call's run state (``fulmen.trainer.run.Run``); a LightningModule uses it
        #: only through ``fulmen.module.run_link.RunLink``.
        self.current_run: Run | None = None
        #: Times the loops' phases and hooks; a PassThroughProfiler (nothing per step) when off.
        self.profiler = select_profiler(profiler)

    # ============================================================================ entry points
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Train ``model`` on a datamodule or on dataloaders (``trainer.fit(model, datamodule)`` works too).

        ``weights_only=False`` loads a trusted ``ckpt_path`` that holds more than fulmen's safe types.
        """

        def attach() -> _Attached:
            module = _check_module(model, "fit")
            train, dm = train_dataloaders, datamodule
            if isinstance(train, LightningDataModule):
                dm, train = train, None
            if dm is not None and (train is not None or val_dataloaders is not None):
                raise MisconfigurationException(
                    "`Trainer.fit` got a datamodule and dataloaders; pass the dataloaders or the datamodule, not both."
                )
            _check_datamodule(dm)
            if train is not None:
                train_loader_from(train)  # a wrong type fails now, naming the argument
            as_loader_list(val_dataloaders, "val_dataloaders")
            return self._attach(TrainerFn.FITTING, module, dm, train=train, val=val_dataloaders)

        self._launch(TrainerFn.FITTING, ckpt_path, attach, weights_only=weights_only)

    def validate(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> list[dict[str, float]]:
        """Run the validation loop once; returns the logged epoch values, one dict per dataloader."""
        return self._evaluate(TrainerFn.VALIDATING, model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> list[dict[str, float]]:
        """Run the test loop once; returns the logged epoch values, one dict per dataloader."""
        return self._evaluate(TrainerFn.TESTING, model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """Run ``predict_step`` over the data; returns the predictions (a list per dataloader when several)."""
        keep = True if return_predictions is None else bool(return_predictions)
        attach = functools.partial(self._attach_for, TrainerFn.PREDICTING, model, dataloaders, datamodule)
        ckpt_path = checkpoint_io.default_evaluation_ckpt_path(self, TrainerFn.PREDICTING, model is not None, ckpt_path)
        return self._launch(TrainerFn.PREDICTING, ckpt_path, attach, weights_only=weights_only, return_predictions=keep)

    def _evaluate(
        self,
        fn: TrainerFn,
        model: LightningModule | None,
        dataloaders: Any,
        ckpt_path: str | None,
        verbose: bool,
        datamodule: LightningDataModule | None,
        weights_only: bool | None,
    ) -> list[dict[str, float]]:
        attach = functools.partial(self._attach_for, fn, model, dataloaders, datamodule)
        ckpt_path = checkpoint_io.default_evaluation_ckpt_path(self, fn, model is not None, ckpt_path)
        results = self._launch(fn, ckpt_path, attach, weights_only=weights_only)
        if verbose and self.is_global_zero and results:
            print_results(results, "Validate" if fn == TrainerFn.VALIDATING else "Test")
        return results

    def _attach_for(self, fn: TrainerFn, model: Any, dataloaders: Any, datamodule: Any) -> _Attached:
        """validate/test/predict: the model and data given, or those of the previous call."""
        name = fn.value
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if dataloaders is not None and datamodule is not None:
            raise MisconfigurationException(
                f"`Trainer.{name}` got a datamodule and dataloaders; pass the dataloaders or the datamodule, not both."
            )
        if model is None:
            model = self.lightning_module
            if model is None:
                raise ConfigurationTypeError(
                    f"`Trainer.{name}()` requires a `LightningModule` when it hasn't been passed in a previous run: "
                    "pass `model`, or call it after a run that attached one."
                )
        model = _check_module(model, name)
        _check_datamodule(datamodule)
        if (
            datamodule is None
            and dataloaders is None
            and self.datamodule is not None
            and model is self.lightning_module
        ):
            datamodule = self.datamodule
        key = {TrainerFn.VALIDATING: "val", TrainerFn.TESTING: "test", TrainerFn.PREDICTING: "predict"}[fn]
        return self._attach(fn, model, datamodule, **{key: dataloaders})

    def _attach(
        self, fn: TrainerFn, model: LightningModule, datamodule: LightningDataModule | None, **loaders: Any
    ) -> _Attached:
        model.trainer = self
        if datamodule is not None:
            datamodule.trainer = self
        return model, datamodule, {key: value for key, value in loaders.items() if value is not None}

    # ============================================================================== launching
    def _launch(
        self,
        fn: TrainerFn,
        ckpt_path: str | None,
        attach: Callable[[], _Attached],
        *,
        weights_only: bool | None = None,
        return_predictions: bool = True,
    ) -> Any:
        """Attach the call's model and data, then run it in every process the strategy needs.

        Any error runs ``on_exception`` (once per process) and is re-raised; Ctrl-C (after that)
        ends the program with status 1, as in Lightning, once the other ranks are stopped.
        """
        try:
            model, datamodule, sources = attach()
            self.current_run = run = Run(
                self, fn, model, datamodule, sources,
                ckpt_path=ckpt_path, weights_only=weights_only, return_predictions=return_predictions,
            )  # fmt: skip
            self.metrics.reset()  # a call reports its own metrics, not the previous call's
            self.state.fn = fn
            self.state.status = TrainerStatus.RUNNING
            self.state.stage = STAGE_OF[fn]
            if fn == TrainerFn.FITTING:
                configuration.resolve_max_epochs(self.config, any(isinstance(c, Timer) for c in self.callbacks))
            launcher = self._strategy.launcher
            if launcher is None:
                return execute(run)
            if launcher.pickles_function:
                for logger in self.loggers:  # fix versions now, so the main process knows the folders
                    _ = logger.version
                return receive_spawned(run, launcher.launch(execute_spawned, run))
            return launcher.launch(execute, run)
        except BaseException as exception:
            if not was_handled(exception):
                handle_exception(self, exception)
            if isinstance(exception, KeyboardInterrupt):
                rank_zero_info("Detected KeyboardInterrupt: the run was stopped; exiting with status 1.")
                raise SystemExit(1) from exception
            raise

    # ============================================================================ checkpoints
    def save_checkpoint(
        self,
        filepath: str | os.PathLike,
        weights_only: bool = False,
        storage_options: dict | None = None,
        *,
        async_save: bool = False,
    ) -> None:
        """Write the model, optimizers, schedulers, progress and callback states to ``filepath``.

        Every process must call it; the strategy has rank 0 write (atomically). ``async_save=True``
        returns once the state is copied to CPU memory: the write runs in the background, and the
        next save and the end of the run wait for it.
        """
        if self.lightning_module is None:
            raise ModelNotAttachedError(
                "Saving a checkpoint is only possible if a model is attached to the Trainer: call "
                "`Trainer.save_checkpoint` after (or during) fit/validate/test/predict."
            )
        checkpoint = checkpoint_io.dump_checkpoint(self, weights_only)
        path = os.fspath(filepath)
        self._strategy.save_checkpoint(checkpoint, path, storage_options=storage_options, async_save=async_save)
        self._strategy.barrier("Trainer.save_checkpoint")

    # ============================================================================== metrics
    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        """Every value logged so far (latest step values, epoch values), for callbacks to monitor."""
        self._fold_current()
        return self.metrics.callback

    @property
    def logged_metrics(self) -> dict[str, Tensor]:
        """The values sent (or due) to the loggers."""
        self._fold_current()
        return self.metrics.logged

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The values logged with ``prog_bar=True``, as Python numbers."""
        self._fold_current()
        return {k: v.item() if isinstance(v, Tensor) else v for k, v in self.metrics.progress_bar.items()}

    def _fold_current(self) -> None:
        if self.current_run is not None:
            self.metrics.fold(self.current_run.results)

    # ============================================================================ properties
    @property
    def strategy(self) -> Strategy:
        return self._strategy

    lightning_module = _run_attribute("module")
    datamodule = _run_attribute("datamodule")
    train_dataloader = _run_attribute("train_dataloader")
    num_training_batches = _run_attribute("num_training_batches", math.inf)
    num_val_batches = _run_attribute("num_val_batches", list)
    num_test_batches = _run_attribute("num_test_batches", list)
    num_predict_batches = _run_attribute("num_predict_batches", list)
    num_sanity_val_batches = _run_attribute("num_sanity_val_batches", list)
    val_check_batch = _run_attribute("val_check_batch", math.inf)
    lr_scheduler_configs: list[LRSchedulerConfig] = _run_attribute("lr_scheduler_configs", list)
    ckpt_path = _run_attribute("ckpt_path")
    model: nn.Module | None = _run_attribute("model")
    model.__doc__ = "The model as the strategy runs it (wrapped in DDP, ...); ``lightning_module`` is yours."

    @property
    def val_dataloaders(self) -> Any:
        return _single_or_list(self.current_run.val_dataloaders if self.current_run else None)

    @property
    def test_dataloaders(self) -> Any:
        return _single_or_list(self.current_run.test_dataloaders if self.current_run else None)

    @property
    def predict_dataloaders(self) -> Any:
        return _single_or_list(self.current_run.predict_dataloaders if self.current_run else None)

    @property
    def optimizers(self) -> list[Optimizer]:
        return self.current_run.optimizers if self.current_run is not None else []

    @optimizers.setter
    def optimizers(self, optimizers: list[Optimizer]) -> None:
        run = self.current_run
        if run is None:
            raise RuntimeError("`trainer.optimizers` can be set during a call only (fit/validate/test/predict).")
        replace_optimizers(run, optimizers)

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch running now is the last of its epoch."""
        return self.current_run is not None and self.current_run.is_last_batch

    @property
    def fit_loop(self) -> FitLoopView:
        """Lightning's progress counters for fit (``epoch_progress``, ``epoch_loop.batch_progress``, ...)."""
        return FitLoopView(self)

    @property
    def validate_loop(self) -> EvaluationLoopView:
        return EvaluationLoopView(self)

    test_loop = validate_loop
    predict_loop = validate_loop

    def init_module(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager:
        """Create the model inside: on the right device, in the right dtype, sharded where the strategy shards.

        ``empty_init=True`` skips the layers' weight initialisation (weights a checkpoint will overwrite).
        """
        return self._strategy.module_init_context(empty_init=empty_init)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    @property
    def current_epoch(self) -> int:
        return self.state.current_epoch

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def default_root_dir(self) -> str:
        return self.config.default_root_dir

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self.loggers = [] if logger is None else [logger]

    @property
    def log_dir(self) -> str | None:
        """The first logger's folder (``default_root_dir`` without a logger)."""
        logger = self.logger
        if logger is None:
            return self.default_root_dir
        return logger.log_dir if logger.log_dir is not None else logger.save_dir

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    @property
    def received_sigterm(self) -> bool:
        return self.current_run is not None and self.current_run.received_signal == signal.SIGTERM

    # One property per stage: True while that loop runs; setting it switches the stage.
    training = _stage_flag(RunningStage.TRAINING)
    sanity_checking = _stage_flag(RunningStage.SANITY_CHECKING)
    validating = _stage_flag(RunningStage.VALIDATING)
    testing = _stage_flag(RunningStage.TESTING)
    predicting = _stage_flag(RunningStage.PREDICTING)

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def enable_validation(self) -> bool:
        return self.current_run is not None and validation_enabled(self.current_run)

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the whole fit will take (for schedulers like OneCycleLR)."""
        config = self.config
        if config.max_epochs == -1:
            return math.inf if config.max_steps == -1 else config.max_steps
        run = self.current_run
        if run is None:
            raise RuntimeError("`estimated_stepping_batches` needs a model: read it during `fit`.")
        if run.train_dataloader is None:
            load_train_dataloader(run)
        batches = run.num_training_batches
        if batches == math.inf:
            return config.max_steps if config.max_steps != -1 else math.inf
        steps = math.ceil(batches / config.accumulate_grad_batches) * max(config.max_epochs, 1)
        return min(steps, config.max_steps) if config.max_steps != -1 else steps

    def __repr__(self) -> str:
        return f"Trainer(strategy={self._strategy!r}, max_epochs={self.max_epochs}, max_steps={self.max_steps})"


for _name in flags.ATTRIBUTES:
    setattr(Trainer, _name, _config_attribute(_name))


def _check_module(model: Any, entry: str) -> LightningModule:
    if not isinstance(model, LightningModule):
        raise TypeError(f"`Trainer.{entry}()`: `model` must be a `LightningModule`, got `{type(model).__qualname__}`.")
    return model


def _check_datamodule(datamodule: Any) -> None:
    if datamodule is not None and not isinstance(datamodule, LightningDataModule):
        raise TypeError(f"`datamodule` must be a `LightningDataModule`; got {type(datamodule).__name__}.")


def _single_or_list(loaders: list[Any] | None) -> Any:
    if loaders is None:
        return None
    return loaders[0] if len(loaders) == 1 else loaders


__all__ = ["Trainer"]
