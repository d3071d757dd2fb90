"""FSDP through the Trainer: training and in-fit validation steps run through the sharded module."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_python

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_fit_validate.py"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_fsdp_fit_with_validation_on_two_processes(tmp_path):
    env = {"FULMEN_DIST_TIMEOUT": "60", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = run_python(str(SCRIPT), str(tmp_path), timeout=140, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        # 32 samples, 8 per batch, split over 2 ranks: 2 steps per epoch, 2 epochs.
        assert result["global_step"] == 4
        # 1 sanity batch + 1 validation batch (16 samples / 2 ranks / 8) per epoch.
        assert result["validation_batches"] == 3
        assert math.isfinite(result["val_loss"])
        # The step scheduler halved the learning rate of the optimizer that steps (FSDP's rebuild) 4 times.
        assert result["lr"] == pytest.approx(0.1 * 0.5**4)
