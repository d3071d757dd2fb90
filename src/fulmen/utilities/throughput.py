"""Throughput from running totals, for any loop: ``Throughput``, and Fabric's ``ThroughputMonitor``.

Rates are computed over a rolling window of the last ``window_size`` updates, so one slow step
(a checkpoint, the first compiled step) does not skew them for the rest of the run; they appear
once the window has filled. The Trainer's ``ThroughputMonitor`` callback
(``fulmen.callbacks``) and Lite's ``ThroughputMonitor`` here both compute with ``Throughput``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from fulmen.utilities.exceptions import invalid_argument

__all__ = ["RollingWindow", "Throughput", "ThroughputMonitor"]


class RollingWindow:
    """The last ``size`` values appended; rates come from its first and last entries."""

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)

    @property
    def size(self) -> int:
        return self._values.maxlen or 0

    @property
    def full(self) -> bool:
        return len(self._values) == self.size

    def append(self, value: float) -> None:
        self._values.append(value)

    def clear(self) -> None:
        self._values.clear()

    @property
    def first(self) -> float:
        return self._values[0]

    @property
    def last(self) -> float:
        return self._values[-1]

    def span(self) -> float:
        """last - first: how much the running total grew across the window."""
        return self._values[-1] - self._values[0]

    def __len__(self) -> int:
        return len(self._values)


class Throughput:
    """Rates from running totals (time, batches, samples, items, FLOPs) over a rolling window.

    ``update`` takes totals since the start (not per-batch amounts), except ``flops``, the
    FLOPs of the latest batch on this device. With ``available_flops`` (the device's peak FLOP/s)
    ``compute`` adds the model FLOPs utilisation, ``device/mfu`` and ``mfu``.
    """

    def __init__(
        self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100, separator: str = "/"
    ) -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise invalid_argument("window_size", window_size, "an int >= 2 (a rate needs two points)")
        if available_flops is not None and not available_flops > 0:
            raise invalid_argument("available_flops", available_flops, "None or the device's peak FLOP/s (> 0)")
        self.available_flops = available_flops
        self.world_size = max(int(world_size), 1)
        self.separator = separator
        self._time = RollingWindow(window_size)
        self._batches = RollingWindow(window_size)
        self._samples = RollingWindow(window_size)
        self._lengths = RollingWindow(window_size)
        self._flops = RollingWindow(window_size)
        self._flops_total = 0.0

    def reset(self) -> None:
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()
        self._flops_total = 0.0

    def update(
        self, *, time: float, batches: int, samples: int, lengths: int | None = None, flops: float | None = None
    ) -> None:
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
        if flops is not None:
            self._flops_total += flops
            self._flops.append(self._flops_total)

    def compute(self) -> dict[str, float]:
        if not len(self._time):
            return {}
        sep = self.separator
        metrics: dict[str, float] = {
            "time": self._time.last,
            "batches": self._batches.last,
            "samples": self._samples.last,
        }
        if len(self._lengths):
            metrics["lengths"] = self._lengths.last
        if not self._time.full:
            return metrics
        elapsed = self._time.span()
        if elapsed <= 0:
            return metrics
        rates = {
            "batches_per_sec": self._batches.span() / elapsed,
            "samples_per_sec": self._samples.span() / elapsed,
        }
        if self._lengths.full:
            rates["items_per_sec"] = self._lengths.span() / elapsed
        if self._flops.full:
            rates["flops_per_sec"] = self._flops.span() / elapsed
        for name, value in rates.items():
            metrics[f"device{sep}{name}"] = value
            metrics[name] = value * self.world_size
        if self.available_flops is not None and "flops_per_sec" in rates:
            metrics[f"device{sep}mfu"] = metrics["mfu"] = rates["flops_per_sec"] / self.available_flops
        return metrics


class ThroughputMonitor(Throughput):
    """``Throughput`` for a Lite/Fabric loop: its world size from ``fabric``, its metrics logged there.

    ``ThroughputMonitor(fabric, window_size=..., available_flops=..., separator=...)``; call
    ``update(time=..., batches=..., samples=...)`` with running totals each step, and
    ``compute_and_log(step=...)`` to log (through ``fabric.log_dict``) and return the metrics.
    """

    def __init__(self, fabric: Any, **kwargs: Any) -> None:
        if not callable(getattr(fabric, "log_dict", None)):
            raise invalid_argument("fabric", fabric, "a Lite (Fabric) object, whose log_dict receives the metrics")
        kwargs.setdefault("world_size", fabric.world_size)
        super().__init__(**kwargs)
        self._fabric = fabric
        self.step = -1

    def compute_and_log(self, step: int | None = None, **kwargs: Any) -> dict[str, float]:
        """Compute the metrics and log them at ``step`` (the call count when None); returns them."""
        self.step = (self.step + 1) if step is None else step
        metrics = self.compute(**kwargs)
        self._fabric.log_dict(metrics=metrics, step=self.step)
        return metrics
