"""The logged values that outlive one loop run, and sending them to the loggers.

Each loop run logs into its own ``ResultStore``; ``Metrics`` folds the stores' views into the
three dicts the Trainer exposes (``callback_metrics``, ``logged_metrics``,
``progress_bar_metrics``), which persist across runs and calls as in Lightning.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fulmen.trainer.results import ResultStore, to_scalars


class Metrics:
    def __init__(self) -> None:
        self.callback: dict[str, Tensor] = {}
        self.logged: dict[str, Tensor] = {}
        self.progress_bar: dict[str, Any] = {}

    def fold(self, store: ResultStore | None) -> None:
        """Take in the store's current view (latest step values, epoch values once computed)."""
        if store is None or not store.entries:
            return
        callback, logged, progress_bar = store.views()
        self.callback.update(callback)
        self.logged.update(logged)
        self.progress_bar.update(progress_bar)

    def reset(self) -> None:
        self.callback, self.logged, self.progress_bar = {}, {}, {}

    def state(self) -> dict[str, Any]:
        return {"callback": self.callback, "logged": self.logged, "progress_bar": dict(self.progress_bar)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.callback, self.logged, self.progress_bar = state["callback"], state["logged"], state["progress_bar"]


def log_to_loggers(
    loggers: list[Any], metrics: dict[str, Any], step: int, epoch: int | None, save: bool = False
) -> None:
    """Send values to every logger; ``save`` (flush) only at epoch ends: loggers buffer in between.

    ``epoch`` joins the values except for evaluation steps (``None``), whose ``step`` counts that
    dataloader's batches, as Lightning logs them; the call is ``log_metrics(metrics=..., step=...)``.
    """
    if not loggers or not metrics:
        return
    scalars = to_scalars(metrics)
    if epoch is not None:
        scalars.setdefault("epoch", epoch)
    for logger in loggers:
        logger.log_metrics(metrics=scalars, step=step)
        if save:
            logger.save()
