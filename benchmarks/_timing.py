"""Interleaved timing: alternate the contenders round by round so drift hits both alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(contenders: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time per contender over ``rounds`` alternating runs."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        # Alternate the order too, so neither side always runs on a warm cache.
        order = list(contenders.items()) if round_index % 2 == 0 else list(reversed(contenders.items()))
        for name, run in order:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], baseline: str, targets: dict[str, float] | None = None) -> bool:
    """Print each contender's median and ratio to the baseline; return whether all targets hold."""
    base = medians[baseline]
    ok = True
    print(f"\n{title}")
    for name, value in medians.items():
        ratio = value / base
        target = (targets or {}).get(name)
        verdict = ""
        if target is not None:
            passed = ratio <= target
            ok &= passed
            verdict = f"  target <= {target:.2f}x  {'OK' if passed else 'MISSED'}"
        print(f"  {name:<28} {value * 1000:9.2f} ms   {ratio:6.3f}x{verdict}")
    return ok
