"""The loops, as plain functions: ``fit_loop`` → ``train_epoch`` → ``module.training_step``.

Hook order is documented in :mod:`fulmen.trainer.hooks`. Everything the loops change lives in
``trainer.state`` (a ``TrainerState``); device, distributed and precision work goes through
``trainer.strategy``. The per-batch path calls only hooks that someone overrides and converts
no tensor to a Python number.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fulmen.module.optimizer import LightningOptimizer
from fulmen.strategies.environments import SLURMEnvironment
from fulmen.strategies.precision import Precision
from fulmen.strategies.strategy import Strategy
from fulmen.trainer import data
from fulmen.trainer.results import to_scalars
from fulmen.trainer.rng import capture_rng, restore_rng
from fulmen.trainer.signals import hpc_checkpoint_path, requeue_slurm_job
from fulmen.trainer.state import RunningStage, TrainerFn
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


# ------------------------------------------------------------------------------------------- fit
def fit_loop(trainer: Trainer) -> None:
    hooks = trainer._hooks
    state = trainer.state
    hooks.call("on_fit_start")
    if trainer._validation_enabled() and trainer.num_sanity_val_steps != 0:
        run_sanity_check(trainer)
    trainer._load_train_dataloader()
    trainer._fit_start_time = time.monotonic()
    hooks.call("on_train_start")
    while not _fit_done(trainer):
        state.stage = RunningStage.TRAINING
        train_epoch(trainer)
    hooks.call("on_train_end")
    hooks.call("on_fit_end")


def _fit_done(trainer: Trainer) -> bool:
    state = trainer.state
    if trainer._stop_now:
        return True
    if trainer.num_training_batches == 0:
        rank_zero_info("`Trainer.fit` stopped: no training batches.")
        return True
    if 0 <= trainer.max_steps <= state.global_step:
        rank_zero_info(f"`Trainer.fit` stopped: `max_steps={trainer.max_steps}` reached.")
        return True
    if 0 <= trainer.max_epochs <= state.current_epoch:
        rank_zero_info(f"`Trainer.fit` stopped: `max_epochs={trainer.max_epochs}` reached.")
        return True
    return trainer.should_stop and _can_stop_early(trainer)


def _can_stop_early(trainer: Trainer) -> bool:
    state = trainer.state
    epochs_met = state.current_epoch >= trainer.min_epochs if trainer.min_epochs else True
    steps_met = state.global_step >= trainer.min_steps if trainer.min_steps else True
    return epochs_met and steps_met


def run_sanity_check(trainer: Trainer) -> None:
    hooks = trainer._hooks
    trainer._reset_metrics()
    previous = trainer.state.stage
    trainer.state.stage = RunningStage.SANITY_CHECKING
    hooks.call_callbacks("on_sanity_check_start")
    loaders = trainer._load_eval_dataloaders(RunningStage.VALIDATING)
    steps = trainer.num_sanity_val_steps
    trainer.num_sanity_val_batches = [
        n if steps < 0 else min(n, steps) for n in trainer.num_val_batches
    ]  # fmt: skip
    with isolate_rng():  # the sanity check must not change what training draws
        evaluation_run(trainer, RunningStage.SANITY_CHECKING, loaders, trainer.num_sanity_val_batches)
    hooks.call_callbacks("on_sanity_check_end")
    trainer._reset_metrics()
    trainer.state.stage = previous


def train_epoch(trainer: Trainer) -> None:
    """One training epoch: the batch loop, validation when due, the epoch-end hooks and logs.

    Resuming: ``state.batch_idx`` batches of this epoch are done and ``state.phase`` says where
    inside the last one the checkpoint was taken. The epoch redraws its data order from the
    generators it had at its start, discards the finished batches (so dataloader workers and
    datasets draw exactly as before), then takes the generators of the moment of saving and
    finishes what that moment still had pending.
    """
    state = trainer.state
    hooks = trainer._hooks
    store = trainer._train_results
    trainer._flush_metrics(store)
    store.reset()
    trainer._results = store
    if trainer._reload_due("train"):
        trainer._load_train_dataloader()
    loader, limit = trainer._train_dataloader, trainer.num_training_batches
    skip, phase = state.batch_idx, state.phase
    if skip == 0 and phase is None:
        _restore_resume_rng(trainer)  # a checkpoint taken between epochs

    if phase != PHASE_EPOCH_END:
        hooks.call("on_train_epoch_start")

    plan = _EpochPlan(trainer)
    if skip > 0 and trainer._resume_epoch_start_rng is not None:
        restore_rng(trainer._resume_epoch_start_rng)
    trainer._resume_epoch_start_rng = None
    trainer._epoch_start_rng = capture_rng()
    epoch_complete = False
    batches = data.iterate(loader, limit, state.current_epoch)
    if phase == PHASE_EPOCH_END:
        batches = iter(())  # the checkpoint was taken in on_train_epoch_end: only the epoch's tail is left
        epoch_complete = skip >= limit
        _restore_resume_rng(trainer)
    elif skip > 0:
        for _ in range(skip):  # replay the finished batches' data draws, without training on them
            if next(batches, None) is None:
                break
        _restore_resume_rng(trainer)
        if phase is not None:
            last = skip - 1
            is_last = limit != math.inf and last == int(limit) - 1
            _finish_batch(trainer, plan, store, last, is_last, plan.is_stepping(last, is_last), resumed=True)
            epoch_complete = is_last

    while not epoch_complete:
        if (0 <= plan.max_steps <= state.global_step) or (trainer.should_stop and _epoch_can_stop(trainer)):
            break
        item = next(batches, None)
        if item is None:
            epoch_complete = True
            break
        batch_idx, batch, is_last = item
        batch = plan.to_device(batch, 0)
        store.batch = batch
        store.batch_size = None
        if plan.batch_start and hooks.call("on_train_batch_start", batch, batch_idx) == -1:
            break
        stepping = plan.is_stepping(batch_idx, is_last)
        outputs = plan.batch_step(trainer, batch, batch_idx, stepping)

        if stepping and plan.step_schedulers:
            _step_schedulers(trainer, plan.step_schedulers, state.batches_that_stepped, plateau=False)
        if is_last and plan.epoch_schedulers:
            _step_schedulers(trainer, plan.epoch_schedulers, state.current_epoch, plateau=False)
        # Counters first: a checkpoint taken in on_train_batch_end records this batch as done.
        state.batch_idx = batch_idx + 1
        state.total_batch_idx += 1
        state.phase = PHASE_BATCH_END
        if plan.batch_end:
            hooks.call("on_train_batch_end", outputs, batch, batch_idx)
        _finish_batch(trainer, plan, store, batch_idx, is_last, stepping, resumed=False)
        watching = plan.signals is not None and (plan.distributed or plan.signals.received is not None)
        if watching and _signal_received(trainer, plan.distributed):
            _save_and_stop_on_signal(trainer)
            break

    # ------------------------------------------------------------------------------ epoch end
    trainer._flush_metrics(store)
    store.batch = None
    store.epoch_end_reached = True
    if phase != PHASE_EPOCH_END:
        store.compute_epoch()
        state.phase = PHASE_EPOCH_END
        hooks.train_epoch_end()
        store.compute_epoch()
        trainer._flush_metrics(store)
    if epoch_complete and plan.epoch_schedulers:
        _step_schedulers(trainer, plan.epoch_schedulers, state.current_epoch, plateau=True)
    epoch_logs = store.views()[1]
    if epoch_logs and phase != PHASE_EPOCH_END:
        trainer._log_to_loggers(epoch_logs, step=max(state.batches_that_stepped - 1, 0))
    for logger in trainer.loggers:  # flushed once per epoch; loggers buffer step values in between
        logger.save()
    store.reset()  # torchmetrics objects start the next epoch empty
    state.current_epoch += 1
    state.batch_idx = 0
    state.phase = None
    if plan.max_time is not None and _out_of_time(trainer, plan.max_time):
        trainer.should_stop = True


#: Where inside an epoch a checkpoint was taken (``state.phase``); None: between batches.
PHASE_BATCH_END = "train_batch_end"
PHASE_VALIDATION = "validation"
PHASE_EPOCH_END = "train_epoch_end"


class _EpochPlan:
    """What stays fixed for one epoch, looked up once instead of per batch."""

    def __init__(self, trainer: Trainer) -> None:
        hooks = trainer._hooks
        automatic = trainer.lightning_module.automatic_optimization
        configs = trainer.lr_scheduler_configs if automatic else []
        self.automatic = automatic
        self.accumulate = trainer.accumulate_grad_batches
        self.max_steps = trainer.max_steps
        self.log_every = trainer.log_every_n_steps
        self.to_device = batch_mover(trainer)
        self.batch_start = hooks.any("on_train_batch_start")
        self.batch_end = hooks.any("on_train_batch_end")
        self.val_check = _val_check_fn(trainer)
        self.step_schedulers = [c for c in configs if c.interval == "step"]
        self.epoch_schedulers = [c for c in configs if c.interval == "epoch"]
        self.max_time = trainer._max_time_seconds
        self.batch_step = automatic_step if automatic else manual_step
        self.signals = trainer._signals
        self.distributed = trainer.strategy.world_size > 1

    def is_stepping(self, batch_idx: int, is_last: bool) -> bool:
        return not self.automatic or is_last or (batch_idx + 1) % self.accumulate == 0


def _finish_batch(
    trainer: Trainer, plan: _EpochPlan, store: Any, batch_idx: int, is_last: bool, stepping: bool, resumed: bool
) -> None:
    """After ``on_train_batch_end``: step logs, validation when due, plateau schedulers, counters."""
    state = trainer.state
    if (
        not resumed
        and stepping
        and plan.log_every
        and store.has_step_logs
        and ((state.batches_that_stepped + 1) % plan.log_every == 0 or trainer.should_stop)
    ):
        trainer._log_to_loggers(store.step_log_view(), step=state.batches_that_stepped, save=trainer.should_stop)
    due = plan.val_check is not None and plan.val_check(batch_idx, is_last)
    if due and state.last_val_total_batch != state.total_batch_idx:
        if stepping:
            trainer._hooks.call_module("on_validation_model_zero_grad", always=True)
        # Marked before it runs: a checkpoint saved at on_validation_end must not validate again.
        state.last_val_total_batch = state.total_batch_idx
        state.phase = PHASE_VALIDATION
        run_validation(trainer)
        trainer._results = store
    if stepping and plan.step_schedulers:
        _step_schedulers(trainer, plan.step_schedulers, state.batches_that_stepped, plateau=True)
    if stepping:
        state.batches_that_stepped += 1
    state.phase = None
    if plan.max_time is not None and _out_of_time(trainer, plan.max_time):
        trainer.should_stop = True


def _restore_resume_rng(trainer: Trainer) -> None:
    """Take the generators of the moment the checkpoint was saved (once, after catching up)."""
    if trainer._resume_rng is not None:
        restore_rng(trainer._resume_rng)
        trainer._resume_rng = None


def _signal_received(trainer: Trainer, distributed: bool) -> bool:
    received = trainer._signals.received is not None
    if distributed:  # every rank stops at the same batch
        received = trainer.strategy.reduce_boolean_decision(received, all=False)
    return received


def _save_and_stop_on_signal(trainer: Trainer) -> None:
    """Checkpoint at this batch boundary, requeue the SLURM job when asked, and end fit on every rank."""
    # Any rank may be the one that got it (srun signals all, a kill one): take the first seen.
    received = trainer.strategy.all_gather_object(trainer._signals.received)
    signum = next(s for s in received if s is not None)
    trainer._received_signal = signum
    path = trainer.strategy.broadcast(hpc_checkpoint_path(trainer.default_root_dir))
    trainer.save_checkpoint(path)
    rank_zero_info(f"Signal {signal.Signals(signum).name} received: saved {path} and stopping.")
    environment = trainer.strategy.cluster_environment
    if (
        trainer.is_global_zero
        and isinstance(environment, SLURMEnvironment)
        and environment.auto_requeue
        and signum == environment.requeue_signal
    ):
        requeue_slurm_job(environment.job_id())
    trainer.should_stop = True
    trainer._stop_now = True


def _epoch_can_stop(trainer: Trainer) -> bool:
    if _can_stop_early(trainer):
        return True
    if not trainer._warned_min_limits:
        trainer._warned_min_limits = True
        rank_zero_info(
            f"`trainer.should_stop` was set, but `min_epochs={trainer.min_epochs}` / `min_steps={trainer.min_steps}` "
            "are not met yet: training continues."
        )
    return False


def _out_of_time(trainer: Trainer, max_time: float) -> bool:
    elapsed = time.monotonic() - trainer._fit_start_time
    return trainer.strategy.reduce_boolean_decision(elapsed >= max_time, all=False)


def _val_check_fn(trainer: Trainer) -> Callable[[int, bool], bool] | None:
    """When to validate during this epoch, as a function of the batch that just finished."""
    if not trainer._validation_enabled():
        return None
    every_n = trainer.check_val_every_n_epoch
    if every_n is not None and (trainer.state.current_epoch + 1) % every_n != 0:
        return None
    interval = trainer.val_check_batch
    state = trainer.state

    def due(batch_idx: int, is_last: bool) -> bool:
        if interval == math.inf:
            return is_last
        if trainer.should_stop and _can_stop_early(trainer):
            return True
        current = state.total_batch_idx - 1 if every_n is None else batch_idx
        return (current + 1) % interval == 0

    return due


def _step_schedulers(trainer: Trainer, configs: list[Any], index: int, plateau: bool) -> None:
    """Step the schedulers due at ``index`` (steps or epochs counted from 0)."""
    for config in configs:
        if config.reduce_on_plateau != plateau or (index + 1) % config.frequency:
            continue
        metric = None
        if plateau:
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is None:
                available = sorted(trainer.callback_metrics)
                if config.strict:
                    raise MisconfigurationException(
                        f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged. "
                        f"Logged: {available}. Log it with `self.log({config.monitor!r}, ...)` or set 'strict': False."
                    )
                rank_zero_warn(
                    f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged; the step is skipped. "
                    f"Logged: {available}.",
                    category=RuntimeWarning,
                )
                continue
        trainer._hooks.call_module("lr_scheduler_step", config.scheduler, metric, always=True)


# --------------------------------------------------------------------------------- optimization
def automatic_step(trainer: Trainer, batch: Any, batch_idx: int, stepping: bool) -> dict[str, Any]:
    """``training_step``, zero_grad, backward and (when ``stepping``) the optimizer step, for one batch."""
    hooks = trainer._hooks
    active = hooks.active
    strategy = trainer.strategy
    state = trainer.state
    accumulate = trainer.accumulate_grad_batches
    optimizer = trainer._optimizers[0]
    first_in_window = batch_idx % accumulate == 0
    result: list[Any] = [None]

    def closure() -> Tensor | None:
        output = trainer._step("training_step", batch, batch_idx)
        if isinstance(output, Tensor):
            loss = output
        elif isinstance(output, dict):
            loss = output.get("loss")
            if loss is None:
                raise MisconfigurationException(
                    "`training_step` returned a dict without the key 'loss'. Return the loss tensor, or a dict "
                    "holding it under 'loss'."
                )
        elif output is None:
            loss = None
            trainer._warn_none_loss()
        else:
            raise MisconfigurationException(
                f"`training_step` returned {type(output).__name__}; with automatic optimization it must return "
                "a tensor, a dict with 'loss', or None (to skip the batch)."
            )
        if first_in_window:
            if active["on_before_zero_grad"]:
                hooks.call("on_before_zero_grad", trainer._lightning_optimizers[0])
            if hooks.module["optimizer_zero_grad"] is None:
                optimizer.zero_grad()
            else:
                hooks.call_module(
                    "optimizer_zero_grad", state.current_epoch, batch_idx, trainer._lightning_optimizers[0]
                )
        if loss is not None:
            if accumulate > 1:
                loss = loss / accumulate
            trainer._backward_with_hooks(loss)
            loss = loss.detach()
        result[0] = (output, loss)
        if stepping:
            if active["on_before_optimizer_step"]:
                hooks.call("on_before_optimizer_step", trainer._lightning_optimizers[0])
            if hooks.module["configure_gradient_clipping"] is not None:
                hooks.call_module(
                    "configure_gradient_clipping",
                    trainer._lightning_optimizers[0],
                    trainer.gradient_clip_val,
                    trainer.gradient_clip_algorithm,
                )
            elif trainer.gradient_clip_val:
                trainer._clip_gradients(optimizer, None, None)
        return loss

    if not stepping:
        with strategy.no_backward_sync(trainer._model, enabled=True):
            closure()
    elif trainer._step_with_closure:
        hooks.call_module(
            "optimizer_step", state.current_epoch, batch_idx, trainer._lightning_optimizers[0], closure, always=True
        )
    else:
        closure()
        strategy.optimizer_step(optimizer)
        state.global_step += 1

    if result[0] is None:  # an optimizer_step override that never ran the closure
        return {}
    output, loss = result[0]
    if loss is None:
        return {}
    if isinstance(output, dict):
        return {**output, "loss": loss}
    return {"loss": loss}


def manual_step(trainer: Trainer, batch: Any, batch_idx: int, stepping: bool) -> dict[str, Any]:
    """Manual optimization: ``training_step`` calls the optimizers itself."""
    output = trainer._step("training_step", batch, batch_idx)
    if output is None:
        return {}
    if isinstance(output, Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict):
        outputs = dict(output)
        if isinstance(outputs.get("loss"), Tensor):
            outputs["loss"] = outputs["loss"].detach()
        return outputs
    raise MisconfigurationException(
        f"`training_step` returned {type(output).__name__}; with manual optimization it must return a tensor, "
        "a dict or None."
    )


def setup_lightning_optimizers(trainer: Trainer) -> list[LightningOptimizer]:
    """The optimizers as ``self.optimizers()`` hands them out: stepping through the strategy, counted."""
    state = trainer.state
    module = trainer.lightning_module
    manual = not module.automatic_optimization

    def count_step() -> None:
        state.global_step += 1

    def after_closure_for(optimizer: LightningOptimizer) -> Callable[[], None]:
        def after_closure() -> None:
            hooks = trainer._hooks
            if hooks.any("on_before_optimizer_step"):
                hooks.call("on_before_optimizer_step", optimizer)
            if hooks.module["configure_gradient_clipping"] is not None:
                hooks.call_module(
                    "configure_gradient_clipping", optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm
                )

        return after_closure

    wrapped = []
    for optimizer in trainer._optimizers:
        lightning_optimizer = LightningOptimizer(optimizer)
        lightning_optimizer._strategy = trainer.strategy
        lightning_optimizer._on_after_step = count_step
        lightning_optimizer._module = module
        if manual:
            lightning_optimizer._after_closure = after_closure_for(lightning_optimizer)
        wrapped.append(lightning_optimizer)
    return wrapped


# ------------------------------------------------------------------------------------ evaluation
def run_validation(trainer: Trainer) -> list[dict[str, float]]:
    """Validation during fit (the val dataloaders are loaded on the first run and on reloads)."""
    if trainer._val_dataloaders is None or trainer._reload_due("val"):
        trainer._load_eval_dataloaders(RunningStage.VALIDATING)
    return evaluation_run(trainer, RunningStage.VALIDATING, trainer._val_dataloaders, trainer.num_val_batches)


def evaluation_run(
    trainer: Trainer, stage: RunningStage, loaders: list[Any], limits: list[int | float]
) -> list[dict[str, float]]:
    """One validation or test run over every loader; returns the logged epoch values per loader."""
    hooks = trainer._hooks
    state = trainer.state
    sanity = stage == RunningStage.SANITY_CHECKING
    prefix = "test" if stage == RunningStage.TESTING else "validation"
    step_name = f"{prefix}_step"
    previous_results, previous_stage = trainer._results, state.stage
    store = trainer._new_store(training=False)
    trainer._results = store
    state.stage = stage
    to_device = batch_mover(trainer)
    batch_start = hooks.any(f"on_{prefix}_batch_start")
    batch_end = hooks.any(f"on_{prefix}_batch_end")
    several = len(loaders) > 1
    outputs: list[dict[str, float]] = []
    fitting = trainer.state.fn == TrainerFn.FITTING
    modes = None if fitting else _training_modes(trainer.lightning_module)

    with trainer._eval_context():
        hooks.call_module(f"on_{prefix}_model_eval", always=True)
        hooks.call(f"on_{prefix}_start")
        hooks.call(f"on_{prefix}_epoch_start")
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            store.dataloader_idx = dataloader_idx if several else None
            for batch_idx, batch, _ in data.iterate(loader, limit):
                batch = to_device(batch, dataloader_idx)
                store.batch = batch
                store.batch_size = None
                args = (batch, batch_idx, dataloader_idx) if several else (batch, batch_idx)
                if batch_start:
                    hooks.call(f"on_{prefix}_batch_start", *args)
                output = trainer._step(step_name, *args)
                if batch_end:
                    hooks.call(f"on_{prefix}_batch_end", output, *args)
                if store.has_step_logs and not sanity:
                    trainer._eval_log_step += 1
                    trainer._log_to_loggers(store.step_log_view(), step=trainer._eval_log_step)
        store.dataloader_idx = None
        store.batch = None
        if not sanity:
            trainer._flush_metrics(store)
        store.epoch_end_reached = True
        store.compute_epoch()
        hooks.call(f"on_{prefix}_epoch_end")
        store.compute_epoch()
        if not sanity:
            trainer._flush_metrics(store)
            outputs = [to_scalars(logs) for logs in store.epoch_logs_per_dataloader(len(loaders))]
            logs = store.views()[1]
            if logs:
                trainer._log_to_loggers(logs, step=state.batches_that_stepped, save=True)
        hooks.call(f"on_{prefix}_end")
        if fitting or stage == RunningStage.SANITY_CHECKING:
            hooks.call_module(f"on_{prefix}_model_train", always=True)
        else:
            _restore_training_modes(modes)
            hooks.call_module(f"on_{prefix}_model_train")
    store.reset()
    trainer._results = previous_results
    state.stage = previous_stage
    return outputs


def predict_loop(trainer: Trainer, loaders: list[Any], limits: list[int | float], keep: bool) -> Any:
    hooks = trainer._hooks
    state = trainer.state
    state.stage = RunningStage.PREDICTING
    to_device = batch_mover(trainer)
    several = len(loaders) > 1
    predictions: list[list[Any]] = [[] for _ in loaders]
    batch_start = hooks.any("on_predict_batch_start")
    batch_end = hooks.any("on_predict_batch_end")
    modes = _training_modes(trainer.lightning_module)
    cpu = torch.device("cpu")
    with trainer._eval_context():
        hooks.call_module("on_predict_model_eval", always=True)
        hooks.call("on_predict_start")
        hooks.call("on_predict_epoch_start")
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            for batch_idx, batch, _ in data.iterate(loader, limit):
                batch = to_device(batch, dataloader_idx)
                args = (batch, batch_idx, dataloader_idx) if several else (batch, batch_idx)
                if batch_start:
                    hooks.call("on_predict_batch_start", *args)
                prediction = trainer._step("predict_step", *args)
                if batch_end:
                    hooks.call("on_predict_batch_end", prediction, *args)
                if keep:
                    predictions[dataloader_idx].append(move_data_to_device(prediction, cpu))
        hooks.call("on_predict_epoch_end")
        hooks.call("on_predict_end")
    _restore_training_modes(modes)
    if not keep:
        return None
    return predictions[0] if not several else predictions


# ----------------------------------------------------------------------------------------- helpers
def batch_mover(trainer: Trainer) -> Callable[[Any, int], Any]:
    """``batch -> batch on the device``, with the batch-transfer hooks only where overridden."""
    strategy = trainer.strategy
    transfer = trainer._hooks.transfer
    before, move, after = (transfer[n] for n in ("on_before_batch_transfer", "transfer_batch_to_device",
                                                 "on_after_batch_transfer"))  # fmt: skip
    convert_input = strategy.precision.convert_input
    results = trainer

    if before is None and move is None and after is None:
        if (
            strategy.root_device.type == "cpu"
            and type(strategy).batch_to_device is Strategy.batch_to_device
            and type(strategy.precision).convert_input is Precision.convert_input
        ):
            return _unchanged  # batches from a CPU dataloader are where they need to be

        def simple(batch: Any, dataloader_idx: int) -> Any:
            return convert_input(strategy.batch_to_device(batch))

        return simple

    def with_hooks(batch: Any, dataloader_idx: int) -> Any:
        store = results._results
        previous = store.fx
        try:
            if before is not None:
                store.fx = "on_before_batch_transfer"
                batch = before(batch, dataloader_idx)
            if move is not None:
                store.fx = "transfer_batch_to_device"
                batch = move(batch, strategy.root_device, dataloader_idx)
            else:
                batch = strategy.batch_to_device(batch)
            batch = convert_input(batch)
            if after is not None:
                store.fx = "on_after_batch_transfer"
                batch = after(batch, dataloader_idx)
        finally:
            store.fx = previous
        return batch

    return with_hooks


def _unchanged(batch: Any, dataloader_idx: int) -> Any:
    return batch


def _training_modes(module: torch.nn.Module) -> dict[torch.nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def _restore_training_modes(modes: dict[torch.nn.Module, bool] | None) -> None:
    for m, training in (modes or {}).items():
        m.training = training


def grad_context(inference_mode: bool, backend_is_gloo: bool) -> contextlib.AbstractContextManager:
    # inference_mode tensors cannot take part in gloo collectives (pytorch#95930): use no_grad there.
    return torch.inference_mode() if inference_mode and not backend_is_gloo else torch.no_grad()


@contextlib.contextmanager
def isolate_rng() -> Generator[None, None, None]:
    """Leave the random generators as they were (the sanity check must not change training)."""
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        import numpy as np

        numpy_state = np.random.get_state()
    except ImportError:
        np, numpy_state = None, None
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if np is not None:
            np.random.set_state(numpy_state)
