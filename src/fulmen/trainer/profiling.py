"""The Trainer's profiler: which one, and the profiled variants of the per-step callables.

The loops never test for a profiler per step. When a run's hooks are collected and when an
epoch's plan is made, the callables the loops will call (hooks, ``training_step``, backward,
the optimizer step, the batch iterator) are swapped once for timed ones if a profiler is on;
with the :class:`~fulmen.profilers.PassThroughProfiler` they stay exactly what they were.
Action names follow Lightning's: ``run_training_epoch``, ``run_training_batch``,
``[_TrainingEpochLoop].train_dataloader_next``, ``[Strategy]SingleDeviceStrategy.training_step``,
``[LightningModule]Model.on_train_epoch_end``, ``[Callback]Name.on_train_batch_end``, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from fulmen.profilers.passthrough import PassThroughProfiler
from fulmen.profilers.profiler import Profiler
from fulmen.utilities.exceptions import invalid_argument

if TYPE_CHECKING:
    from fulmen.trainer.dispatch import Hooks
    from fulmen.trainer.loops.fit import EpochPlan
    from fulmen.trainer.run import Run

_BY_NAME = {
    "simple": ("fulmen.profilers.simple", "SimpleProfiler"),
    "advanced": ("fulmen.profilers.advanced", "AdvancedProfiler"),
    "pytorch": ("fulmen.profilers.pytorch", "PyTorchProfiler"),
}

#: The action that times fetching the next batch, per evaluation stage (Lightning's names).
EVAL_NEXT = {
    "validation": "[_EvaluationLoop].val_next",
    "test": "[_EvaluationLoop].test_next",
    "predict": "[_PredictionLoop].predict_next",
}


def select_profiler(profiler: Any) -> Profiler:
    """``Trainer(profiler=...)``: None, "simple", "advanced", "pytorch" or a ``Profiler`` instance."""
    if profiler is None:
        return PassThroughProfiler()
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str) and profiler.lower() in _BY_NAME:
        import importlib

        module, name = _BY_NAME[profiler.lower()]
        return getattr(importlib.import_module(module), name)()
    raise invalid_argument(
        "profiler", profiler, "None, 'simple', 'advanced', 'pytorch' or an instance of fulmen.profilers.Profiler"
    )


def active(profiler: Profiler) -> bool:
    """Whether ``profiler`` records anything (the Trainer then uses the profiled variants)."""
    return not isinstance(profiler, PassThroughProfiler)


def profiled(profiler: Profiler, fn: Callable[..., Any], action: str) -> Callable[..., Any]:
    """``fn`` recorded as one call of ``action`` each time it runs."""
    start, stop = profiler.start, profiler.stop

    def timed(*args: Any, **kwargs: Any) -> Any:
        start(action)
        try:
            return fn(*args, **kwargs)
        finally:
            stop(action)

    timed.__wrapped__ = fn  # type: ignore[attr-defined]
    return timed


def strategy_action(run: Run, name: str) -> str:
    return f"[Strategy]{type(run.strategy).__name__}.{name}"


# ------------------------------------------------------------------------ set up once per call
def setup_profiler(run: Run) -> None:
    """``profiler.setup`` at the start of a call: the stage, the local rank (several processes) and log dir."""
    trainer = run.trainer
    if not active(trainer.profiler):
        return
    strategy = run.strategy
    local_rank = strategy.local_rank if strategy.world_size > 1 else None
    trainer.profiler.setup(stage=run.fn.value, local_rank=local_rank, log_dir=trainer.log_dir)


def profile_hooks(hooks: Hooks, profiler: Profiler, module: Any, callbacks: Sequence[Any], datamodule: Any) -> None:
    """Swap every hook ``hooks`` will call for a timed one (called once, when the run collects its hooks)."""
    module_name = type(module).__name__

    def owner_key(name: str, fn: Callable[..., Any]) -> str:
        # A bound method or a function set on the instance (LambdaCallback): found by equality.
        for callback in callbacks:
            if getattr(callback, name, None) == fn:
                return callback.state_key
        return getattr(fn, "__qualname__", name)

    def callback_fns(name: str, fns: list[Callable[..., Any]]) -> list[Callable[..., Any]]:
        return [profiled(profiler, fn, f"[Callback]{owner_key(name, fn)}.{name}") for fn in fns]

    for name, fns in hooks.callbacks.items():
        hooks.callbacks[name] = callback_fns(name, fns)
    hooks.epoch_end_first = callback_fns("on_train_epoch_end", hooks.epoch_end_first)
    hooks.epoch_end_monitors = callback_fns("on_train_epoch_end", hooks.epoch_end_monitors)
    for name, fn in hooks.module.items():
        if fn is not None:
            hooks.module[name] = profiled(profiler, fn, f"[LightningModule]{module_name}.{name}")
    if datamodule is not None:
        datamodule_name = type(datamodule).__name__
        for name, fn in hooks.datamodule.items():
            if fn is not None:
                hooks.datamodule[name] = profiled(profiler, fn, f"[LightningDataModule]{datamodule_name}.{name}")
    for name in hooks.transfer:
        hooks.transfer[name] = hooks.datamodule[name] or hooks.module[name]


# ------------------------------------------------------------------------------ once per epoch
def profile_epoch_plan(plan: EpochPlan, run: Run) -> None:
    """Time the plan's per-batch callables when a profiler is on; set ``plan.profiler`` (None when off)."""
    profiler = run.trainer.profiler
    if not active(profiler):
        plan.profiler = None
        return
    plan.profiler = profiler
    plan.batch_step = profiled(profiler, plan.batch_step, "run_training_batch")
    plan.training_step = profiled(profiler, plan.training_step, strategy_action(run, "training_step"))
    plan.backward = profiled(profiler, plan.backward, strategy_action(run, "backward"))
    plan.optimizer_step = profiled(profiler, plan.optimizer_step, strategy_action(run, "optimizer_step"))
    if plan.to_device is not None:
        plan.to_device = profiled(profiler, plan.to_device, strategy_action(run, "batch_to_device"))


def train_batches(plan: EpochPlan, batches: Iterable[Any]) -> Iterable[Any]:
    """The epoch's batch iterator, with each fetch timed when the plan is profiled."""
    if plan.profiler is None:
        return batches
    return plan.profiler.profile_iterable(batches, "[_TrainingEpochLoop].train_dataloader_next")


def eval_step(run: Run, step_name: str) -> Callable[..., Any]:
    """``run.step`` (``validation_step``/``test_step``/``predict_step``), timed when a profiler is on."""
    profiler = run.trainer.profiler
    if not active(profiler):
        return run.step
    return profiled(profiler, run.step, strategy_action(run, step_name))


def eval_batches(run: Run, batches: Iterable[Any], prefix: str) -> Iterable[Any]:
    """An evaluation loader's batches, each fetch timed when a profiler is on."""
    profiler = run.trainer.profiler
    if not active(profiler):
        return batches
    return profiler.profile_iterable(batches, EVAL_NEXT[prefix])
