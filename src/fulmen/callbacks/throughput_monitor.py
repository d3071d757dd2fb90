"""Throughput monitor: batches, samples (and FLOPs) per second, sent to the loggers.

It exists to answer "is the hardware busy?" with numbers: samples per second to compare runs
and data pipelines, FLOPs per second to compare against what the device can do. Rates are
computed over a rolling window of the last ``window_size`` batches, so one slow batch (a
checkpoint, the first compiled step) does not skew them for the rest of the run; they appear
once the window has filled.

FLOPs per batch come from the module's ``flops_per_batch`` attribute when it has one;
otherwise one training step is measured with ``torch.utils.flop_counter.FlopCounterMode``
(forward and backward; counted per process).

Logged names, for ``stage`` in ``train``, ``validate``, ``test``, ``predict``: ``{stage}/time``,
``{stage}/batches``, ``{stage}/samples`` (running totals), ``{stage}/batches_per_sec``,
``{stage}/samples_per_sec`` (all processes), ``{stage}/device/batches_per_sec``,
``{stage}/device/samples_per_sec`` (this process), with ``length_fn`` also ``items_per_sec``,
and with FLOPs ``{stage}/flops_per_sec`` and ``{stage}/device/flops_per_sec``. Validation time
during fit is not counted as training time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.stages import TrainerFn
from fulmen.utilities.throughput import RollingWindow, Throughput  # noqa: F401  (RollingWindow: re-exported)


class ThroughputMonitor(Callback):
    """Log throughput (see the module docstring for the names).

    Args:
        batch_size_fn: ``batch -> number of samples in it``.
        length_fn: ``batch -> number of items in it`` (tokens, say), for ``items_per_sec``.
        window_size: how many batches the rates are computed over.
        separator: joins the stage and the metric names.
    """

    _STAGES = ("train", "validate", "test", "predict")

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int],
        length_fn: Callable[[Any], int] | None = None,
        window_size: int = 100,
        separator: str = "/",
    ) -> None:
        if not callable(batch_size_fn):
            raise invalid_argument("batch_size_fn", batch_size_fn, "a function batch -> number of samples")
        if length_fn is not None and not callable(length_fn):
            raise invalid_argument("length_fn", length_fn, "None or a function batch -> number of items")
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise invalid_argument("window_size", window_size, "an int >= 2 (a rate needs two points)")
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.window_size = window_size
        self.separator = separator
        self._throughputs: dict[str, Throughput] = {}
        self._t0: dict[str, float] = {}
        self._paused: dict[str, float] = {}
        self._totals: dict[str, list[int]] = {}  # stage -> [batches, samples, lengths]
        self._eval_log_step: dict[str, int] = {}
        self._measured_flops: float | None = None
        self._flop_counter: Any = None
        self._last_global_step = 0
        self._warned_no_logger = False
        self._val_started: float | None = None

    # ----------------------------------------------------------------------------- set up
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for name in self._STAGES:
            self._throughputs[name] = Throughput(
                world_size=trainer.world_size, window_size=self.window_size, separator=self.separator
            )
            self._eval_log_step.setdefault(name, 0)

    def _start(self, stage: str) -> None:
        self._throughputs[stage].reset()
        self._totals[stage] = [0, 0, 0]
        self._paused[stage] = 0.0
        self._t0[stage] = time.perf_counter()

    def _flops_per_batch(self, pl_module: Any) -> float | None:
        declared = getattr(pl_module, "flops_per_batch", None)
        if declared is not None:
            return float(declared)
        return self._measured_flops

    def _update(self, trainer: Any, pl_module: Any, stage: str, batch: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must see the device's work, not just its queueing
        elapsed = time.perf_counter() - self._t0[stage] - self._paused[stage]
        totals = self._totals[stage]
        totals[0] += 1
        totals[1] += int(self.batch_size_fn(batch))
        if self.length_fn is not None:
            totals[2] += int(self.length_fn(batch))
        self._throughputs[stage].update(
            time=elapsed,
            batches=totals[0],
            samples=totals[1],
            lengths=totals[2] if self.length_fn is not None else None,
            flops=self._flops_per_batch(pl_module),
        )

    def _log(self, trainer: Any, stage: str, step: int) -> None:
        metrics = self._throughputs[stage].compute()
        if not metrics:
            return
        if not trainer.loggers:
            if not self._warned_no_logger:
                self._warned_no_logger = True
                rank_zero_warn("`ThroughputMonitor` has no logger to send values to: pass `Trainer(logger=...)`.")
            return
        metrics = {f"{stage}{self.separator}{name}": value for name, value in metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # ---------------------------------------------------------------------------- training
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start("train")
        self._last_global_step = trainer.global_step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if (
            self._measured_flops is None
            and self._flop_counter is None
            and getattr(pl_module, "flops_per_batch", None) is None
        ):
            from torch.utils.flop_counter import FlopCounterMode

            # One training step (forward and backward) is counted, then the counter goes away.
            self._flop_counter = FlopCounterMode(display=False)
            self._flop_counter.__enter__()

    def _stop_flop_counter(self) -> None:
        counter, self._flop_counter = self._flop_counter, None
        if counter is not None:
            counter.__exit__(None, None, None)
            self._measured_flops = float(counter.get_total_flops())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop_flop_counter()
        self._update(trainer, pl_module, "train", batch)
        stepped = trainer.global_step != self._last_global_step
        self._last_global_step = trainer.global_step
        # Only at the end of an accumulation window, so every rate includes the optimizer step.
        if not stepped:
            return
        every = getattr(trainer, "log_every_n_steps", 1) or 1
        if trainer.global_step % every == 0 or trainer.should_stop:
            step = getattr(trainer.state, "batches_that_stepped", trainer.global_step - 1)
            self._log(trainer, "train", step)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop_flop_counter()

    # -------------------------------------------------------------------------- evaluation
    def _eval_start(self, trainer: Any, stage: str) -> None:
        self._start(stage)
        if stage == "validate" and "train" in self._t0 and trainer.state.fn == TrainerFn.FITTING:
            self._val_started = time.perf_counter()

    def _eval_batch_end(self, trainer: Any, pl_module: Any, stage: str, batch: Any) -> None:
        self._update(trainer, pl_module, stage, batch)
        self._eval_log_step[stage] += 1
        self._log(trainer, stage, self._eval_log_step[stage])

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._eval_start(trainer, "validate")

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking:
            self._eval_batch_end(trainer, pl_module, "validate", batch)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._val_started is not None and not trainer.sanity_checking:
            # Validation inside fit is not training time.
            self._paused["train"] += time.perf_counter() - self._val_started
        self._val_started = None

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "test")

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_end(trainer, pl_module, "test", batch)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "predict")

    def on_predict_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_end(trainer, pl_module, "predict", batch)
