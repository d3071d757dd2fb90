"""A run SIGKILLed at a random step and resumed with ckpt_path="last" ends bit-equal to an uninterrupted one.

The worker trains a dropout MLP on shuffled data whose __getitem__ draws random noise, with
validation every 5 batches, a StepLR schedule and checkpoints every 3 steps and after every
validation, so kills land before, between and after checkpoints, inside and at the end of epochs.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.conftest import run_python

WORKER = str(Path(__file__).parent / "scripts" / "resume_worker.py")
TOTAL_STEPS = 48  # 3 epochs of 16 batches
pytestmark = [pytest.mark.slow]

# Random kill points, drawn fresh each run; the seed is in every assertion message to replay one.
SEED = random.SystemRandom().randrange(2**32)


def _steps(count: int, salt: int) -> list[int]:
    return sorted(random.Random(SEED + salt).sample(range(2, TOTAL_STEPS), count))


def _train(out: Path, mode: str, *extra: str, timeout: float = 150) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proc = run_python(WORKER, str(out), mode, *extra, timeout=timeout)
    if mode == "kill":
        assert proc.returncode != 0, f"the run was not killed (seed {SEED}): {proc.stdout[-500:]}"
    else:
        assert proc.returncode == 0, f"seed {SEED}: {proc.stderr[-3000:]}"


def _final(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "final.pt", weights_only=True)


def _assert_bit_equal(expected: dict, actual: dict, context: str) -> None:
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), f"{key} differs after resuming ({context}, seed {SEED})"


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("workers", "kills"), [(0, 3), (2, 2)])
def test_kill_and_resume_on_one_process(tmp_path, workers, kills):
    _train(tmp_path / "full", "full", "--workers", str(workers))
    reference = _final(tmp_path / "full")
    for step in _steps(kills, salt=workers):
        out = tmp_path / f"killed_at_{step}"
        _train(out, "kill", "--kill-at", str(step), "--workers", str(workers))
        assert not (out / "final.pt").exists()
        _train(out, "resume", "--workers", str(workers))
        _assert_bit_equal(reference, _final(out), f"1 process, {workers} workers, killed at step {step}")


@pytest.mark.timeout(400)
@pytest.mark.parametrize("workers", [0, 2])
def test_kill_and_resume_on_two_processes(tmp_path, workers):
    args = ("--workers", str(workers), "--strategy", "ddp_spawn")
    _train(tmp_path / "full", "full", *args)
    reference = _final(tmp_path / "full")
    (step,) = _steps(1, salt=10 + workers)
    out = tmp_path / f"killed_at_{step}"
    _train(out, "kill", "--kill-at", str(step), *args)  # rank 1 dies; rank 0 fails at the next collective
    _train(out, "resume", *args)
    _assert_bit_equal(reference, _final(out), f"ddp_spawn, {workers} workers, killed at step {step}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["full", "sharded"])
def test_kill_and_resume_under_fsdp(tmp_path, kind):
    """FSDP on 2 processes, with whole (rank-zero file) or sharded (DCP directory) checkpoints."""
    args = ("--strategy", f"fsdp_{kind}")
    _train(tmp_path / "full", "full", *args)
    reference = _final(tmp_path / "full")
    (step,) = _steps(1, salt=20 + len(kind))
    out = tmp_path / f"killed_at_{step}"
    _train(out, "kill", "--kill-at", str(step), *args)
    if kind == "sharded":
        assert (out / "steps" / "last.ckpt" / "__1_0.distcp").exists() or step < 3
    _train(out, "resume", *args)
    _assert_bit_equal(reference, _final(out), f"FSDP {kind} checkpoints, killed at step {step}")


@pytest.mark.timeout(300)
def test_kill_and_resume_under_tensor_parallelism(tmp_path):
    """ModelParallelStrategy, TP=2 on 2 processes (dropout on each rank's half of the activations), DCP checkpoints."""
    args = ("--strategy", "model_parallel")
    _train(tmp_path / "full", "full", *args)
    reference = _final(tmp_path / "full")
    # Killed at step 45, as a validation ends (rank 0 saves "last" there): FSDP's root keeps its
    # parameters gathered after that forward, and the optimizer state must still be read sharded.
    step = 45
    out = tmp_path / f"killed_at_{step}"
    _train(out, "kill", "--kill-at", str(step), *args)
    _train(out, "resume", *args)
    _assert_bit_equal(reference, _final(out), f"tensor parallel, killed at step {step}")
