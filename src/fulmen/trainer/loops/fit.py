"""The fit loop: ``fit_loop`` → ``train_epoch`` → one batch at a time (see ``optimization``).

Hook order is documented in :mod:`fulmen.trainer.dispatch`. Counters live in ``run.state``; device,
distributed and precision work goes through ``run.strategy``. The per-batch path calls only
hooks that someone overrides and converts no tensor to a Python number.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fulmen.trainer import profiling, signals
from fulmen.trainer.loaders import load_train_dataloader, reload_due, validation_enabled
from fulmen.trainer.loops import batches as batch_iteration
from fulmen.trainer.loops import resume
from fulmen.trainer.loops.evaluation import run_sanity_check, run_validation
from fulmen.trainer.loops.optimization import automatic_step, manual_step
from fulmen.trainer.loops.resume import PHASE_BATCH_END, PHASE_EPOCH_END, PHASE_VALIDATION
from fulmen.trainer.loops.transfer import batch_mover
from fulmen.trainer.metrics import log_to_loggers
from fulmen.trainer.rng import capture_rng
from fulmen.trainer.run import positional_arity
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn
from fulmen.utilities.stages import RunningStage

if TYPE_CHECKING:
    from fulmen.trainer.run import Run


class FitLoop:
    """What only the fit loop reads and writes, for one ``fit`` (or one tuning trial): its clock
    and its warn-once flags."""

    def __init__(self) -> None:
        self.start_time = time.monotonic()
        #: When validation last ran (time-based ``val_check_interval``).
        self.last_val_time = self.start_time
        self._warned: set[str] = set()

    def warn_once(self, key: str, message: str, info: bool = False) -> None:
        if key not in self._warned:
            self._warned.add(key)
            (rank_zero_info if info else rank_zero_warn)(message)


def fit_loop(run: Run) -> None:
    hooks, state = run.hooks, run.state
    hooks.call("on_fit_start")
    run.module.zero_grad()  # every stage starts without gradients, as in Lightning
    if validation_enabled(run) and run.config.num_sanity_val_steps != 0:
        run_sanity_check(run)
    load_train_dataloader(run)
    loop = FitLoop()
    hooks.call("on_train_start")
    while not _fit_done(run):
        state.stage = RunningStage.TRAINING
        with run.trainer.profiler.profile("run_training_epoch"):
            train_epoch(run, loop)
    hooks.call("on_train_end")
    hooks.call("on_fit_end")


def _fit_done(run: Run) -> bool:
    state, config = run.state, run.config
    if run.stop_now:
        return True
    if run.num_training_batches == 0:
        rank_zero_info("`Trainer.fit` stopped: no training batches.")
        return True
    if 0 <= config.max_steps <= state.global_step:
        rank_zero_info(f"`Trainer.fit` stopped: `max_steps={config.max_steps}` reached.")
        return True
    if 0 <= config.max_epochs <= state.current_epoch:
        rank_zero_info(f"`Trainer.fit` stopped: `max_epochs={config.max_epochs}` reached.")
        return True
    return run.trainer.should_stop and _can_stop_early(run)


def _can_stop_early(run: Run) -> bool:
    state, config = run.state, run.config
    epochs_met = state.current_epoch >= config.min_epochs if config.min_epochs else True
    steps_met = state.global_step >= config.min_steps if config.min_steps else True
    return epochs_met and steps_met


def train_epoch(run: Run, loop: FitLoop) -> None:
    """One training epoch: the batch loop, validation when due, the epoch-end hooks and logs."""
    state, hooks, trainer = run.state, run.hooks, run.trainer
    store = run.train_results
    # No reset here: values logged in on_train_start belong to the first epoch (the store is
    # reset at each epoch's end).
    run.metrics.fold(store)
    if reload_due(run, "train"):
        load_train_dataloader(run)
    loader, limit = run.train_dataloader, run.num_training_batches
    skip, phase = state.batch_idx, state.phase
    if skip == 0 and phase is None:
        resume.restore_resume_rng(run)  # a checkpoint taken between epochs
    if phase != PHASE_EPOCH_END:
        hooks.call("on_train_epoch_start")

    plan = EpochPlan(run, loop)
    resume.restore_epoch_start_rng(run)
    run.epoch_start_rng = capture_rng()
    batches = batch_iteration.iterate(loader, limit, state.current_epoch)
    epoch_complete = False
    if skip or phase is not None:

        def finish_pending(batch_idx: int, is_last: bool) -> None:
            _finish_batch(run, plan, batch_idx, is_last, plan.is_stepping(batch_idx, is_last), resumed=True)

        batches, epoch_complete = resume.catch_up(run, batches, limit, finish_pending)
    batches = profiling.train_batches(plan, batches)

    to_device, batch_step, accumulate = plan.to_device, plan.batch_step, plan.accumulate
    while not epoch_complete:
        if (0 <= plan.max_steps <= state.global_step) or (trainer.should_stop and _epoch_can_stop(run, loop)):
            break
        item = next(batches, None)
        if item is None:
            epoch_complete = True
            break
        batch_idx, batch, is_last = item
        run.is_last_batch = is_last
        if to_device is not None:
            batch = to_device(batch, 0)
        store.batch = batch
        store.batch_size = None
        stepping = is_last or not plan.automatic or (batch_idx + 1) % accumulate == 0
        if batch is None:  # a collate_fn may drop a batch: no step, the batch-end hooks get None
            loop.warn_once("none_batch", _NONE_BATCH)
            outputs = None
        else:
            if plan.batch_start and hooks.call("on_train_batch_start", batch, batch_idx) == -1:
                if plan.epoch_schedulers:  # the epoch ends here: its schedulers step as at a last batch
                    _step_schedulers(run, plan.epoch_schedulers, state.current_epoch, plateau=False)
                break
            outputs = batch_step(run, plan, batch, batch_idx, stepping)
            # fault_tolerant: a step the replica groups did not commit steps no scheduler and is not counted;
            # if it was the epoch's last, its samples come in one more batch, which ends the epoch instead.
            if not run.strategy.last_step_committed:
                stepping = is_last = run.is_last_batch = False

        if stepping and plan.step_schedulers:
            _step_schedulers(run, plan.step_schedulers, state.batches_that_stepped, plateau=False)
        if is_last and plan.epoch_schedulers:
            _step_schedulers(run, plan.epoch_schedulers, state.current_epoch, plateau=False)
        # Counters first: a checkpoint taken in on_train_batch_end records this batch as done.
        state.batch_idx = batch_idx + 1
        state.total_batch_idx += 1
        state.phase = PHASE_BATCH_END
        if plan.batch_end:
            hooks.call("on_train_batch_end", outputs, batch, batch_idx)
        _finish_batch(run, plan, batch_idx, is_last, stepping, resumed=False)
        poll = plan.signal_poll  # many processes: they agree at batch counts they all know
        if poll is not None:
            poll.countdown -= 1
            if not poll.countdown and poll.check():
                signals.save_and_stop_on_signal(run)
                break
        elif plan.signals is not None and plan.signals.received is not None:
            signals.save_and_stop_on_signal(run)
            break

    # ------------------------------------------------------------------------------ epoch end
    run.metrics.fold(store)
    store.batch = None
    store.epoch_end_reached = True
    if phase != PHASE_EPOCH_END:
        store.compute_epoch()
        state.phase = PHASE_EPOCH_END
        hooks.train_epoch_end()
        store.compute_epoch()
        run.metrics.fold(store)
    if epoch_complete and plan.epoch_schedulers:
        _step_schedulers(run, plan.epoch_schedulers, state.current_epoch, plateau=True)
    epoch_logs = store.views()[1]
    if epoch_logs and phase != PHASE_EPOCH_END:
        log_to_loggers(trainer.loggers, epoch_logs, max(state.batches_that_stepped - 1, 0), state.current_epoch)
    for logger in trainer.loggers:  # flushed once per epoch; loggers buffer step values in between
        logger.save()
    store.reset()  # torchmetrics objects start the next epoch empty
    state.current_epoch += 1
    state.batch_idx = 0
    state.phase = None
    if plan.max_time is not None and _out_of_time(run, loop, plan.max_time):
        trainer.should_stop = True


class EpochPlan:
    """What stays fixed for one epoch, looked up once instead of per batch."""

    def __init__(self, run: Run, loop: FitLoop) -> None:
        hooks, config = run.hooks, run.config
        self.loop = loop
        automatic = run.module.automatic_optimization
        configs = run.lr_scheduler_configs if automatic else []
        self.automatic = automatic
        self.accumulate = config.accumulate_grad_batches
        self.max_steps = config.max_steps
        self.log_every = config.log_every_n_steps
        self.to_device = batch_mover(run)
        self.batch_start = hooks.any("on_train_batch_start")
        self.batch_end = hooks.any("on_train_batch_end")
        self.val_check = _val_check_fn(run, loop)
        self.step_schedulers = [c for c in configs if c.interval == "step"]
        self.epoch_schedulers = [c for c in configs if c.interval == "epoch"]
        self.max_time = config.max_time_seconds
        self.batch_step = automatic_step if automatic else manual_step
        self.signals = run.signals
        self.distributed = run.strategy.world_size > 1
        self.signal_poll = signals.SignalPoll(run) if run.signals is not None and self.distributed else None
        #: ``training_step`` through the strategy's wrapper (DDP) when it wrapped the module, inside
        #: the strategy's forward context (autocast) when there is one to enter.
        step = run.model if run.router is not None else run.module.training_step
        if positional_arity(run.module.training_step) < 2:  # ``training_step(self, batch)``

            def step(batch: Any, batch_idx: int, _step: Callable[..., Any] = step) -> Any:
                return _step(batch)

        self.training_step = step if run.plain_forward else _in_context(step, run.strategy.forward_context)
        #: Backward with its hooks, or straight through the strategy when no hook wants it.
        backward_hooks = hooks.active["on_before_backward"] or hooks.active["on_after_backward"]
        if backward_hooks or hooks.module["backward"] is not None:
            self.backward = run.backward
        else:
            self.backward = functools.partial(run.strategy.backward, module=run.model)
        self.optimizer_step = run.strategy.optimizer_step
        #: The profiler when one is on (the callables above are then timed ones), else None.
        self.profiler: Any = None
        profiling.profile_epoch_plan(self, run)

    def is_stepping(self, batch_idx: int, is_last: bool) -> bool:
        return not self.automatic or is_last or (batch_idx + 1) % self.accumulate == 0


def _in_context(step: Callable[..., Any], context: Callable[[], Any]) -> Callable[..., Any]:
    def step_in_context(*args: Any) -> Any:
        with context():
            return step(*args)

    return step_in_context


def _finish_batch(run: Run, plan: EpochPlan, batch_idx: int, is_last: bool, stepping: bool, resumed: bool) -> None:
    """After ``on_train_batch_end``: step logs, validation when due, plateau schedulers, counters."""
    state, trainer, store = run.state, run.trainer, run.train_results
    if (
        not resumed
        and stepping
        and plan.log_every
        and store.has_step_logs
        and ((state.batches_that_stepped + 1) % plan.log_every == 0 or trainer.should_stop)
    ):
        log_to_loggers(trainer.loggers, store.step_log_view(), state.batches_that_stepped, state.current_epoch,
                       save=trainer.should_stop)  # fmt: skip
    if plan.max_time is not None and _out_of_time(run, plan.loop, plan.max_time):
        trainer.should_stop = True  # before the validation check: the run ends with a validation
    due = plan.val_check is not None and plan.val_check(batch_idx, is_last)
    if due and state.last_val_total_batch != state.total_batch_idx:
        run.metrics.fold(store)  # what training logged so far is visible to checkpoint monitors
        if stepping:
            run.hooks.call_module("on_validation_model_zero_grad", always=True)
        # Marked before it runs: a checkpoint saved at on_validation_end must not validate again.
        state.last_val_total_batch = state.total_batch_idx
        state.phase = PHASE_VALIDATION
        run_validation(run)
    if stepping and plan.step_schedulers:
        _step_schedulers(run, plan.step_schedulers, state.batches_that_stepped, plateau=True)
    if stepping:
        state.batches_that_stepped += 1
    state.phase = None


_NONE_BATCH = (
    "train_dataloader yielded None. If this was on purpose, ignore this warning: such batches are skipped "
    "(no training_step, no optimizer step) and on_train_batch_end receives None as outputs."
)


def _epoch_can_stop(run: Run, loop: FitLoop) -> bool:
    if _can_stop_early(run):
        return True
    config = run.config
    loop.warn_once(
        "min_limits",
        f"`trainer.should_stop` was set, but the required `min_epochs={config.min_epochs}` or "
        f"`min_steps={config.min_steps}` has not been met. Training will continue...",
        info=True,
    )
    return False


def _out_of_time(run: Run, loop: FitLoop, max_time: float) -> bool:
    elapsed = time.monotonic() - loop.start_time
    return run.strategy.reduce_boolean_decision(elapsed >= max_time, all=False)


def _val_check_fn(run: Run, loop: FitLoop) -> Callable[[int, bool], bool] | None:
    """When to validate during this epoch, as a function of the batch that just finished."""
    if not validation_enabled(run):
        return None
    state = run.state
    every_n = run.config.check_val_every_n_epoch
    if every_n is not None and (state.current_epoch + 1) % every_n != 0:
        return None
    interval = run.val_check_batch
    trainer = run.trainer
    seconds = run.config.val_check_seconds
    if seconds is not None:
        return _time_check_fn(run, loop, seconds)

    def due(batch_idx: int, is_last: bool) -> bool:
        if interval == math.inf:
            return is_last
        if trainer.should_stop and _can_stop_early(run):
            return True
        current = state.total_batch_idx - 1 if every_n is None else batch_idx
        return (current + 1) % interval == 0

    return due


def _time_check_fn(run: Run, loop: FitLoop, seconds: float) -> Callable[[int, bool], bool]:
    """Time-based ``val_check_interval``: validate once that much time passed since the last one."""
    strategy, distributed = run.strategy, run.strategy.world_size > 1

    def due(batch_idx: int, is_last: bool) -> bool:
        if run.trainer.should_stop and _can_stop_early(run):
            return True
        elapsed = time.monotonic() - loop.last_val_time >= seconds
        if distributed:  # every rank validates at the same batch
            elapsed = strategy.reduce_boolean_decision(elapsed, all=False)
        if elapsed:
            loop.last_val_time = time.monotonic()
        return elapsed

    return due


def _step_schedulers(run: Run, configs: list[Any], index: int, plateau: bool) -> None:
    """Step the schedulers due at ``index`` (steps or epochs counted from 0)."""
    for config in configs:
        if config.reduce_on_plateau != plateau or (index + 1) % config.frequency:
            continue
        metric = None
        if plateau:
            callback_metrics = run.trainer.callback_metrics
            metric = callback_metrics.get(config.monitor)
            if metric is None:
                available = sorted(callback_metrics)
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
        run.hooks.call_module("lr_scheduler_step", config.scheduler, metric, always=True)
