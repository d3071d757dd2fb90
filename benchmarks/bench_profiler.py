"""What a profiler costs per training step: off (the default) against SimpleProfiler, in one run.

The tiny Linear(32, 2) model of ``bench_trainer.py`` (where per-step overhead shows), one epoch
of 512 steps on CPU. Contenders, interleaved round by round (``_timing.py``):

  raw PyTorch            the same loop by hand: the reference of every ratio
  fulmen, no profiler    ``Trainer(...)``: the Trainer holds a PassThroughProfiler
  fulmen, profiler off   ``Trainer(profiler=PassThroughProfiler())``, passed explicitly
  fulmen, simple         ``Trainer(profiler="simple")``: ~10 timed actions per step

Trainer flags as ``bench_calls.py``'s trainer+log case (``self.log`` every step; logger,
checkpointing, progress bar and summary off), so that only the step loop is compared. The cost
per step is the median paired difference to "no profiler", divided by the steps. Then fulmen's
own Python calls per step (``bench_calls.py``'s counter), all of them and those into the profiling
code (``fulmen/profilers``, ``fulmen/trainer/profiling.py``): 0 per step with the profiler off.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_times, report  # noqa: E402
from bench_calls import TRAINER_LOG_FLAGS, in_fulmen, per_step  # noqa: E402
from bench_trainer import make_loader, module_class, raw_fit, tiny  # noqa: E402

import fulmen  # noqa: E402
from fulmen.profilers import PassThroughProfiler  # noqa: E402

FEATURES, SAMPLES, BATCH_SIZE = 32, 8192, 16
_PACKAGE = os.path.dirname(os.path.abspath(fulmen.__file__))
#: fulmen's profiling code: the profilers and the Trainer's choice of profiled callables.
PROFILING_CODE = (os.path.join(_PACKAGE, "profilers") + os.sep, os.path.join(_PACKAGE, "trainer", "profiling.py"))
STEPS = SAMPLES // BATCH_SIZE


def profiled_fit(loader, profiler, max_steps: int = -1) -> fulmen.Trainer:
    module = module_class(fulmen.LightningModule, log=True)(tiny)
    flags = dict(TRAINER_LOG_FLAGS, max_epochs=1, max_steps=max_steps)
    if profiler is not None:
        flags["profiler"] = profiler() if callable(profiler) else profiler
    trainer = fulmen.Trainer(**flags)
    # SimpleProfiler prints its table at the end of fit: into a buffer, so the terminal costs nothing.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(module, loader)
    return trainer


CASES = {
    "fulmen, no profiler": None,
    "fulmen, profiler off": PassThroughProfiler,
    "fulmen, simple": "simple",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--steps", type=int, default=50, help="N for the call count: runs of N and 2N steps")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    loader = make_loader(FEATURES, SAMPLES, BATCH_SIZE)
    contenders = {"raw PyTorch": lambda: raw_fit(tiny, loader)}
    for name, profiler in CASES.items():
        contenders[name] = lambda profiler=profiler: profiled_fit(loader, profiler)
    times = interleaved_times(contenders, rounds=rounds)
    report(f"tiny Linear(32, 2), one epoch of {STEPS} steps, median of {rounds} (ratio: against raw PyTorch)", times,
           "raw PyTorch")  # fmt: skip

    base = times["fulmen, no profiler"]
    print(f"\ncost per step against 'fulmen, no profiler' (median of paired differences / {STEPS} steps)")
    for name in ("fulmen, profiler off", "fulmen, simple"):
        delta = statistics.median(t - b for t, b in zip(times[name], base)) / STEPS
        print(f"  {name:<22} {delta * 1e6:+8.2f} us/step")

    call_loader = make_loader(FEATURES, BATCH_SIZE * (2 * args.steps + 8), BATCH_SIZE)
    print(f"\nfulmen's own Python calls per step ((calls({2 * args.steps}) - calls({args.steps})) / {args.steps})")
    print(f"  {'':<22} {'all fulmen':>10} {'profiling code':>15}")
    profiling_calls = {}
    for name, profiler in CASES.items():
        calls = per_step(lambda steps, profiler=profiler: profiled_fit(call_loader, profiler, steps), args.steps)
        ours = sum(value for key, value in calls.items() if in_fulmen(key))
        profiling_calls[name] = sum(value for key, value in calls.items() if key[0].startswith(PROFILING_CODE))
        print(f"  {name:<22} {ours:10.1f} {profiling_calls[name]:15.1f}")
    off = profiling_calls["fulmen, profiler off"] + profiling_calls["fulmen, no profiler"]
    print("\nprofiler off: no profiling call per step" if off == 0 else "\nprofiler off: PROFILING CALLS PER STEP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
