"""Short training trials inside a running ``fit``, for the tuners (:mod:`fulmen.tuner`).

The learning-rate finder and the batch-size finder run at ``on_fit_start``: they train a few
steps on the run that ``fit`` has set up (same module, optimizers, strategy, data source), look
at what happened, and leave the run as it found it for the real training. ``run_trial`` is that
few-step training: the module's hooks run as in ``fit``, the tuner's callbacks replace the
user's, and loggers, validation, checkpoints and LR schedulers stay out. Every setting, counter
and hook list it changes is put back afterwards, also when the trial fails (out of memory);
the weights and optimizer states are the tuner's to restore, since only it knows whether it
wants them back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fulmen.trainer.hooks import Hooks
from fulmen.trainer.loaders import load_train_dataloader
from fulmen.trainer.loops.fit import train_epoch
from fulmen.utilities.stages import RunningStage, TrainerFn

if TYPE_CHECKING:
    from fulmen.callbacks.callback import Callback
    from fulmen.trainer.run import Run

#: The flags a trial overrides: no epoch or time limits, no minimums, no validation.
_FLAGS = ("max_steps", "max_epochs", "min_epochs", "min_steps", "limit_val_batches", "max_time_seconds",
          "val_check_seconds")  # fmt: skip
#: What a trial changes on the run.
_RUN_FIELDS = ("hooks", "lr_scheduler_configs", "epoch_start_rng", "resume_rng", "resume_epoch_start_rng",
               "train_dataloader", "num_training_batches", "val_check_batch", "stop_now", "fit_start_time",
               "is_last_batch", "last_val_time", "results")  # fmt: skip


def run_trial(run: Run | None, callbacks: Sequence[Callback], max_steps: int) -> None:
    """Train at most ``max_steps`` optimizer steps on the running fit, with ``callbacks`` only.

    The train dataloader is loaded anew first (a batch-size trial changed the batch size). The
    trial ends after ``max_steps`` steps, when a callback sets ``trainer.should_stop``, or after
    an epoch in which no optimizer stepped.
    """
    if run is None or run.fn != TrainerFn.FITTING or run.hooks is None:
        raise RuntimeError(
            "A tuning trial runs inside `Trainer.fit`: use `fulmen.tuner.Tuner`, or the LearningRateFinder / "
            "BatchSizeFinder callbacks, which run at `on_fit_start`."
        )
    trainer, config, state = run.trainer, run.config, run.state
    flags = {name: getattr(config, name) for name in _FLAGS}
    fields = {name: getattr(run, name) for name in _RUN_FIELDS}
    last_reload = dict(run.last_reload)
    counters, stage = state.state_dict(), state.stage
    loggers, should_stop = trainer.loggers, trainer.should_stop
    metrics = {key: dict(value) for key, value in run.metrics.state().items()}
    try:
        run.hooks = Hooks(trainer, run.module, list(callbacks), run.datamodule, run=run)
        run.lr_scheduler_configs = []
        run.epoch_start_rng = run.resume_rng = run.resume_epoch_start_rng = None
        run.stop_now = False
        run.results = run.train_results
        trainer.loggers = []
        trainer.should_stop = False
        config.max_steps = state.global_step + max_steps
        config.max_epochs, config.min_epochs, config.min_steps = -1, None, None
        config.limit_val_batches, config.max_time_seconds, config.val_check_seconds = 0, None, None
        state.batch_idx, state.phase = 0, None
        load_train_dataloader(run)
        run.fit_start_time = time.monotonic()
        run.hooks.call("on_train_start")
        while not trainer.should_stop and state.global_step < config.max_steps and run.num_training_batches:
            steps_before = state.global_step
            state.stage = RunningStage.TRAINING
            train_epoch(run)
            if state.global_step == steps_before:
                break  # nothing stepped in a whole epoch: more epochs would not either
        run.hooks.call("on_train_end")
    finally:
        for name, value in flags.items():
            setattr(config, name, value)
        for name, value in fields.items():
            setattr(run, name, value)
        run.last_reload = last_reload
        state.load_state_dict(counters)
        state.stage = stage
        trainer.loggers, trainer.should_stop = loggers, should_stop
        if run.train_results is not None:
            run.train_results.reset()
        run.metrics.load_state(metrics)
