"""Moving a batch to the device, through the batch-transfer hooks only where someone overrides them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fulmen.strategies import Strategy
from fulmen.strategies.precision import Precision

if TYPE_CHECKING:
    from fulmen.trainer.run import Run


def batch_mover(run: Run) -> Callable[[Any, int], Any] | None:
    """``batch -> batch on the device``; None when batches are already where they need to be."""
    strategy = run.strategy
    transfer = run.hooks.transfer
    before, move, after = (transfer[n] for n in ("on_before_batch_transfer", "transfer_batch_to_device",
                                                 "on_after_batch_transfer"))  # fmt: skip
    convert_input = strategy.precision.convert_input

    if before is None and move is None and after is None:
        if (
            strategy.root_device.type == "cpu"
            and type(strategy).batch_to_device is Strategy.batch_to_device
            and type(strategy.precision).convert_input is Precision.convert_input
        ):
            return None  # batches from a CPU dataloader are where they need to be

        def simple(batch: Any, dataloader_idx: int) -> Any:
            return convert_input(strategy.batch_to_device(batch))

        return simple

    def with_hooks(batch: Any, dataloader_idx: int) -> Any:
        store = run.results
        if before is not None:
            with store.hook("on_before_batch_transfer"):
                batch = before(batch, dataloader_idx)
        if move is not None:
            with store.hook("transfer_batch_to_device"):
                batch = move(batch, strategy.root_device, dataloader_idx)
        else:
            batch = strategy.batch_to_device(batch)
        batch = convert_input(batch)
        if after is not None:
            with store.hook("on_after_batch_transfer"):
                batch = after(batch, dataloader_idx)
        return batch

    return with_hooks
