"""``Trainer``: runs a ``LightningModule``'s loops (fit, validate, test, predict) on a ``Strategy``.

The flags shared with Lite (``accelerator``, ``devices``, ``strategy``, ``precision``,
``num_nodes``, ``plugins``) go through ``fulmen.strategies.select_strategy``; every device,
distributed and precision question afterwards goes to the returned strategy. The loops are
plain functions in :mod:`fulmen.trainer.loops`; the hook order is documented in
:mod:`fulmen.trainer.hooks`; everything the loops change is in ``trainer.state``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import math
import os
import re
import signal
from collections.abc import Generator, Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.callbacks.callback import Callback
from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule
from fulmen.module.optimizer import (
    LightningOptimizer,
    LRSchedulerConfig,
    MockOptimizer,
    needs_closure,
    parse_optimizers_config,
    scheduler_configs,
)
from fulmen.strategies import select_strategy
from fulmen.strategies.launchers.multiprocessing import MultiprocessingLauncher
from fulmen.strategies.precision import Precision
from fulmen.strategies.strategy import Strategy
from fulmen.trainer import checkpoint as checkpoint_io
from fulmen.trainer import data, loops
from fulmen.trainer.hooks import Hooks, overrides
from fulmen.trainer.results import ResultStore, to_scalars
from fulmen.trainer.signals import SignalWatch
from fulmen.trainer.state import RunningStage, TrainerFn, TrainerState, TrainerStatus
from fulmen.utilities.apply_func import apply_to_collection
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

log = logging.getLogger("fulmen")

_DEFAULT_MAX_EPOCHS = 1000



def _stage_flag(stage: RunningStage) -> property:
    """``trainer.training``-style flags: read the running stage, or set it (``False`` clears it)."""
    return property(
        lambda self: self.state.stage == stage,
        lambda self, value: self._set_stage(stage, value),
        doc=f"Whether the {stage.value} loop is running.",
    )

class Trainer:
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

    def __init__(
        self,
        *,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int | None = None,
        precision: Any = None,
        logger: Any = None,
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
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike | None = None,
    ) -> None:
        # Flags shared with Lite: one resolver, one strategy.
        self._strategy: Strategy = select_strategy(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            num_nodes=num_nodes,
            plugins=plugins,
        )
        for name, value in (
            ("inference_mode", inference_mode),
            ("use_distributed_sampler", use_distributed_sampler),
            ("detect_anomaly", detect_anomaly),
            ("barebones", barebones),
            ("sync_batchnorm", sync_batchnorm),
        ):
            if not isinstance(value, bool):
                raise invalid_argument(name, value, "True or False")
        for name, value in (
            ("enable_checkpointing", enable_checkpointing),
            ("enable_progress_bar", enable_progress_bar),
            ("enable_model_summary", enable_model_summary),
        ):
            if value is not None and not isinstance(value, bool):
                raise invalid_argument(name, value, "True, False or None")
        if barebones:
            _check_barebones(
                logger=logger,
                enable_checkpointing=enable_checkpointing,
                enable_progress_bar=enable_progress_bar,
                enable_model_summary=enable_model_summary,
                log_every_n_steps=log_every_n_steps,
                num_sanity_val_steps=num_sanity_val_steps,
                fast_dev_run=fast_dev_run,
                detect_anomaly=detect_anomaly,
                profiler=profiler,
            )
            logger, enable_checkpointing, enable_progress_bar, enable_model_summary = False, False, False, False
            log_every_n_steps, num_sanity_val_steps = 0, 0
        if profiler is not None:
            rank_zero_warn(f"`profiler={profiler!r}` is not supported by fulmen yet and is ignored.")
        self.barebones = barebones
        self.inference_mode = inference_mode
        self.use_distributed_sampler = use_distributed_sampler
        self.detect_anomaly = detect_anomaly
        self.sync_batchnorm = sync_batchnorm

        self.fast_dev_run = _check_fast_dev_run(fast_dev_run)
        self.max_epochs, self.max_steps = _check_max_limits(max_epochs, max_steps, max_time)
        self.min_epochs = _check_optional_count("min_epochs", min_epochs)
        self.min_steps = _check_optional_count("min_steps", min_steps)
        self._max_time_seconds = _parse_max_time(max_time)
        self.overfit_batches = _batch_limit("overfit_batches", overfit_batches)
        self.limit_train_batches = _batch_limit("limit_train_batches", limit_train_batches)
        self.limit_val_batches = _batch_limit("limit_val_batches", limit_val_batches)
        self.limit_test_batches = _batch_limit("limit_test_batches", limit_test_batches)
        self.limit_predict_batches = _batch_limit("limit_predict_batches", limit_predict_batches)
        if self.overfit_batches:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        self.val_check_interval = _batch_limit("val_check_interval", val_check_interval)
        if check_val_every_n_epoch is not None:
            check_val_every_n_epoch = _check_count("check_val_every_n_epoch", check_val_every_n_epoch, minimum=1)
        elif not isinstance(self.val_check_interval, int):
            raise invalid_argument(
                "val_check_interval",
                self.val_check_interval,
                "an int (a number of training batches) when `check_val_every_n_epoch=None`",
            )
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.num_sanity_val_steps = (
            2 if num_sanity_val_steps is None else _check_count("num_sanity_val_steps", num_sanity_val_steps, -1)
        )
        self.log_every_n_steps = (
            50 if log_every_n_steps is None else _check_count("log_every_n_steps", log_every_n_steps, 0)
        )
        self.accumulate_grad_batches = _check_count("accumulate_grad_batches", accumulate_grad_batches, 1)
        if gradient_clip_val is not None and (
            isinstance(gradient_clip_val, bool) or not isinstance(gradient_clip_val, (int, float))
            or gradient_clip_val < 0
        ):  # fmt: skip
            raise invalid_argument("gradient_clip_val", gradient_clip_val, "a number >= 0 or None")
        if gradient_clip_algorithm is not None and gradient_clip_algorithm not in ("norm", "value"):
            raise invalid_argument("gradient_clip_algorithm", gradient_clip_algorithm, ("norm", "value", None))
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm or ("norm" if gradient_clip_val is not None else None)
        self.reload_dataloaders_every_n_epochs = _check_count(
            "reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0
        )
        if deterministic not in (None, True, False, "warn"):
            raise invalid_argument("deterministic", deterministic, (True, False, "warn", None))
        if benchmark is not None and not isinstance(benchmark, bool):
            raise invalid_argument("benchmark", benchmark, (True, False, None))
        self._deterministic = deterministic
        self._benchmark = benchmark
        _set_torch_flags(deterministic, benchmark)

        if self.fast_dev_run:
            n = self.fast_dev_run
            if not self.overfit_batches:
                self.limit_train_batches = self.limit_val_batches = n
            self.limit_test_batches = self.limit_predict_batches = n
            self.max_steps, self.max_epochs = n, 1
            self.num_sanity_val_steps = 0
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
            rank_zero_info(
                f"Running in `fast_dev_run` mode: {n} batch(es) per loop; logging and checkpointing are off."
            )

        if default_root_dir is None:
            default_root_dir = os.getcwd()
        elif not isinstance(default_root_dir, (str, os.PathLike)):
            raise invalid_argument("default_root_dir", default_root_dir, "a path or a URL")
        default_root_dir = os.fspath(default_root_dir)
        self._default_root_dir = default_root_dir if "://" in default_root_dir else os.path.expanduser(default_root_dir)

        self.loggers = _configure_loggers(logger, self._default_root_dir)
        if self.fast_dev_run and self.loggers:
            self.loggers = [_no_op_logger()]
        self.callbacks: list[Callback] = _configure_callbacks(
            callbacks,
            enable_checkpointing=enable_checkpointing is not False and not self.fast_dev_run,
            enable_progress_bar=enable_progress_bar is not False,
            enable_model_summary=enable_model_summary is not False,
            checkpointing_flag=enable_checkpointing,
            progress_bar_flag=enable_progress_bar,
        )

        self.state = TrainerState()
        self.should_stop = False
        self.lightning_module: LightningModule | None = None
        self.datamodule: LightningDataModule | None = None
        self.num_training_batches: int | float = math.inf
        self.num_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self.num_sanity_val_batches: list[int | float] = []
        self.val_check_batch: int | float = math.inf
        self.ckpt_path: str | None = None
        self._model: nn.Module | None = None
        self._router: _StepRouter | None = None
        self._optimizers: list[Optimizer] = []
        self._lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._sources: dict[str, Any] = {}
        self._train_dataloader: Any = None
        self._val_dataloaders: list[Any] | None = None
        self._test_dataloaders: list[Any] | None = None
        self._predict_dataloaders: list[Any] | None = None
        self._last_reload = {"train": 0, "val": 0}
        self._hooks: Hooks | None = None
        self._results: ResultStore | None = None
        self._train_results: ResultStore | None = None
        self._callback_metrics: dict[str, Tensor] = {}
        self._logged_metrics: dict[str, Tensor] = {}
        self._progress_bar_metrics: dict[str, Any] = {}
        self._step_with_closure = False
        # Exact resume: generator states when the epoch drew its data order, and those to
        # restore once a resumed epoch has caught up (see loops.train_epoch).
        self._epoch_start_rng: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._resume_epoch_start_rng: dict[str, Any] | None = None
        self._signals: SignalWatch | None = None
        self._received_signal: int | None = None
        self._stop_now = False
        self._plain_forward = False
        self._eval_log_step = -1
        self._fit_start_time = 0.0
        self._warned_min_limits = False
        self._warned_none_loss = False

    # ============================================================================ entry points
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
    ) -> None:
        """Train ``model`` on a datamodule or on dataloaders (``trainer.fit(model, datamodule)`` works too)."""
        with self._entry_point():
            model = _check_module(model, "fit")
            if isinstance(train_dataloaders, LightningDataModule):
                datamodule, train_dataloaders = train_dataloaders, None
            if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
                raise MisconfigurationException(
                    "`Trainer.fit` got a datamodule and dataloaders; pass the dataloaders or the datamodule, not both."
                )
            _check_datamodule(datamodule)
            self._attach(model, datamodule, train=train_dataloaders, val=val_dataloaders)
            self._launch(TrainerFn.FITTING, ckpt_path)

    def validate(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run the validation loop once; returns the logged epoch values, one dict per dataloader."""
        return self._evaluate(TrainerFn.VALIDATING, model, dataloaders, ckpt_path, verbose, datamodule)

    def test(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run the test loop once; returns the logged epoch values, one dict per dataloader."""
        return self._evaluate(TrainerFn.TESTING, model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | None = None,
    ) -> Any:
        """Run ``predict_step`` over the data; returns the predictions (a list per dataloader when several)."""
        with self._entry_point():
            model, datamodule, dataloaders = self._entry_arguments("predict", model, dataloaders, datamodule)
            self._attach(model, datamodule, predict=dataloaders)
            self._return_predictions = True if return_predictions is None else bool(return_predictions)
            return self._launch(TrainerFn.PREDICTING, ckpt_path)

    def _evaluate(
        self,
        fn: TrainerFn,
        model: LightningModule | None,
        dataloaders: Any,
        ckpt_path: str | None,
        verbose: bool,
        datamodule: LightningDataModule | None,
    ) -> list[dict[str, float]]:
        with self._entry_point():
            model, datamodule, dataloaders = self._entry_arguments(fn.value, model, dataloaders, datamodule)
            key = "val" if fn == TrainerFn.VALIDATING else "test"
            self._attach(model, datamodule, **{key: dataloaders})
            results = self._launch(fn, ckpt_path)
        if verbose and self.is_global_zero and results:
            _print_results(results, "Validate" if fn == TrainerFn.VALIDATING else "Test")
        return results

    def _entry_arguments(self, name: str, model: Any, dataloaders: Any, datamodule: Any) -> tuple[Any, Any, Any]:
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if dataloaders is not None and datamodule is not None:
            raise MisconfigurationException(
                f"`Trainer.{name}` got a datamodule and dataloaders; pass the dataloaders or the datamodule, not both."
            )
        if model is None:
            model = self.lightning_module
            if model is None:
                raise MisconfigurationException(
                    f"`Trainer.{name}()` needs a `model` when no earlier run attached one to this Trainer."
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
        return model, datamodule, dataloaders

    def _attach(self, model: LightningModule, datamodule: LightningDataModule | None, **loaders: Any) -> None:
        self.lightning_module = model
        self.datamodule = datamodule
        model.trainer = self
        if datamodule is not None:
            datamodule.trainer = self
        self._sources = {key: value for key, value in loaders.items() if value is not None}
        self._train_dataloader = None
        self._val_dataloaders = self._test_dataloaders = self._predict_dataloaders = None
        self.num_training_batches = math.inf
        self.num_val_batches, self.num_test_batches, self.num_predict_batches = [], [], []
        self.num_sanity_val_batches = []

    # ============================================================================== launching
    @contextlib.contextmanager
    def _entry_point(self) -> Generator[None, None, None]:
        """Any error in fit/validate/test/predict runs ``on_exception`` (once per process) and re-raises."""
        try:
            yield
        except BaseException as exception:
            if not _was_handled(exception):
                self._handle_exception(exception)
                _mark_handled(exception)
            raise

    def _launch(self, fn: TrainerFn, ckpt_path: str | None) -> Any:
        """Run ``fn`` in every process the strategy needs."""
        self.state.fn = fn
        self.state.status = TrainerStatus.RUNNING
        self.state.stage = _STAGE_OF[fn]
        self.ckpt_path = ckpt_path
        launcher = self._strategy.launcher
        if launcher is None:
            return self._run_guarded(fn, ckpt_path)
        if isinstance(launcher, MultiprocessingLauncher):
            for logger in self.loggers:  # fix versions now, so the main process knows the folders
                _ = logger.version
            payload = launcher.launch(self._run_spawned, fn, ckpt_path)
            return self._receive(payload)
        # Script re-running launchers (strategy="ddp") start the other ranks once per process and
        # run the function here; when it raises they stop the other ranks before re-raising.
        return launcher.launch(self._run_guarded, fn, ckpt_path)

    def _run_guarded(self, fn: TrainerFn, ckpt_path: str | None) -> Any:
        try:
            return self._run(fn, ckpt_path)
        except BaseException as exception:
            self._handle_exception(exception)
            _mark_handled(exception)
            raise
        finally:
            self._teardown()

    def _run_spawned(self, fn: TrainerFn, ckpt_path: str | None) -> bytes | None:
        """In each spawned process: run, then send back what the main process needs (rank 0 only).

        The payload travels as bytes: tensors sent through a queue as shared memory would need
        this process alive until the main process has read them.
        """
        # Spawning pickles tensors into shared memory: without a copy every rank would update
        # the same CPU parameters.
        self.lightning_module._apply(torch.clone)
        result = self._run_guarded(fn, ckpt_path)
        if not self._strategy.is_global_zero:
            return None
        cpu = torch.device("cpu")
        payload = {
            "result": result,
            "state_dict": self.lightning_module.state_dict() if fn == TrainerFn.FITTING else None,
            "state": {
                **self.state.state_dict(),
                "status": self.state.status,
            },
            "callback_metrics": self._callback_metrics,
            "logged_metrics": self._logged_metrics,
            "progress_bar_metrics": dict(self._progress_bar_metrics),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
        }
        buffer = io.BytesIO()
        torch.save(apply_to_collection(payload, Tensor, lambda t: t.detach().to(cpu)), buffer)
        return buffer.getvalue()

    def _receive(self, data: bytes | None) -> Any:
        if data is None:
            return None
        # Our own child process wrote these bytes a moment ago: trusted, so a full unpickle.
        payload = torch.load(io.BytesIO(data), weights_only=False)
        if payload["state_dict"] is not None:
            self.lightning_module.load_state_dict(payload["state_dict"])
        state = dict(payload["state"])
        self.state.status = state.pop("status")
        self.state.load_state_dict(state)
        self.state.stage = None
        self._callback_metrics = payload["callback_metrics"]
        self._logged_metrics = payload["logged_metrics"]
        self._progress_bar_metrics = payload["progress_bar_metrics"]
        states = payload["callbacks"]
        for callback in self.callbacks:
            if callback.state_key in states:
                callback.load_state_dict(states[callback.state_key])
        return payload["result"]

    def _handle_exception(self, exception: BaseException) -> None:
        self.state.status = TrainerStatus.INTERRUPTED
        module = self.lightning_module
        for callback in self.callbacks:
            callback.on_exception(self, module, exception)
        if self.datamodule is not None:
            self.datamodule.on_exception(exception)
        if module is not None:
            module.on_exception(exception)
        for logger in self.loggers:
            logger.finalize("failed")

    # ==================================================================== one run, per process
    def _run(self, fn: TrainerFn, ckpt_path: str | None) -> Any:
        strategy = self._strategy
        module = self.lightning_module
        module.trainer = self  # a spawned process unpickles the module without its trainer
        if self.datamodule is not None:
            self.datamodule.trainer = self
        strategy.setup_environment()
        _set_torch_flags(self._deterministic, self._benchmark)
        self.should_stop = False
        self._stop_now = False  # a signal asked to stop: min_epochs/min_steps do not hold it back
        self._warned_min_limits = False
        self._results = self._new_store(training=False)
        stage = fn.value

        self.callbacks = _merge_model_callbacks(self.callbacks, module.configure_callbacks())
        self._hooks = hooks = Hooks(self, module, self.callbacks, self.datamodule, _monitor_types())
        self._check_loop_configuration(fn)
        self._prepare_data()

        root = strategy.root_device
        for submodule in module.modules():
            if isinstance(submodule, LightningModule):
                submodule.__dict__["_device"] = root
        for logger in self.loggers:  # create folders and writers before any hook may need them
            _ = getattr(logger, "experiment", None)
        strategy.barrier("pre_setup")
        hooks.call_datamodule("setup", stage)
        hooks.call_callbacks("setup", stage)
        hooks.call_module("setup", stage)
        strategy.barrier("post_setup")
        if hooks.module["configure_model"] is not None or hooks.module["configure_sharded_model"] is not None:
            with strategy.module_init_context():
                hooks.call_module("configure_model")
                hooks.call_module("configure_sharded_model")

        self._setup_model(fn)
        # Rank zero decides which file "last"/"best" means, so that every rank loads the same one.
        ckpt_path = strategy.broadcast(checkpoint_io.resolve_checkpoint_path(self, ckpt_path, fn))
        self.ckpt_path = ckpt_path
        if ckpt_path is not None:
            self._restore_checkpoint(ckpt_path, fn)

        if fn == TrainerFn.FITTING:
            self._log_hyperparams()
            self._train_results = self._new_store(training=True)
            self._results = self._train_results
            self.state.stage = RunningStage.TRAINING
            self._model.train()
            with torch.autograd.set_detect_anomaly(self.detect_anomaly), self._signal_watch() as watch:
                self._signals = watch
                loops.fit_loop(self)
            result = None
        elif fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            stage_enum = RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING
            loaders = self._load_eval_dataloaders(stage_enum)
            limits = self.num_val_batches if fn == TrainerFn.VALIDATING else self.num_test_batches
            self._eval_log_step = -1
            result = loops.evaluation_run(self, stage_enum, loaders, limits)
        else:
            loaders = self._load_eval_dataloaders(RunningStage.PREDICTING)
            result = loops.predict_loop(self, loaders, self.num_predict_batches, self._return_predictions)

        hooks.call_datamodule("teardown", stage)
        hooks.call_callbacks("teardown", stage)
        hooks.call_module("teardown", stage)
        for logger in self.loggers:
            logger.finalize("success")
        self.state.status = TrainerStatus.FINISHED
        self.state.stage = None
        return result

    def _teardown(self) -> None:
        if self._results is not None:
            self._flush_metrics(self._results)
        self._results = None
        self._train_results = None
        self._strategy.teardown()

    def _check_loop_configuration(self, fn: TrainerFn) -> None:
        module = self.lightning_module
        required = {
            TrainerFn.FITTING: "training_step",
            TrainerFn.VALIDATING: "validation_step",
            TrainerFn.TESTING: "test_step",
        }.get(fn)
        if required is not None and not _overrides_module(module, required):
            raise MisconfigurationException(
                f"`Trainer.{fn.value}` needs `{required}` in {type(module).__name__}; it is not implemented."
            )
        if fn != TrainerFn.FITTING:
            return
        if "val" in self._sources and not _overrides_module(module, "validation_step"):
            rank_zero_warn("`val_dataloaders` were given, but the module has no `validation_step`: no validation.")
        if not _overrides_module(module, "configure_optimizers"):
            raise MisconfigurationException(
                f"`Trainer.fit` needs `configure_optimizers` in {type(module).__name__}; it is not implemented."
            )
        if not module.automatic_optimization:
            if self.accumulate_grad_batches != 1:
                raise MisconfigurationException(
                    f"`accumulate_grad_batches={self.accumulate_grad_batches}` works with automatic optimization "
                    "only. With `automatic_optimization = False`, accumulate in `training_step` yourself."
                )
            if self.gradient_clip_val:
                raise MisconfigurationException(
                    f"`gradient_clip_val={self.gradient_clip_val}` works with automatic optimization only. With "
                    "`automatic_optimization = False`, call `self.clip_gradients(optimizer, ...)` before `step()`."
                )

    def _prepare_data(self) -> None:
        strategy = self._strategy
        local_zero = strategy.local_rank == 0
        global_zero = local_zero and strategy.node_rank == 0
        dm = self.datamodule
        if dm is not None and (local_zero if dm.prepare_data_per_node else global_zero):
            self._hooks.call_datamodule("prepare_data")
        module = self.lightning_module
        if local_zero if module.prepare_data_per_node else global_zero:
            self._hooks.call_module("prepare_data")
        strategy.barrier("prepare_data")

    def _setup_model(self, fn: TrainerFn) -> None:
        strategy = self._strategy
        module = self.lightning_module
        strategy.convert_module(module)
        if fn == TrainerFn.FITTING and self.sync_batchnorm:
            _sync_batchnorm(module, strategy)
        strategy.module_to_device(module)
        self._model, self._router = module, None
        self._optimizers, self._lightning_optimizers, self.lr_scheduler_configs = [], [], []
        self._plain_forward = False
        if fn != TrainerFn.FITTING:
            return
        optimizers, self.lr_scheduler_configs = self._configure_optimizers()
        router = _StepRouter(module)
        wrapped, self._optimizers = strategy.setup_module_and_optimizers(router, optimizers)
        if wrapped is not router:
            self._model, self._router = wrapped, router
        self._lightning_optimizers = loops.setup_lightning_optimizers(self)
        # The 32-bit default opens no autocast: skip entering an empty context on every step.
        self._plain_forward = type(strategy).forward_context is Strategy.forward_context and (
            type(strategy.precision).forward_context is Precision.forward_context
        )
        self._step_with_closure = self._hooks.module["optimizer_step"] is not None or (
            module.automatic_optimization and needs_closure(self._optimizers[0])
        )

    def _configure_optimizers(self) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
        module = self.lightning_module
        output = self._hooks.call_module("configure_optimizers", always=True)
        if output is None:
            rank_zero_warn("`configure_optimizers` returned None: training runs without an optimizer.")
            return [MockOptimizer()], []
        optimizers, schedulers, monitor = parse_optimizers_config(output)
        if module.automatic_optimization and len(optimizers) > 1:
            raise MisconfigurationException(
                f"`configure_optimizers` returned {len(optimizers)} optimizers. Several optimizers need manual "
                "optimization: set `self.automatic_optimization = False` and step them in `training_step` "
                "(`opt_a, opt_b = self.optimizers()`)."
            )
        configs = scheduler_configs(schedulers, monitor, module.automatic_optimization)
        return optimizers, configs

    def _log_hyperparams(self) -> None:
        if not self.loggers:
            return
        module, dm = self.lightning_module, self.datamodule
        module_hp = module._log_hyperparams_enabled
        dm_hp = dm is not None and dm._log_hyperparams_enabled
        hparams: Any = None
        if module_hp and dm_hp:
            module_params, dm_params = module.hparams_initial, dm.hparams_initial
            clashes = [
                key for key in module_params.keys() & dm_params.keys()
                if type(module_params[key]) is not type(dm_params[key]) or _differs(module_params[key], dm_params[key])
            ]  # fmt: skip
            if clashes:
                raise MisconfigurationException(
                    f"The LightningModule and the LightningDataModule both save the hyperparameters {sorted(clashes)} "
                    "with different values. Rename one of them, or leave it out with `ignore=`."
                )
            hparams = {**module_params, **dm_params}
        elif module_hp:
            hparams = module.hparams_initial
        elif dm_hp:
            hparams = dm.hparams_initial
        for logger in self.loggers:
            if hparams is not None:
                logger.log_hyperparams(hparams)
            logger.log_graph(module)
            logger.save()

    # ================================================================================== data
    def _load_train_dataloader(self) -> None:
        source = self._source("train", "train_dataloader")
        if source is None:
            raise MisconfigurationException(
                "`Trainer.fit` has no training data: pass `train_dataloaders`, a datamodule with "
                "`train_dataloader`, or implement `train_dataloader` in the module."
            )
        loader = data.train_loader_from(source)
        if self.overfit_batches:
            loader = data.without_shuffle(loader)
        loader = data.prepare(loader, self._strategy.distributed_sampler_kwargs, self.use_distributed_sampler)
        self._train_dataloader = loader
        self.num_training_batches = data.count_batches(loader, self.limit_train_batches, "limit_train_batches")
        self._last_reload["train"] = self.state.current_epoch
        self.val_check_batch = self._compute_val_check_batch()
        if 0 < self.num_training_batches < self.log_every_n_steps and self.loggers and not self.fast_dev_run:
            rank_zero_warn(
                f"The training data has {self.num_training_batches} batches, fewer than `log_every_n_steps="
                f"{self.log_every_n_steps}`: step-level values are logged less often than every epoch. "
                "Lower `log_every_n_steps` to log them more often."
            )

    def _compute_val_check_batch(self) -> int | float:
        interval, batches = self.val_check_interval, self.num_training_batches
        if isinstance(interval, int):
            if self.check_val_every_n_epoch is not None and batches != math.inf and interval > batches:
                raise invalid_argument(
                    "val_check_interval",
                    interval,
                    f"at most the number of training batches ({batches}); or set `check_val_every_n_epoch=None` "
                    "to count batches across epochs, or `limit_val_batches=0` to turn validation off",
                )
            return interval
        if batches == math.inf:
            if interval != 1.0:
                raise invalid_argument(
                    "val_check_interval", interval, "1.0 or an int, since the training data has no length"
                )
            return math.inf
        return max(1, int(batches * interval))

    def _load_eval_dataloaders(self, stage: RunningStage) -> list[Any]:
        key, method, limit, flag = {
            RunningStage.VALIDATING: ("val", "val_dataloader", self.limit_val_batches, "limit_val_batches"),
            RunningStage.TESTING: ("test", "test_dataloader", self.limit_test_batches, "limit_test_batches"),
            RunningStage.PREDICTING: ("predict", "predict_dataloader", self.limit_predict_batches,
                                      "limit_predict_batches"),
        }[stage]  # fmt: skip
        loaders = data.as_loader_list(self._source(key, method), f"{key}_dataloaders")
        sampler_kwargs = self._strategy.distributed_sampler_kwargs
        loaders = [data.prepare(loader, sampler_kwargs, self.use_distributed_sampler) for loader in loaders]
        counts = [data.count_batches(loader, limit, flag) for loader in loaders]
        if stage == RunningStage.VALIDATING:
            self._val_dataloaders, self.num_val_batches = loaders, counts
            self._last_reload["val"] = self.state.current_epoch
        elif stage == RunningStage.TESTING:
            self._test_dataloaders, self.num_test_batches = loaders, counts
        else:
            self._predict_dataloaders, self.num_predict_batches = loaders, counts
        return loaders

    def _source(self, key: str, method: str) -> Any:
        """The loader(s) passed in, else the datamodule's method, else the module's (when implemented)."""
        if key in self._sources:
            return self._sources[key]
        owner: Any = None
        if self.datamodule is not None:
            owner = self.datamodule if _implements(self.datamodule, LightningDataModule, method) else None
        elif _implements(self.lightning_module, LightningModule, method):
            owner = self.lightning_module
        if owner is None:
            if key == "predict" and self.datamodule is None:
                return getattr(self.lightning_module, method)()  # raises the module's own clear error
            return None
        if self._results is not None and self._hooks is not None:
            store = self._results
            previous, store.fx = store.fx, method
            try:
                return getattr(owner, method)()
            finally:
                store.fx = previous
        return getattr(owner, method)()

    def _validation_enabled(self) -> bool:
        if self.limit_val_batches == 0 or not _overrides_module(self.lightning_module, "validation_step"):
            return False
        if self._val_dataloaders is not None:
            return True
        if "val" in self._sources:
            return True
        if self.datamodule is not None:
            return _implements(self.datamodule, LightningDataModule, "val_dataloader")
        return _implements(self.lightning_module, LightningModule, "val_dataloader")

    def _reload_due(self, which: str) -> bool:
        n = self.reload_dataloaders_every_n_epochs
        return bool(n) and self.state.current_epoch - self._last_reload[which] >= n

    # ========================================================================= step machinery
    def _step(self, name: str, *args: Any) -> Any:
        """Run ``training_step`` / ``validation_step`` / ... under the strategy's forward context."""
        self._results.fx = name
        step = (
            self._model
            if self._router is not None and name == "training_step"
            else getattr(self.lightning_module, name)
        )
        if self._plain_forward:
            return step(*args)
        with self._strategy.forward_context():
            return step(*args)

    def _backward_with_hooks(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``on_before_backward``, backward through the strategy, ``on_after_backward``."""
        hooks = self._hooks
        if hooks.active["on_before_backward"]:
            hooks.call("on_before_backward", loss)
        if hooks.module["backward"] is not None:
            precision = self._strategy.precision
            scaled = precision.pre_backward(loss, self._model)
            store = self._results
            previous, store.fx = store.fx, "backward"
            try:
                hooks.module["backward"](scaled, *args, **kwargs)
            finally:
                store.fx = previous
            precision.post_backward(scaled, self._model)
        else:
            self._strategy.backward(loss, self._model, *args, **kwargs)
        if hooks.active["on_after_backward"]:
            hooks.call("on_after_backward")

    def _clip_gradients(self, optimizer: Any, value: float | None, algorithm: str | None) -> None:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        if value is None:
            value = self.gradient_clip_val or 0.0
        elif self.gradient_clip_val is not None and self.gradient_clip_val != value:
            raise MisconfigurationException(
                f"`Trainer(gradient_clip_val={self.gradient_clip_val})` and `clip_gradients(gradient_clip_val="
                f"{value})` disagree; set one of them."
            )
        if algorithm is None:
            algorithm = self.gradient_clip_algorithm or "norm"
        elif self.gradient_clip_algorithm is not None and self.gradient_clip_algorithm != algorithm:
            raise MisconfigurationException(
                f"`Trainer(gradient_clip_algorithm={self.gradient_clip_algorithm!r})` and `clip_gradients("
                f"gradient_clip_algorithm={algorithm!r})` disagree; set one of them."
            )
        if not value:
            return
        if algorithm == "norm":
            self._strategy.clip_gradients_norm(self._model, optimizer, value)
        elif algorithm == "value":
            self._strategy.clip_gradients_value(self._model, optimizer, value)
        else:
            raise invalid_argument("gradient_clip_algorithm", algorithm, ("norm", "value"))

    def _eval_context(self) -> contextlib.AbstractContextManager:
        gloo = self._strategy.world_size > 1 and getattr(self._strategy, "process_group_backend", None) in (
            None, "gloo"
        ) and self._strategy.root_device.type == "cpu"  # fmt: skip
        return loops.grad_context(self.inference_mode, gloo)

    def _warn_none_loss(self) -> None:
        if not self._warned_none_loss:
            self._warned_none_loss = True
            rank_zero_warn("`training_step` returned None: the batch's backward is skipped. Ignore this if intended.")

    # ============================================================================== metrics
    def _new_store(self, training: bool) -> ResultStore:
        strategy = self._strategy
        return ResultStore(
            training=training,
            reduce=strategy.all_reduce,
            gather=strategy.all_gather,
            world_size=strategy.world_size,
            device=strategy.root_device,
            enabled=not self.barebones,
        )

    def _flush_metrics(self, store: ResultStore) -> None:
        """Fold the store's current view into the metrics that outlive it."""
        if not store.entries:
            return
        callback, logged, pbar = store.views()
        self._callback_metrics.update(callback)
        self._logged_metrics.update(logged)
        self._progress_bar_metrics.update(pbar)

    def _reset_metrics(self) -> None:
        self._callback_metrics = {}
        self._logged_metrics = {}
        self._progress_bar_metrics = {}

    def _log_to_loggers(self, metrics: dict[str, Any], step: int, save: bool = False) -> None:
        """Send values to every logger; ``save`` (flush) only at epoch ends: loggers buffer in between."""
        if not self.loggers or not metrics:
            return
        scalars = to_scalars(metrics)
        scalars.setdefault("epoch", self.state.current_epoch)
        for logger in self.loggers:
            logger.log_metrics(scalars, step=step)
            if save:
                logger.save()

    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        """Every value logged so far (latest step values, epoch values), for callbacks to monitor."""
        store = self._results
        if store is not None and store.entries:
            self._callback_metrics.update(store.views()[0])
        return self._callback_metrics

    @property
    def logged_metrics(self) -> dict[str, Tensor]:
        """The values sent (or due) to the loggers."""
        store = self._results
        if store is not None and store.entries:
            self._logged_metrics.update(store.views()[1])
        return self._logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The values logged with ``prog_bar=True``, as Python numbers."""
        store = self._results
        if store is not None and store.entries:
            self._progress_bar_metrics.update(store.views()[2])
        metrics = self._progress_bar_metrics
        return {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}

    # ============================================================================ checkpoints
    def save_checkpoint(
        self, filepath: str | os.PathLike, weights_only: bool = False, storage_options: dict | None = None
    ) -> None:
        """Write the model, optimizers, schedulers, progress and callback states to ``filepath``.

        Every process must call it; the strategy has rank 0 write (atomically).
        """
        if self.lightning_module is None:
            raise RuntimeError(
                "`Trainer.save_checkpoint` needs a model: call it after (or during) fit/validate/test/predict."
            )
        checkpoint = self._dump_checkpoint(weights_only)
        self._strategy.save_checkpoint(checkpoint, os.fspath(filepath), storage_options=storage_options)
        self._strategy.barrier("Trainer.save_checkpoint")

    def _dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        return checkpoint_io.dump_checkpoint(self, weights_only)

    def _restore_checkpoint(self, ckpt_path: str, fn: TrainerFn) -> None:
        loaded = checkpoint_io.load_checkpoint_file(self, ckpt_path)
        checkpoint_io.restore_checkpoint(self, loaded, fn)

    def _real_optimizers(self) -> list[Optimizer]:
        """The optimizers that hold state (not the stand-in used when none is configured)."""
        return [opt for opt in self._optimizers if not isinstance(opt, MockOptimizer)]

    # ============================================================================ properties
    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def model(self) -> nn.Module | None:
        """The model as the strategy runs it (wrapped in DDP, ...); ``lightning_module`` is yours."""
        return self._model if self._model is not None else self.lightning_module

    @property
    def optimizers(self) -> list[Optimizer]:
        return self._optimizers

    @optimizers.setter
    def optimizers(self, optimizers: list[Optimizer]) -> None:
        self._optimizers = list(optimizers)
        if self.lightning_module is not None:
            self._lightning_optimizers = loops.setup_lightning_optimizers(self)

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
        return getattr(self._strategy, "num_nodes", 1)

    @property
    def num_devices(self) -> int:
        return len(getattr(self._strategy, "parallel_devices", None) or [self._strategy.root_device])

    @property
    def device_ids(self) -> list[int]:
        devices = getattr(self._strategy, "parallel_devices", None) or [self._strategy.root_device]
        return [d.index if d.index is not None else 0 for d in devices]

    @property
    def current_epoch(self) -> int:
        return self.state.current_epoch

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def default_root_dir(self) -> str:
        return self._default_root_dir

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
            return self._default_root_dir
        return logger.log_dir if logger.log_dir is not None else logger.save_dir

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    @property
    def received_sigterm(self) -> bool:
        return self._received_signal == signal.SIGTERM

    def _signal_watch(self) -> SignalWatch:
        """SIGTERM, and the cluster's requeue signal (SLURM: SIGUSR1), end fit with a checkpoint."""
        signals = [signal.SIGTERM]
        requeue = getattr(self._strategy.cluster_environment, "requeue_signal", None)
        signals.append(requeue if requeue is not None else signal.SIGUSR1)
        return SignalWatch(tuple(signals))

    # One property per stage: True while that loop runs; setting it switches the stage.
    training = _stage_flag(RunningStage.TRAINING)
    sanity_checking = _stage_flag(RunningStage.SANITY_CHECKING)
    validating = _stage_flag(RunningStage.VALIDATING)
    testing = _stage_flag(RunningStage.TESTING)
    predicting = _stage_flag(RunningStage.PREDICTING)

    def _set_stage(self, stage: RunningStage, value: bool) -> None:
        if value:
            self.state.stage = stage
        elif self.state.stage == stage:
            self.state.stage = None

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def enable_validation(self) -> bool:
        return self.lightning_module is not None and self._validation_enabled()

    @property
    def train_dataloader(self) -> Any:
        return self._train_dataloader

    @property
    def val_dataloaders(self) -> Any:
        return _single_or_list(self._val_dataloaders)

    @property
    def test_dataloaders(self) -> Any:
        return _single_or_list(self._test_dataloaders)

    @property
    def predict_dataloaders(self) -> Any:
        return _single_or_list(self._predict_dataloaders)

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the whole fit will take (for schedulers like OneCycleLR)."""
        if self.max_epochs == -1:
            return math.inf if self.max_steps == -1 else self.max_steps
        if self._train_dataloader is None:
            if self.lightning_module is None:
                raise RuntimeError("`estimated_stepping_batches` needs a model: read it during `fit`.")
            self._load_train_dataloader()
        batches = self.num_training_batches
        if batches == math.inf:
            return self.max_steps if self.max_steps != -1 else math.inf
        steps = math.ceil(batches / self.accumulate_grad_batches) * max(self.max_epochs, 1)
        return min(steps, self.max_steps) if self.max_steps != -1 else steps

    @property
    def checkpoint_callbacks(self) -> list[Callback]:
        types = _checkpoint_types()
        return [cb for cb in self.callbacks if types and isinstance(cb, types)]

    @property
    def checkpoint_callback(self) -> Callback | None:
        callbacks = self.checkpoint_callbacks
        return callbacks[0] if callbacks else None

    @property
    def early_stopping_callbacks(self) -> list[Callback]:
        early_stopping = _builtin_callback("EarlyStopping")
        return [cb for cb in self.callbacks if early_stopping and isinstance(cb, early_stopping)]

    @property
    def early_stopping_callback(self) -> Callback | None:
        callbacks = self.early_stopping_callbacks
        return callbacks[0] if callbacks else None

    @property
    def progress_bar_callback(self) -> Callback | None:
        types = tuple(t for t in (_builtin_callback("ProgressBar"), _builtin_callback("TQDMProgressBar")) if t)
        return next((cb for cb in self.callbacks if types and isinstance(cb, types)), None)

    def __repr__(self) -> str:
        return f"Trainer(strategy={self._strategy!r}, max_epochs={self.max_epochs}, max_steps={self.max_steps})"


# ================================================================================ model wrapper
class _StepRouter(nn.Module):
    """What the strategy wraps (DDP, ...) so that ``training_step`` runs through the wrapper's forward."""

    _fulmen_wrapper = True

    def __init__(self, module: LightningModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.training_step(*args, **kwargs)


# ============================================================================== flag helpers
_STAGE_OF = {
    TrainerFn.FITTING: RunningStage.TRAINING,
    TrainerFn.VALIDATING: RunningStage.VALIDATING,
    TrainerFn.TESTING: RunningStage.TESTING,
    TrainerFn.PREDICTING: RunningStage.PREDICTING,
}


def _check_barebones(**flags: Any) -> None:
    conflicts = {
        "logger": lambda v: v not in (None, False),
        "enable_checkpointing": bool,
        "enable_progress_bar": bool,
        "enable_model_summary": bool,
        "log_every_n_steps": lambda v: v not in (None, 0),
        "num_sanity_val_steps": lambda v: v not in (None, 0),
        "fast_dev_run": bool,
        "detect_anomaly": bool,
        "profiler": lambda v: v is not None,
    }
    for name, conflicts_with in conflicts.items():
        if conflicts_with(flags[name]):
            raise invalid_argument(
                name, flags[name], f"its default with `barebones=True`, which turns {name} off for raw speed"
            )


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid_argument(name, value, f"an int >= {minimum}")
    return value


def _check_optional_count(name: str, value: Any) -> int | None:
    return None if value is None else _check_count(name, value, 0)


def _check_fast_dev_run(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise invalid_argument("fast_dev_run", value, "True, False or a number of batches >= 0")


def _check_max_limits(max_epochs: Any, max_steps: Any, max_time: Any) -> tuple[int, int]:
    max_steps = _check_count("max_steps", max_steps, -1)
    if max_epochs is None:
        if max_steps == -1 and max_time is None:
            return _DEFAULT_MAX_EPOCHS, max_steps
        return -1, max_steps
    return _check_count("max_epochs", max_epochs, -1), max_steps


def _batch_limit(name: str, value: Any) -> int | float:
    """``None`` -> 1.0; a float is a fraction in [0, 1]; an int a number of batches (1 means one batch)."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_argument(name, value, "a fraction in [0.0, 1.0] or an int number of batches")
    if isinstance(value, float):
        if 0.0 <= value <= 1.0:
            return value
        if value > 1 and value.is_integer():
            return int(value)
        raise invalid_argument(name, value, "a fraction in [0.0, 1.0] or an int number of batches")
    if value < 0:
        raise invalid_argument(name, value, "a fraction in [0.0, 1.0] or an int number of batches >= 0")
    return value


_MAX_TIME_PATTERN = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")


def _parse_max_time(max_time: Any) -> float | None:
    """``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of timedelta arguments -> seconds."""
    if max_time is None:
        return None
    if isinstance(max_time, timedelta):
        return max_time.total_seconds()
    if isinstance(max_time, dict):
        try:
            return timedelta(**max_time).total_seconds()
        except TypeError:
            raise invalid_argument("max_time", max_time, "a dict of timedelta arguments (days, hours, ...)") from None
    if isinstance(max_time, str):
        match = _MAX_TIME_PATTERN.match(max_time.strip())
        if match:
            days, hours, minutes, seconds = (int(g) for g in match.groups())
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    raise invalid_argument("max_time", max_time, "'DD:HH:MM:SS', a datetime.timedelta or a dict like {'hours': 1}")


def _set_torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
    if deterministic and benchmark:
        rank_zero_warn("`deterministic=True` with `benchmark=True`: cuDNN ignores determinism while benchmarking.")
    if deterministic and benchmark is None:
        benchmark = False
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic == "warn":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif isinstance(deterministic, bool):
        torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _configure_loggers(logger: Any, root_dir: str) -> list[Any]:
    if logger is False:
        return []
    if logger is None or logger is True:
        if importlib.util.find_spec("tensorboard") is not None:
            from fulmen.loggers import TensorBoardLogger

            return [TensorBoardLogger(save_dir=root_dir)]
        from fulmen.loggers import CSVLogger

        rank_zero_info("tensorboard is not installed: the default logger is CSVLogger.")
        return [CSVLogger(save_dir=root_dir)]
    from fulmen.loggers import Logger

    loggers = list(logger) if isinstance(logger, Iterable) and not isinstance(logger, Logger) else [logger]
    for item in loggers:
        if not isinstance(item, Logger):
            raise invalid_argument("logger", item, "True, False, a fulmen Logger or a list of Loggers")
    return loggers


def _no_op_logger() -> Any:
    """What ``fast_dev_run`` logs to: accepts everything, writes nothing."""
    from fulmen.loggers import Logger

    class NoOpLogger(Logger):
        name = "fast_dev_run"
        version = ""

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            pass

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

    return NoOpLogger()


def _builtin_callback(name: str) -> type | None:
    """A built-in callback class, or None while its module is not written yet."""
    from fulmen import callbacks as callbacks_package

    module_name = callbacks_package._BUILTINS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise
    return getattr(module, name, None)


def _checkpoint_types() -> tuple[type, ...]:
    return tuple(t for t in (_builtin_callback("Checkpoint"), _builtin_callback("ModelCheckpoint")) if t)


def _monitor_types() -> tuple[type, ...]:
    return tuple(t for t in (_builtin_callback(n) for n in ("Checkpoint", "ModelCheckpoint", "EarlyStopping")) if t)


def _configure_callbacks(
    callbacks: Any,
    enable_checkpointing: bool,
    enable_progress_bar: bool,
    enable_model_summary: bool,
    checkpointing_flag: bool | None,
    progress_bar_flag: bool | None,
) -> list[Callback]:
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, Callback):
        callbacks = [callbacks]
    elif isinstance(callbacks, Sequence):
        callbacks = list(callbacks)
    else:
        raise invalid_argument("callbacks", callbacks, "a Callback or a list of Callbacks")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise invalid_argument("callbacks", callback, "fulmen.Callback instances")

    checkpoint_types = _checkpoint_types()
    has_checkpoint = bool(checkpoint_types) and any(isinstance(cb, checkpoint_types) for cb in callbacks)
    if checkpointing_flag is False and has_checkpoint:
        raise MisconfigurationException(
            "`enable_checkpointing=False`, but a checkpoint callback is in `callbacks`. Remove one of them."
        )
    bar_types = tuple(t for t in (_builtin_callback("ProgressBar"), _builtin_callback("TQDMProgressBar")) if t)
    has_bar = bool(bar_types) and any(isinstance(cb, bar_types) for cb in callbacks)
    if progress_bar_flag is False and has_bar:
        raise MisconfigurationException(
            "`enable_progress_bar=False`, but a progress bar callback is in `callbacks`. Remove one of them."
        )

    if enable_model_summary:
        summary = _builtin_callback("ModelSummary")
        if summary is not None and not any(isinstance(cb, summary) for cb in callbacks):
            callbacks.append(summary())
    if enable_progress_bar and not has_bar:
        bar = _builtin_callback("TQDMProgressBar")
        if bar is not None:
            callbacks.append(bar())
    if enable_checkpointing and not has_checkpoint:
        checkpoint = _builtin_callback("ModelCheckpoint")
        if checkpoint is not None:
            callbacks.append(checkpoint())
    return _checkpoints_last(callbacks, checkpoint_types)


def _checkpoints_last(callbacks: list[Callback], checkpoint_types: tuple[type, ...]) -> list[Callback]:
    """Checkpoint callbacks run last, so they save what every other callback did in the same hook."""
    if not checkpoint_types:
        return callbacks
    others = [cb for cb in callbacks if not isinstance(cb, checkpoint_types)]
    return others + [cb for cb in callbacks if isinstance(cb, checkpoint_types)]


def _merge_model_callbacks(callbacks: list[Callback], model_callbacks: Any) -> list[Callback]:
    """``configure_callbacks``' callbacks replace Trainer callbacks of the same type."""
    if not model_callbacks:
        return callbacks
    if isinstance(model_callbacks, Callback):
        model_callbacks = [model_callbacks]
    model_callbacks = list(model_callbacks)
    model_types = {type(cb) for cb in model_callbacks}
    replaced = {
        type(cb) for cb in callbacks if type(cb) is not Callback and any(issubclass(t, type(cb)) for t in model_types)
    }
    if replaced:
        rank_zero_info(
            f"`configure_callbacks` replaces these Trainer callbacks: {sorted(t.__name__ for t in replaced)}."
        )
    merged = [cb for cb in callbacks if type(cb) not in replaced] + model_callbacks
    return _checkpoints_last(merged, _checkpoint_types())


def _check_module(model: Any, entry: str) -> LightningModule:
    if not isinstance(model, LightningModule):
        raise TypeError(f"`Trainer.{entry}()` needs a `LightningModule`; got {type(model).__name__}.")
    return model


def _check_datamodule(datamodule: Any) -> None:
    if datamodule is not None and not isinstance(datamodule, LightningDataModule):
        raise TypeError(f"`datamodule` must be a `LightningDataModule`; got {type(datamodule).__name__}.")


def _overrides_module(module: LightningModule, name: str) -> bool:
    return _implements(module, LightningModule, name)


def _implements(obj: Any, base: type, name: str) -> bool:
    return overrides(obj, base, name)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):
        return a is not b
    try:
        return bool(a != b)
    except Exception:
        return a is not b


def _sync_batchnorm(module: LightningModule, strategy: Strategy) -> None:
    """Replace BatchNorm layers with SyncBatchNorm when several processes train."""
    if strategy.world_size <= 1:
        return
    for name, child in list(module.named_children()):
        setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


def _single_or_list(loaders: list[Any] | None) -> Any:
    if loaders is None:
        return None
    return loaders[0] if len(loaders) == 1 else loaders


def _was_handled(exception: BaseException) -> bool:
    return getattr(exception, "_fulmen_handled", False)


def _mark_handled(exception: BaseException) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        exception._fulmen_handled = True  # type: ignore[attr-defined]


def _print_results(results: list[dict[str, float]], stage: str) -> None:
    names = sorted({name for result in results for name in result})
    if not names:
        return
    header = [f"{stage} metric", *(f"DataLoader {i}" for i in range(len(results)))]
    rows = [[name, *(f"{r[name]:.6g}" if name in r else "" for r in results)] for name in names]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    rule = "─" * (sum(widths) + 3 * (len(widths) - 1))
    lines = [rule, "   ".join(h.center(w) for h, w in zip(header, widths)), rule]
    lines += ["   ".join(cell.center(w) for cell, w in zip(row, widths)) for row in rows]
    lines.append(rule)
    print("\n".join(lines))


__all__ = ["Trainer"]
