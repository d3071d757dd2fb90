"""Short training trials inside a running ``fit``, for the tuners (:mod:`fulmen.tuner`).

The learning-rate finder and the batch-size finder run at ``on_fit_start``: they train a few
steps on the run that ``fit`` has set up (same module, optimizers, strategy, data source), look
at what happened, and leave the run as it found it for the real training. ``run_trial`` is that
few-step training, on a child ``Run`` of its own: the model and optimizers of the running fit,
the tuner's callbacks instead of the user's, no loggers, validation or LR schedulers, and flags
of its own (no limits but the step count). The running fit's state is not touched; the
Trainer's progress counters, metrics and stop flag are put back afterwards, also when the
trial fails (out of memory). The weights and optimizer states are the tuner's to restore,
since only it knows whether it wants them back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fulmen.trainer import setup
from fulmen.trainer.loaders import load_train_dataloader
from fulmen.trainer.loops.fit import FitLoop, train_epoch
from fulmen.trainer.run import Run
from fulmen.utilities.stages import RunningStage, TrainerFn

if TYPE_CHECKING:
    from fulmen.callbacks.callback import Callback


def run_trial(run: Run | None, callbacks: Sequence[Callback], max_steps: int) -> None:
    """Train at most ``max_steps`` optimizer steps on the running fit, with ``callbacks`` only.

    The train dataloader is loaded anew (a batch-size trial changed the batch size). The trial
    ends after ``max_steps`` steps, when a callback sets ``trainer.should_stop``, or after an
    epoch in which no optimizer stepped.
    """
    if run is None or run.fn != TrainerFn.FITTING or run.hooks is None:
        raise RuntimeError(
            "A tuning trial runs inside `Trainer.fit`: use `fulmen.tuner.Tuner`, or the LearningRateFinder / "
            "BatchSizeFinder callbacks, which run at `on_fit_start`."
        )
    trainer, state = run.trainer, run.state
    config = dataclasses.replace(
        run.config, max_steps=state.global_step + max_steps, max_epochs=-1, min_epochs=None, min_steps=None,
        limit_val_batches=0, max_time_seconds=None, val_check_seconds=None,
    )  # fmt: skip
    trial = Run(trainer, TrainerFn.FITTING, run.module, run.datamodule, run.sources, config=config)
    counters, stage = state.state_dict(), state.stage
    loggers, should_stop = trainer.loggers, trainer.should_stop
    metrics = {key: dict(value) for key, value in run.metrics.state().items()}
    trainer.current_run = trial
    try:
        setup.adopt_model(trial, run)
        setup.attach_hooks(trial, list(callbacks))
        trial.start_training_logs()
        trainer.loggers = []
        trainer.should_stop = False
        state.batch_idx, state.phase = 0, None
        load_train_dataloader(trial)
        loop = FitLoop()
        trial.hooks.call("on_train_start")
        while not trainer.should_stop and state.global_step < config.max_steps and trial.num_training_batches:
            steps_before = state.global_step
            state.stage = RunningStage.TRAINING
            train_epoch(trial, loop)
            if state.global_step == steps_before:
                break  # nothing stepped in a whole epoch: more epochs would not either
        trial.hooks.call("on_train_end")
    finally:
        trainer.current_run = run
        state.load_state_dict(counters)
        state.stage = stage
        trainer.loggers, trainer.should_stop = loggers, should_stop
        run.metrics.load_state(metrics)
