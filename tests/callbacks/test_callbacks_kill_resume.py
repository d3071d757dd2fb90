"""A run with the stateful callbacks, SIGKILLed at a random step and resumed from "last", ends bit-equal.

The in-process stop-and-resume tests of each callback cover many stop points cheaply; these few
real kills check that nothing lives only in the dead process.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tests.conftest import run_python

WORKER = str(Path(__file__).parent / "scripts" / "callbacks_resume_worker.py")
SEED = random.SystemRandom().randrange(2**32)  # in every assertion message, to replay a failure
pytestmark = [pytest.mark.slow]


def _train(out: Path, *args: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proc = run_python(WORKER, str(out), *args, timeout=120)
    if args[0] == "kill":
        assert proc.returncode != 0, f"the run was not killed (seed {SEED}): {proc.stdout[-500:]}"
    else:
        assert proc.returncode == 0, f"seed {SEED}: {proc.stderr[-3000:]}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("callback_set", ["ema-finetune", "prune"])
def test_kill_and_resume(tmp_path, callback_set):
    # 3 epochs of 8 steps; the backbone unfreezes at epoch 1, pruning happens at epoch ends
    step = random.Random(SEED).randrange(4, 22)
    _train(tmp_path / "full", "full", callback_set)
    _train(tmp_path / "run", "kill", callback_set, "--kill-at", str(step))
    assert not (tmp_path / "run" / "final.pt").exists()
    _train(tmp_path / "run", "resume", callback_set)
    expected = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    actual = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{key} differs (killed at step {step}, seed {SEED})"
