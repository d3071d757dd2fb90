"""The learning-rate range test: raise the learning rate step by step and watch the loss.

One optimizer step per learning rate, from ``min_lr`` to ``max_lr`` (exponentially or linearly
spaced), on the running fit; the smoothed loss is recorded for each. The suggestion is the
learning rate where the loss falls fastest. The test stops early when the smoothed loss exceeds
``early_stop_threshold`` times the best seen (or is not finite): the rate has diverged. The
weights, optimizer and scheduler states and random generators are restored afterwards.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.callback import Callback
from fulmen.callbacks.trial_link import trial_runner
from fulmen.callbacks.trial_snapshot import Snapshot
from fulmen.callbacks.tuned_attributes import has_attribute, set_attribute
from fulmen.module.optimizer import MockOptimizer
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MODES = ("exponential", "linear")
#: Where the learning rate is looked for when ``attr_name`` is not given, in this order.
LR_ATTRIBUTES = ("lr", "learning_rate")


class LRFinder:
    """What ``lr_find`` found: ``results`` (``{"lr": [...], "loss": [...]}``, one entry per step).

    ``loss`` holds the smoothed loss (an exponential moving average, bias-corrected).
    """

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of the sweep."""
        fraction = step / self.num_training
        if self.mode == "linear":
            return self.lr_min + fraction * (self.lr_max - self.lr_min)
        return self.lr_min * (self.lr_max / self.lr_min) ** fraction

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate at the steepest fall of the loss curve as plotted (None with fewer than 2 usable points).

        ``skip_begin``/``skip_end`` leave out the first and last points: the start is noisy and
        the end is where the loss blows up. The slope at a point is taken over the points within
        a twentieth of the curve on either side (the neighbours, on short curves).
        """
        losses, lrs = self.results["loss"], self.results["lr"]
        indices = [i for i in range(max(skip_begin, 0), len(losses) - max(skip_end, 0)) if math.isfinite(losses[i])]
        if len(indices) < 2:
            rank_zero_warn(
                f"The learning rate finder recorded {len(losses)} steps, too few for a suggestion after skipping "
                f"{skip_begin} at the start and {skip_end} at the end: raise `num_training`, or raise "
                "`early_stop_threshold` (the sweep stopped early when the loss diverged)."
            )
            self._optimal_idx = None
            return None
        loss = torch.tensor([losses[i] for i in indices], dtype=torch.float64)
        axis = torch.tensor([lrs[i] for i in indices], dtype=torch.float64)
        if self.mode == "exponential":
            # The slope along the plot's log axis: against the rate itself, the tiny steps between
            # the first rates turn noise into the steepest "fall" and the suggestion into ~min_lr.
            axis = axis.log()
        half = len(indices) // 20
        if half >= 1:
            # Over a window of 2 * half steps, so that one noisy step of a short-memory average
            # (the first smoothed losses average a few batches only) cannot pass for the fall.
            window = 2 * half
            slopes = (loss[window:] - loss[:-window]) / (axis[window:] - axis[:-window])
            best = int(torch.argmin(slopes)) + half
        else:
            best = int(torch.argmin(torch.gradient(loss, spacing=(axis,))[0]))
        self._optimal_idx = indices[best]
        return lrs[self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Axes | None = None) -> Figure:
        """Loss against learning rate (log scale for an exponential sweep); ``suggest`` marks the suggestion.

        Needs matplotlib (``pip install fulmen[plot]``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ModuleNotFoundError(
                "`LRFinder.plot` draws with matplotlib, which is not installed: `pip install fulmen[plot]` "
                "(or `pip install matplotlib`)."
            ) from error
        if ax is None:
            figure, ax = plt.subplots()
        else:
            figure = ax.figure
        lrs, losses = self.results["lr"], self.results["loss"]
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            self.suggestion()
            if self._optimal_idx is not None:
                ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], marker="o", markersize=10, color="red")
        if show:
            plt.show()
        return figure


