"""``measure_flops``: count the floating-point operations of a forward (and backward) pass.

It runs the functions under ``torch.utils.flop_counter.FlopCounterMode``; on a model built on
``torch.device("meta")`` nothing is computed or allocated, so even a large model is counted
in milliseconds. The count feeds ``ThroughputMonitor`` and MFU estimates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fulmen.utilities.exceptions import invalid_argument


def measure_flops(model: nn.Module, forward_fn: Callable[[], Any], loss_fn: Callable[[Any], Any] | None = None) -> int:
    """FLOPs of ``forward_fn()`` or, with ``loss_fn``, of ``loss_fn(forward_fn()).backward()`` too.

    ``model`` is the module the functions run (kept for Lightning's signature; the count covers
    whatever the functions compute).
    """
    if not callable(forward_fn):
        raise invalid_argument("forward_fn", forward_fn, "a function without arguments that runs the model")
    if loss_fn is not None and not callable(loss_fn):
        raise invalid_argument("loss_fn", loss_fn, "None, or a function of the forward output returning a loss")
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if loss_fn is None:
            forward_fn()
        else:
            loss_fn(forward_fn()).backward()
    return counter.get_total_flops()
