"""What ``import fulmen`` adds to ``import torch``: median over fresh interpreters. Target <= 0.15 s."""

from __future__ import annotations

import statistics
import subprocess
import sys

_PROBE = "import time, torch; t = time.perf_counter(); import fulmen; print(time.perf_counter() - t)"
_TORCH = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"


def measure(code: str, runs: int) -> float:
    samples = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(runs)]
    return statistics.median(samples)


def main() -> int:
    runs = 7
    torch_time = measure(_TORCH, runs)
    fulmen_time = measure(_PROBE, runs)
    access = measure(
        "import time, torch; t = time.perf_counter(); import fulmen; fulmen.Lite; print(time.perf_counter() - t)", runs
    )
    print(f"import torch:                    {torch_time:.3f} s")
    print(
        f"import fulmen (after torch):     {fulmen_time:.3f} s   target <= 0.150 s  "
        f"{'OK' if fulmen_time <= 0.15 else 'MISSED'}"
    )
    print(f"import fulmen + fulmen.Lite:     {access:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
