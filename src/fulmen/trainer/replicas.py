"""The Trainer's side of replica groups (``strategy="fault_tolerant"``): what a restarted group receives.

A group that died and restarted receives, from a live one, the loop's counters, the LR
schedulers and the callbacks' states (the strategy adds weights, optimizer, random and data
states), right before the training loop; the loop then resumes mid-epoch as from a checkpoint.
Other strategies ignore both calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulmen.trainer.run import Run


def sync_replicas(run: Run) -> None:
    """Register the Trainer's state for healing, then join the live replica groups."""
    run.strategy.register_replica_state("trainer", lambda: _trainer_state(run), lambda state: _load(run, state))
    run.strategy.sync_replicas()


def _trainer_state(run: Run) -> dict[str, Any]:
    progress = run.state
    return {
        "counters": {
            "current_epoch": progress.current_epoch,
            "global_step": progress.global_step,
            "batches_that_stepped": progress.batches_that_stepped,
            "batch_idx": progress.batch_idx,
            "total_batch_idx": progress.total_batch_idx,
            "last_val_total_batch": progress.last_val_total_batch,
        },
        "schedulers": [config.scheduler.state_dict() for config in run.lr_scheduler_configs],
        "callbacks": {callback.state_key: callback.state_dict() for callback in run.trainer.callbacks},
        "should_stop": run.trainer.should_stop,
    }


def _load(run: Run, state: dict[str, Any]) -> None:
    progress, counters = run.state, state["counters"]
    progress.current_epoch = counters["current_epoch"]
    progress.global_step = counters["global_step"]
    progress.batches_that_stepped = counters["batches_that_stepped"]
    progress.batch_idx = counters["batch_idx"]  # the loop resumes this epoch there, as from a checkpoint
    progress.total_batch_idx = counters["total_batch_idx"]
    progress.last_val_total_batch = counters["last_val_total_batch"]
    for config, scheduler_state in zip(run.lr_scheduler_configs, state["schedulers"]):
        config.scheduler.load_state_dict(scheduler_state)
    for callback in run.trainer.callbacks:
        if callback.state_key in state["callbacks"]:
            callback.load_state_dict(state["callbacks"][callback.state_key])
    run.trainer.should_stop = state["should_stop"]
