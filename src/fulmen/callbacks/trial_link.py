"""What the tuning searches need from the Trainer that runs them: a few training steps on demand.

The learning-rate range test and the batch-size search train short trials inside a running
``fit``. They reach the running call as ``trainer.current_run`` and use nothing of it but this
interface (the Trainer's run state implements it, ``fulmen.trainer.trial``), as a
``LightningModule`` uses only ``fulmen.module.run_link.RunLink``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fulmen.callbacks.callback import Callback


class TrialRunner(Protocol):
    def trial(self, callbacks: list[Callback], max_steps: int) -> None:
        """Train at most ``max_steps`` optimizer steps on the running fit, with ``callbacks`` as the only callbacks."""


def trial_runner(trainer: Any) -> TrialRunner:
    """The running call of ``trainer``, as a ``TrialRunner``."""
    run = trainer.current_run
    if run is None:
        raise RuntimeError(
            "A tuning trial runs inside `Trainer.fit`: use `fulmen.tuner.Tuner`, or the LearningRateFinder / "
            "BatchSizeFinder callbacks, which run at `on_fit_start`."
        )
    return run