class _SweepRecorder(Callback):
    """Sets each step's learning rate before the batch and records the smoothed loss after it."""

    def __init__(
        self, finder: LRFinder, optimizer: torch.optim.Optimizer, early_stop_threshold: float | None, start_step: int
    ) -> None:
        self.finder = finder
        self.optimizer = optimizer
        self.early_stop_threshold = early_stop_threshold
        self.start_step = start_step
        self.beta = 0.98
        self.average = 0.0
        self.best = math.inf
        self.lr = finder.lr_min
        self.diverged = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lr = self.finder.lr_at(trainer.global_step - self.start_step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        steps = trainer.global_step - self.start_step
        results = self.finder.results
        if steps == len(results["lr"]):  # accumulating: no optimizer step after this batch
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # training_step skipped the batch
            return
        value = float(loss)
        self.average = self.beta * self.average + (1 - self.beta) * value
        smoothed = self.average / (1 - self.beta ** (len(results["lr"]) + 1))  # bias-corrected
        results["lr"].append(self.lr)
        results["loss"].append(smoothed)
        stop = False
        if self.early_stop_threshold is not None and len(results["loss"]) > 1:
            stop = not math.isfinite(smoothed) or smoothed > self.early_stop_threshold * self.best
        if smoothed < self.best or len(results["loss"]) == 1:
            self.best = smoothed
        stop = bool(trainer.strategy.broadcast(stop))  # every rank stops at the same step
        if stop:
            self.diverged = True
            trainer.should_stop = True


def check_arguments(
    min_lr: Any, max_lr: Any, num_training: Any, mode: Any, early_stop_threshold: Any, name: str = "num_training"
) -> None:
    """Every argument of the sweep, checked before anything runs."""
    for arg, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise invalid_argument(arg, value, "a finite number > 0")
    if min_lr >= max_lr:
        raise invalid_argument("min_lr", min_lr, f"a number below `max_lr={max_lr}`")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 1:
        raise invalid_argument(name, num_training, "an int >= 1")
    if mode not in MODES:
        raise invalid_argument("mode", mode, MODES)
    if early_stop_threshold is not None and (
        isinstance(early_stop_threshold, bool)
        or not isinstance(early_stop_threshold, (int, float))
        or not early_stop_threshold > 0
    ):
        raise invalid_argument("early_stop_threshold", early_stop_threshold, "a number > 0, or None (never stop)")


def lr_attribute(module: Any, attr_name: str, datamodule: Any = None) -> str:
    """Which attribute holds the learning rate: ``attr_name``, else ``lr`` or ``learning_rate``."""
    if attr_name:
        if not has_attribute(module, attr_name, datamodule):
            raise AttributeError(
                f"`attr_name={attr_name!r}`: the model has no attribute `{attr_name}` and no `hparams.{attr_name}`."
            )
        return attr_name
    for name in LR_ATTRIBUTES:
        if has_attribute(module, name, datamodule):
            return name
    raise AttributeError(
        f"The learning rate finder updates the model's learning rate, but neither the model nor `model.hparams` has "
        f"one of {LR_ATTRIBUTES}: define one (and read it in `configure_optimizers`), name yours with "
        "`attr_name=...`, or pass `update_attr=False`."
    )


def lr_find(
    trainer: Any,
    module: Any,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: float | None = 4.0,
    update_attr: bool = False,
    attr_name: str = "",
) -> LRFinder | None:
    """Run the sweep on ``trainer``'s running fit (at ``on_fit_start``); the model comes back as it was.

    With ``update_attr``, the suggestion is written to the model's learning-rate attribute (and
    ``hparams``) and to the optimizer that training continues with.
    """
    check_arguments(min_lr, max_lr, num_training, mode, early_stop_threshold)
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping learning rate finder since `fast_dev_run` is enabled.")
        return None
    datamodule = trainer.datamodule
    if update_attr:
        attr_name = lr_attribute(module, attr_name, datamodule)
    optimizers = [opt for opt in trainer.optimizers if not isinstance(opt, MockOptimizer)]
    if len(optimizers) != 1:
        raise MisconfigurationException(
            f"`configure_optimizers` returned {len(optimizers)} optimizers; the learning rate finder works with "
            "exactly one."
        )
    optimizer = optimizers[0]
    finder = LRFinder(mode, float(min_lr), float(max_lr), num_training)
    snapshot = Snapshot(trainer, module)
    recorder = _SweepRecorder(finder, optimizer, early_stop_threshold, trainer.global_step)
    try:
        for group in optimizer.param_groups:
            group["lr"] = finder.lr_min
        trial_runner(trainer).trial([recorder], num_training)
    finally:
        snapshot.restore()
    finder.results = trainer.strategy.broadcast(finder.results)
    steps = len(finder.results["lr"])
    if recorder.diverged:
        rank_zero_info(f"The learning rate finder stopped after {steps} of {num_training} steps: the loss diverged.")
    if update_attr:
        lr = finder.suggestion()
        if lr is not None:
            set_attribute(module, attr_name, lr, datamodule)
            for group in optimizer.param_groups:  # the fit that continues trains with it
                group["lr"] = lr
            rank_zero_info(f"Learning rate set to {lr}")
    return finder


__all__ = ["LRFinder", "lr_find"]
