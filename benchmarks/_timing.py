"""Interleaved timing: alternate the contenders round by round so drift hits all alike.

Each round times every contender once; the reported ratio is the median over rounds of
(contender / baseline) within the same round, which cancels slow drifts of a shared machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(
    contenders: dict[str, Callable[[], None]], rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times per contender over ``rounds`` alternating runs (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        # Alternate the order too, so no contender always runs right after the same one.
        order = list(contenders.items()) if round_index % 2 == 0 else list(reversed(contenders.items()))
        for name, run in order:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]], baseline: str, targets: dict[str, float] | None = None) -> bool:
    """Print each contender's median time and paired median ratio; return whether all targets hold."""
    base = times[baseline]
    ok = True
    print(f"\n{title}")
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        target = (targets or {}).get(name)
        verdict = ""
        if target is not None:
            passed = ratio <= target
            ok &= passed
            verdict = f"  target <= {target:.2f}x  {'OK' if passed else 'MISSED'}"
        print(f"  {name:<22} {statistics.median(values) * 1000:9.2f} ms   {ratio:6.3f}x{verdict}")
    return ok


def two_rank_times(script: str, *args: str) -> dict[str, list[float]]:
    """Run ``script --worker OUT *args`` as 2 CPU ranks under torchrun (loopback); the times rank 0 wrote to OUT."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "times.json")
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            script, *args, "--worker", out,
        ]  # fmt: skip
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(out).read_text())


def print_ratios(times: dict[str, list[float]], baseline: str, unit: float, unit_name: str) -> None:
    """One line per contender: its median time per step and its median ratio to ``baseline`` by round."""
    base = times[baseline]
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        print(f"  {name:<26} {statistics.median(values) * unit:8.2f} {unit_name}/step   {ratio:5.2f}x {baseline}")
