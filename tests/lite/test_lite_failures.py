"""Lite with ``strategy="ddp"``: whichever rank fails, by raising or by being killed, every rank
ends promptly with that rank's error and no process is left behind.

The direct style is the hard case: rank 0's error happens in the user's own loop, outside any
fulmen call, while rank 1 waits for it in a collective.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.processes import run_failing

SCRIPT = str(Path(__file__).parent / "scripts" / "lite_failure.py")
pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("rank", "mode", "style"),
    [
        (0, "raise", "direct"),
        (1, "raise", "direct"),
        (1, "kill", "direct"),
        (0, "kill", "direct"),
        (0, "raise", "function"),
    ],
    ids=["direct-rank0-raises", "direct-rank1-raises", "direct-rank1-killed", "direct-rank0-killed",
         "function-rank0-raises"],
)  # fmt: skip
def test_a_failing_rank_ends_every_rank_with_its_error(rank, mode, style, tmp_path):
    # The process-group timeout is above the 60 s allowed, so it cannot be what ends the ranks.
    run = run_failing(SCRIPT, tmp_path, str(rank), mode, "3", style, timeout=100, env={"FULMEN_DIST_TIMEOUT": "70"})
    stderr = run.proc.stderr
    assert sorted(run.pids) == [0, 1], stderr[-3000:]
    assert run.survivors == []
    assert run.elapsed < 60
    assert "unreachable" not in run.proc.stdout
    if (rank, mode) == (0, "kill"):
        assert run.proc.returncode == -signal.SIGKILL
    elif rank == 0:
        assert run.proc.returncode == 1
        assert "RuntimeError: rank 0 broke on purpose at step 3" in stderr
        assert "Local rank 1" not in stderr  # rank 0's own error, not an echo from the stopped child
        assert "Timed out" not in stderr  # not the process group's timeout
    else:
        assert run.proc.returncode == 1
        child = f"fulmen: Local rank 1 (pid {run.pids[1]}) exited with code"
        if mode == "raise":
            assert "RuntimeError: rank 1 broke on purpose at step 3" in stderr  # the child's own traceback
            assert f"{child} 1; its traceback is printed above" in stderr
        else:
            assert f"{child} -9; it was killed by SIGKILL" in stderr
