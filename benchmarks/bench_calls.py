"""fulmen's own Python calls per training step, counted with ``sys.setprofile``: a figure noise cannot blur.

Every Python-level ``call`` event (C calls are not counted; a generator counts once per resume) is
tallied per code object while a run executes on this thread. "fulmen calls" are those whose code
file lies inside the installed package directory (``os.path.dirname(fulmen.__file__)``); "total"
counts every Python file (torch, the standard library, this script). Each case runs N and 2N
steps on the tiny Linear(32, 2) model on CPU and reports ``(calls(2N) - calls(N)) / N``, so
construction, setup and teardown cancel and only the per-step work remains. Both runs stay inside
one epoch, so no epoch boundary falls in the difference.

Cases:
  trainer+log  Trainer with ``self.log`` in training_step every step; default flags except
               logger, checkpointing, progress bar and model summary off (the printed line
               says which callbacks and loggers remain).
  barebones    Trainer(barebones=True), no ``self.log`` (barebones forbids it).
  lite         Lite with a raw loop: setup, setup_dataloaders, forward, lite.backward,
               optimizer.step, zero_grad.
The reference is the raw PyTorch loop on the same model and data, counted the same way
(its fulmen calls are 0); each case's ratio is its total calls per step over the raw loop's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_lite import lite_epoch, raw_epoch  # noqa: E402
from bench_trainer import make_loader, module_class, tiny  # noqa: E402

import fulmen  # noqa: E402

PACKAGE_DIR = os.path.dirname(os.path.abspath(fulmen.__file__))
FEATURES, BATCH_SIZE = 32, 16

CodeKey = tuple[str, int, str]  # (file, first line, qualified name)


def quiet() -> contextlib.AbstractContextManager:
    """Anything a run prints goes to a buffer (it is a fixed cost, and the report stays readable)."""
    sink = io.StringIO()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(contextlib.redirect_stderr(sink))
    return stack


def count_calls(run: Callable[[], None]) -> Counter[CodeKey]:
    """Python ``call`` events per code object while ``run()`` executes on this thread."""
    per_code: Counter = Counter()

    def profile(frame, event, arg):
        if event == "call":
            per_code[frame.f_code] += 1

    with quiet():
        previous = sys.getprofile()
        sys.setprofile(profile)
        try:
            run()
        finally:
            sys.setprofile(previous)
    per_key: Counter[CodeKey] = Counter()
    for code, calls in per_code.items():
        per_key[(code.co_filename, code.co_firstlineno, getattr(code, "co_qualname", code.co_name))] += calls
    return per_key


def in_fulmen(key: CodeKey) -> bool:
    return os.path.abspath(key[0]).startswith(PACKAGE_DIR + os.sep)


def loader_for(steps: int):
    # Room for 2N steps and more in one epoch: max_steps, not the epoch's end, stops the run.
    return make_loader(FEATURES, BATCH_SIZE * (steps + 8), BATCH_SIZE)


# ------------------------------------------------------------------------------ the runs
def raw_run(steps: int) -> None:
    torch.manual_seed(0)
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    raw_epoch(model, optimizer, itertools.islice(loader_for(steps), steps))


TRAINER_LOG_FLAGS = dict(
    accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False,
)  # fmt: skip


def trainer_run(steps: int, barebones: bool, seen: dict | None = None) -> None:
    torch.manual_seed(0)
    module = module_class(fulmen.LightningModule, log=not barebones)(tiny)
    if barebones:
        trainer = fulmen.Trainer(accelerator="cpu", devices=1, barebones=True, max_steps=steps)
    else:
        trainer = fulmen.Trainer(**TRAINER_LOG_FLAGS, max_steps=steps)
    trainer.fit(module, loader_for(steps))
    if trainer.global_step != steps:
        raise RuntimeError(f"expected {steps} steps, the Trainer ran {trainer.global_step}")
    if seen is not None:
        seen["callbacks"] = [type(callback).__name__ for callback in trainer.callbacks]
        seen["loggers"] = [type(logger).__name__ for logger in trainer.loggers]


def lite_run(steps: int) -> None:
    torch.manual_seed(0)
    lite = fulmen.Lite(accelerator="cpu", devices=1)
    model = tiny()
    model, optimizer = lite.setup(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    loader = lite.setup_dataloaders(loader_for(steps))
    lite_epoch(lite, model, optimizer, itertools.islice(loader, steps))


# ------------------------------------------------------------------------------ reporting
def per_step(run: Callable[[int], None], steps: int) -> dict[CodeKey, float]:
    with quiet():
        run(2)  # warm-up: lazy imports and first-call caches stay out of both counts
    short, long = count_calls(lambda: run(steps)), count_calls(lambda: run(2 * steps))
    return {key: (long[key] - short[key]) / steps for key in long.keys() | short.keys() if long[key] != short[key]}


def where(key: CodeKey) -> str:
    path = os.path.relpath(key[0], PACKAGE_DIR) if in_fulmen(key) else key[0]
    return f"{key[2]} ({path}:{key[1]})"


def report(name: str, calls: dict[CodeKey, float], raw_total: float, top: int) -> None:
    ours = {key: value for key, value in calls.items() if in_fulmen(key)}
    total = sum(calls.values())
    print(f"{name}: {sum(ours.values()):.1f} fulmen calls/step")
    print(f"  total Python calls/step {total:.1f} vs raw PyTorch {raw_total:.1f}: {total / raw_total:.2f}x")
    ranked = sorted(ours.items(), key=lambda item: (-item[1], where(item[0])))
    for key, value in ranked[:top]:
        print(f"  {value:7.2f}  {where(key)}")
    if len(ranked) > top:
        rest = ranked[top:]
        print(f"  {sum(value for _, value in rest):7.2f}  in {len(rest)} more fulmen functions (--top to list them)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="N: runs of N and 2N steps are compared")
    parser.add_argument("--top", type=int, default=10, help="fulmen functions listed per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()

    raw = per_step(raw_run, args.steps)
    raw_total = sum(raw.values())
    seen: dict = {}
    cases = {
        "trainer+log": per_step(lambda steps: trainer_run(steps, barebones=False, seen=seen), args.steps),
        "barebones": per_step(lambda steps: trainer_run(steps, barebones=True), args.steps),
        "lite": per_step(lite_run, args.steps),
    }

    print(
        f"Python calls per training step, tiny Linear(32, 2) on CPU, (calls({2 * args.steps}) - "
        f"calls({args.steps})) / {args.steps}, counted with sys.setprofile"
    )
    print(f"raw PyTorch: {raw_total:.1f} Python calls/step (all files; the reference for the ratios)")
    flags = ", ".join(f"{name}={value!r}" for name, value in TRAINER_LOG_FLAGS.items())
    print(
        f"trainer+log flags: {flags}, max_steps=N, the rest default; "
        f"callbacks on: {seen.get('callbacks') or 'none'}; loggers on: {seen.get('loggers') or 'none'}"
    )
    for name, calls in cases.items():
        print()
        report(name, calls, raw_total, args.top)
    print(f"\n({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
