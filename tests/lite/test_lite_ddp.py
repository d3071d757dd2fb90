"""Lite with two real processes over gloo on loopback, through both of fulmen's launchers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import run_python

WORKER = str(Path(__file__).parent / "scripts" / "ddp_worker.py")
pytestmark = [pytest.mark.slow]


def _records(out_dir: Path) -> list[dict]:
    return [json.loads((out_dir / f"rank_{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_processes(strategy, tmp_path):
    proc = run_python(WORKER, str(tmp_path), strategy, "normal", timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT 0" in proc.stdout  # rank zero's result comes back to the caller
    first, second = _records(tmp_path)
    assert (first["world_size"], second["world_size"]) == (2, 2)
    # DistributedSampler: interleaved shards, together the whole dataset, no overlap.
    assert first["seen"] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert second["seen"] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sorted(first["shuffled"] + second["shuffled"]) == list(range(16))
    assert first["shuffled"] != first["seen"]
    # DDP averages gradients: ranks agree after backward, and disagree inside no_backward_sync.
    assert first["grad_synced"] == second["grad_synced"] == [3.0] * 4  # mean of 2*1 and 2*2
    assert first["grad_unsynced"] == [2.0] * 4 and second["grad_unsynced"] == [4.0] * 4
    for record in (first, second):
        assert record["gather"] == [[0, 10], [1, 11]]
        assert record["gather_uneven"] == [[0], [0, 1]]
        assert (record["sum"], record["mean"], record["max"]) == (3.0, 1.5, 2.0)
        assert record["broadcast"] == {"from": 1, "payload": [1, 2, 3]}
    assert second["barrier_wait"] >= 0.9  # rank 1 waited for rank 0 at the barrier


@pytest.mark.timeout(90)
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
@pytest.mark.parametrize("mode", ["crash", "stuck"])
def test_a_failing_rank_ends_every_rank_with_the_real_error(strategy, mode, tmp_path):
    start = time.monotonic()
    proc = run_python(WORKER, str(tmp_path), strategy, mode, timeout=80, env={"FULMEN_DIST_TIMEOUT": "8"})
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 60
    assert "unreachable" not in proc.stdout
    if mode == "crash":
        assert "ValueError: rank one broke on purpose" in proc.stderr
        if strategy == "ddp":  # rank 0 names the failed child, not only gloo's closed connection
            assert "DistributedError: Local rank 1" in proc.stderr
    else:
        assert "Timed out" in proc.stderr or "timed out" in proc.stderr.lower()


@pytest.mark.timeout(90)
def test_spawned_ranks_do_not_share_a_model_passed_from_the_main_process():
    proc = run_python(str(Path(__file__).parent / "scripts" / "spawn_model_arg.py"), timeout=80)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One step of 1 - mean(1, 2): with shared parameters both ranks would subtract 1.5 (-2.0).
    assert "WEIGHT -0.5000" in proc.stdout
