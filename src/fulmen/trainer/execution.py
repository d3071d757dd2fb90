"""One Trainer call in one process (``execute``), and carrying its results back from spawned ranks.

``execute`` follows the documented hook order (:mod:`fulmen.trainer.dispatch`): setup, the
checkpoint to resume from, the loop of the entry point, teardown. An error runs
``on_exception`` once per process and is re-raised; the strategy is torn down either way.
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fulmen.trainer import checkpoint_state as checkpoint_io
from fulmen.trainer import profiling, replicas, setup
from fulmen.trainer.configuration import set_torch_flags
from fulmen.trainer.defaults import merge_model_callbacks
from fulmen.trainer.loaders import load_eval_dataloaders
from fulmen.trainer.loops import evaluation_run, fit_loop, predict_loop
from fulmen.trainer.signals import watch_signals
from fulmen.utilities.apply_func import apply_to_collection
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.stages import RunningStage, TrainerFn, TrainerStatus

if TYPE_CHECKING:
    from fulmen.trainer.run import Run
    from fulmen.trainer.trainer import Trainer


def execute(run: Run) -> Any:
    """Run the call's loop in this process; returns what the entry point returns."""
    try:
        trainer, strategy, module, fn = run.trainer, run.strategy, run.module, run.fn
        module.trainer = trainer  # a spawned process unpickles the module without its trainer
        if run.datamodule is not None:
            run.datamodule.trainer = trainer
        strategy.setup_environment()
        profiling.setup_profiler(run)
        set_torch_flags(run.config.deterministic, run.config.benchmark)
        trainer.should_stop = False
        run.log_into(run.new_store(training=False))

        trainer.callbacks = merge_model_callbacks(trainer.callbacks, module.configure_callbacks())
        for callback in trainer.callbacks:  # what Callback.log reaches the module through
            callback.__dict__["_trainer"] = trainer
        hooks = setup.attach_hooks(run, trainer.callbacks)
        setup.check_loop_configuration(run)
        setup.prepare_data(run)
        setup.setup_hooks(run)
        setup.setup_model(run)
        # Rank zero decides which file "last"/"best" means, so that every rank loads the same one.
        run.ckpt_path = strategy.broadcast(checkpoint_io.resolve_checkpoint_path(trainer, run.ckpt_path, fn))
        if run.ckpt_path is not None:
            weights_only = True if run.weights_only is None else run.weights_only
            loaded = checkpoint_io.load_checkpoint_file(trainer, run.ckpt_path, weights_only=weights_only)
            checkpoint_io.restore_checkpoint(run, loaded, fn)

        if fn == TrainerFn.FITTING:
            if run.config.enable_autolog_hparams:
                setup.log_hyperparams(run)
            run.start_training_logs()
            run.state.stage = RunningStage.TRAINING
            # No model.train() here: each submodule keeps the mode its owner set (a frozen, eval-mode
            # backbone stays so), as in Lightning; evaluation restores the modes it found.
            replicas.sync_replicas(run)  # strategy='fault_tolerant': a restarted replica group heals here
            with torch.autograd.set_detect_anomaly(run.config.detect_anomaly), watch_signals(run):
                fit_loop(run)
            result = None
        elif fn == TrainerFn.PREDICTING:
            module.zero_grad()  # every stage starts without gradients, as in Lightning
            loaders = load_eval_dataloaders(run, RunningStage.PREDICTING)
            result = predict_loop(run, loaders, run.num_predict_batches, run.return_predictions)
        else:
            stage = RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING
            module.zero_grad()
            loaders = load_eval_dataloaders(run, stage)
            limits = run.num_val_batches if fn == TrainerFn.VALIDATING else run.num_test_batches
            result = evaluation_run(run, stage, loaders, limits)

        # Asynchronous checkpoint saves are published before the run counts as finished.
        strategy.wait_for_checkpoint_saves()
        hooks.call_datamodule("teardown", stage=fn.value)  # by keyword, as Lightning calls it
        hooks.call_callbacks("teardown", stage=fn.value)
        hooks.call_module("teardown", stage=fn.value)
        for logger in trainer.loggers:
            logger.finalize("success")
        trainer.profiler.describe()
        run.state.status = TrainerStatus.FINISHED
        run.state.stage = None
        return result
    except BaseException as exception:
        # A pending save is finished (the checkpoint may be what the user resumes from) before
        # `on_exception` saves its own; the original error stays the one raised.
        _wait_for_saves_quietly(run)
        if not was_handled(exception):
            handle_exception(run.trainer, exception)
            _wait_for_saves_quietly(run)
        raise
    finally:
        run.metrics.fold(run.results)
        run.end_logs()
        run.strategy.teardown()
        run.trainer.profiler.teardown(run.fn.value)


def _wait_for_saves_quietly(run: Run) -> None:
    try:
        run.strategy.wait_for_checkpoint_saves()
    except Exception as err:
        rank_zero_warn(f"While handling the run's error: {err}")


def handle_exception(trainer: Trainer, exception: BaseException) -> None:
    """``on_exception`` for callbacks, datamodule and module, then every logger's ``finalize("failed")``."""
    trainer.state.status = TrainerStatus.INTERRUPTED
    module, datamodule = trainer.lightning_module, trainer.datamodule
    for callback in trainer.callbacks:
        callback.on_exception(trainer, module, exception)
    if datamodule is not None:
        datamodule.on_exception(exception)
    if module is not None:
        module.on_exception(exception)
    for logger in trainer.loggers:
        logger.finalize("failed")
    with contextlib.suppress(AttributeError, TypeError):
        exception._fulmen_handled = True  # type: ignore[attr-defined]


def was_handled(exception: BaseException) -> bool:
    return getattr(exception, "_fulmen_handled", False)


# ------------------------------------------------------------------------------ spawned ranks
def execute_spawned(run: Run) -> bytes | None:
    """In each spawned process: run, then send back what the main process needs (rank 0 only).

    The payload travels as bytes: tensors sent through a queue as shared memory would need
    this process alive until the main process has read them.
    """
    trainer = run.trainer
    # Spawning pickles tensors into shared memory: without a copy every rank would update
    # the same CPU parameters.
    run.module._apply(torch.clone)
    result = execute(run)
    if not run.strategy.is_global_zero:
        return None
    payload = {
        "result": result,
        "state_dict": run.module.state_dict() if run.fn == TrainerFn.FITTING else None,
        "state": {**trainer.state.state_dict(), "status": trainer.state.status},
        "metrics": run.metrics.state(),
        "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks},
    }
    cpu = torch.device("cpu")
    buffer = io.BytesIO()
    torch.save(apply_to_collection(payload, Tensor, lambda t: t.detach().to(cpu)), buffer)
    return buffer.getvalue()


def receive_spawned(run: Run, data: bytes | None) -> Any:
    """In the main process: take rank 0's weights, progress, metrics and callback states."""
    if data is None:
        return None
    trainer = run.trainer
    # Our own child process wrote these bytes a moment ago: trusted, so a full unpickle.
    payload = torch.load(io.BytesIO(data), weights_only=False)
    if payload["state_dict"] is not None:
        run.module.load_state_dict(payload["state_dict"])
    state = dict(payload["state"])
    trainer.state.status = state.pop("status")
    trainer.state.load_state_dict(state)
    trainer.state.stage = None
    run.metrics.load_state(payload["metrics"])
    states = payload["callbacks"]
    for callback in trainer.callbacks:
        if callback.state_key in states:
            callback.load_state_dict(states[callback.state_key])
    return payload["result"]
