"""The evaluation loops: the sanity check, validation (inside fit and alone), test and predict."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch

from fulmen.trainer import profiling
from fulmen.trainer.loaders import load_eval_dataloaders, reload_due
from fulmen.trainer.loops import batches as batch_iteration
from fulmen.trainer.loops.transfer import batch_mover
from fulmen.trainer.metrics import log_to_loggers
from fulmen.trainer.results import to_scalars
from fulmen.trainer.rng import capture_rng, restore_rng
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.stages import RunningStage, TrainerFn

if TYPE_CHECKING:
    from fulmen.trainer.run import Run


def run_sanity_check(run: Run) -> None:
    hooks, state = run.hooks, run.state
    run.metrics.reset()
    previous = state.stage
    state.stage = RunningStage.SANITY_CHECKING
    hooks.call_callbacks("on_sanity_check_start")
    loaders = load_eval_dataloaders(run, RunningStage.VALIDATING)
    steps = run.config.num_sanity_val_steps
    run.num_sanity_val_batches = [n if steps < 0 else min(n, steps) for n in run.num_val_batches]
    with isolate_rng():  # the sanity check must not change what training draws
        evaluation_run(run, RunningStage.SANITY_CHECKING, loaders, run.num_sanity_val_batches)
    hooks.call_callbacks("on_sanity_check_end")
    run.metrics.reset()
    state.stage = previous


def run_validation(run: Run) -> list[dict[str, float]]:
    """Validation during fit (the val dataloaders are loaded on the first run and on reloads)."""
    if run.val_dataloaders is None or reload_due(run, "val"):
        load_eval_dataloaders(run, RunningStage.VALIDATING)
    return evaluation_run(run, RunningStage.VALIDATING, run.val_dataloaders, run.num_val_batches)


def evaluation_run(
    run: Run, stage: RunningStage, loaders: list[Any], limits: list[int | float]
) -> list[dict[str, float]]:
    """One validation or test run over every loader; returns the logged epoch values per loader."""
    hooks, state, loggers = run.hooks, run.state, run.trainer.loggers
    sanity = stage == RunningStage.SANITY_CHECKING
    prefix = "test" if stage == RunningStage.TESTING else "validation"
    step_name = f"{prefix}_step"
    step = profiling.eval_step(run, step_name)
    previous_stage = state.stage
    store = run.new_store(training=False)
    previous_results = run.log_into(store)
    state.stage = stage
    to_device = batch_mover(run)
    batch_start = hooks.any(f"on_{prefix}_batch_start")
    batch_end = hooks.any(f"on_{prefix}_batch_end")
    several = len(loaders) > 1
    outputs: list[dict[str, float]] = []
    modes = _training_modes(run.module)

    run.eval_batches = 0
    with grad_context(run):
        hooks.call_module(f"on_{prefix}_model_eval", always=True)
        hooks.call(f"on_{prefix}_start")
        hooks.call(f"on_{prefix}_epoch_start")
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            store.dataloader_idx = dataloader_idx if several else None
            for batch_idx, batch, _ in profiling.eval_batches(run, batch_iteration.iterate(loader, limit), prefix):
                if to_device is not None:
                    batch = to_device(batch, dataloader_idx)
                store.batch = batch
                store.batch_size = None
                args = (batch, batch_idx, dataloader_idx) if several else (batch, batch_idx)
                if batch_start:
                    hooks.call(f"on_{prefix}_batch_start", *args)
                output = step(step_name, *args)
                run.eval_batches += 1
                if batch_end:
                    hooks.call(f"on_{prefix}_batch_end", output, *args)
                if not sanity:
                    seen = run.eval_seen_batches.get(dataloader_idx, 0)
                    run.eval_seen_batches[dataloader_idx] = seen + 1
                    if store.has_step_logs:
                        log_to_loggers(loggers, store.step_log_view(), seen, None)
        store.dataloader_idx = None
        store.batch = None
        if not sanity:
            run.metrics.fold(store)
        store.epoch_end_reached = True
        store.compute_epoch()
        hooks.call(f"on_{prefix}_epoch_end")
        store.compute_epoch()
        if not sanity:
            run.metrics.fold(store)
            outputs = [to_scalars(logs) for logs in store.epoch_logs_per_dataloader(len(loaders))]
            logs = store.views()[1]
            if logs:
                log_to_loggers(loggers, logs, state.batches_that_stepped, state.current_epoch, save=True)
        hooks.call(f"on_{prefix}_end")
        # Each submodule gets back the mode it had (a frozen part stays in eval mode), unless
        # the module decides itself in its own on_*_model_train.
        if hooks.module[f"on_{prefix}_model_train"] is None:
            _restore_training_modes(modes)
        else:
            hooks.call_module(f"on_{prefix}_model_train")
    store.reset()
    run.log_into(previous_results)
    state.stage = previous_stage
    return outputs


def predict_loop(run: Run, loaders: list[Any], limits: list[int | float], keep: bool) -> Any:
    hooks = run.hooks
    run.state.stage = RunningStage.PREDICTING
    to_device = batch_mover(run)
    several = len(loaders) > 1
    predictions: list[list[Any]] = [[] for _ in loaders]
    step = profiling.eval_step(run, "predict_step")
    batch_start = hooks.any("on_predict_batch_start")
    batch_end = hooks.any("on_predict_batch_end")
    modes = _training_modes(run.module)
    cpu = torch.device("cpu")
    run.eval_batches = 0
    with grad_context(run):
        hooks.call_module("on_predict_model_eval", always=True)
        hooks.call("on_predict_start")
        hooks.call("on_predict_epoch_start")
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            for batch_idx, batch, _ in profiling.eval_batches(run, batch_iteration.iterate(loader, limit), "predict"):
                if to_device is not None:
                    batch = to_device(batch, dataloader_idx)
                args = (batch, batch_idx, dataloader_idx) if several else (batch, batch_idx)
                if batch_start:
                    hooks.call("on_predict_batch_start", *args)
                prediction = step("predict_step", *args)
                run.eval_batches += 1
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


def grad_context(run: Run) -> contextlib.AbstractContextManager:
    """``inference_mode`` (when the flag allows it and the backend can take such tensors), else ``no_grad``.

    Validation inside ``fit`` always runs under ``no_grad``, as in Lightning: a module may keep a
    validation output and use it in the next training loss, which inference tensors forbid.
    """
    strategy = run.strategy
    if run.fn == TrainerFn.FITTING:
        return torch.no_grad()
    # inference_mode tensors cannot take part in gloo collectives (pytorch#95930): use no_grad there.
    gloo = (
        strategy.world_size > 1
        and strategy.process_group_backend in (None, "gloo")
        and strategy.root_device.type == "cpu"
    )
    return torch.inference_mode() if run.config.inference_mode and not gloo else torch.no_grad()


@contextlib.contextmanager
def isolate_rng() -> Generator[None, None, None]:
    """Leave every random generator as it was (the sanity check must not change training)."""
    states = capture_rng()
    try:
        yield
    finally:
        restore_rng(states)


def _training_modes(module: torch.nn.Module) -> dict[torch.nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def _restore_training_modes(modes: dict[torch.nn.Module, bool] | None) -> None:
    for m, training in (modes or {}).items():
        m.training = training
