"""What a ``LightningModule``'s own methods need from the Trainer call that runs them.

``self.log``, ``self.optimizers()``, ``self.lr_schedulers()``, ``manual_backward`` and
``clip_gradients`` work only while a Trainer runs the module. The module reaches that run as
``self.trainer.current_run`` and uses nothing of it but this interface (the Trainer's run state
implements it), so the module never depends on the Trainer's internals.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor


class RunLink(Protocol):
    #: Where ``self.log`` records values: the running loop's store (None between loops).
    results: Any
    #: The optimizers as ``configure_optimizers`` returned them, and as the module sees them.
    optimizers: list[Any]
    lightning_optimizers: list[Any]
    #: The schedulers with their stepping configuration.
    lr_scheduler_configs: list[Any]

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``on_before_backward``, backward through the strategy (and the module's own), ``on_after_backward``."""

    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: float | None, gradient_clip_algorithm: str | None
    ) -> None:
        """Clip ``optimizer``'s gradients through the strategy, checked against the Trainer's flags."""
