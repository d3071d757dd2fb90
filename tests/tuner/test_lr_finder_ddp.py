"""The learning-rate finder with two processes: every rank sweeps, stops and adopts the same rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_python

SCRIPT = Path(__file__).with_name("scripts") / "lr_find_ddp.py"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_lr_find_callback_under_ddp_spawn(tmp_path):
    loopback = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    done = run_python(str(SCRIPT), str(tmp_path), timeout=150, env=loopback)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]  # the same sweep results, suggestion and optimizer rate on both ranks
    assert ranks[0]["n"] == 30  # the whole sweep ran
    assert ranks[0]["lr"] == ranks[0]["opt_lr"] != 1e-3  # the fit trained with the suggestion
    assert ranks[0]["step"] == 8  # then a full epoch: 256 samples / 16 per batch / 2 ranks
