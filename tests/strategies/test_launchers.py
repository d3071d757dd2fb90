"""Each launcher turns a rank that dies or raises into an error in the launching process.

The error names the rank and how it ended, and the other ranks are stopped: no rank waits on
a dead peer. No Trainer and no process group: only the launchers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from fulmen.strategies.environments import LightningEnvironment
from fulmen.strategies.launchers import MultiprocessingLauncher
from fulmen.utilities.exceptions import DistributedError
from tests.conftest import run_python

SCRIPT = str(Path(__file__).parent / "scripts" / "script_launcher_child_exit.py")
pytestmark = [pytest.mark.slow]


def _set_rank(process_index: int) -> None:
    os.environ["TEST_RANK"] = str(process_index)


def _rank() -> int:
    return int(os.environ["TEST_RANK"])


def _wait_to_be_stopped(seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _rank_1_exits_with_code_3() -> str:
    if _rank() == 1:
        os._exit(3)
    _wait_to_be_stopped()  # rank 0 would go on for 30 s if the launcher did not stop it
    return "rank 0 was not stopped"


def _rank_1_raises() -> str:
    if _rank() == 1:
        raise ValueError("rank one broke on purpose")
    _wait_to_be_stopped()
    return "rank 0 was not stopped"


def _launcher(monkeypatch: pytest.MonkeyPatch) -> MultiprocessingLauncher:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    return MultiprocessingLauncher(LightningEnvironment(), num_processes=2, setup_rank=_set_rank)


@pytest.mark.timeout(60)
def test_spawned_rank_that_exits_becomes_a_distributed_error_naming_it(monkeypatch):
    launcher = _launcher(monkeypatch)
    start = time.monotonic()
    with pytest.raises(DistributedError) as info:
        launcher.launch(_rank_1_exits_with_code_3)
    assert time.monotonic() - start < 20  # rank 0 was stopped, not waited for
    message = str(info.value)
    assert "Rank 1 exited with code 3" in message
    assert "the other ranks were stopped" in message


@pytest.mark.timeout(60)
def test_spawned_rank_that_raises_reaches_the_caller_with_its_traceback(monkeypatch):
    launcher = _launcher(monkeypatch)
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException) as info:
        launcher.launch(_rank_1_raises)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "Process 1 terminated" in message
    assert "ValueError: rank one broke on purpose" in message
    assert "_rank_1_raises" in message  # the failing rank's own traceback, not only its message


@pytest.mark.timeout(90)
def test_script_launcher_child_that_exits_becomes_an_error_on_rank_0(tmp_path):
    start = time.monotonic()
    # Only rank 0 writes to this stderr: the script sends rank 1's output to files of its own.
    proc = run_python(SCRIPT, str(tmp_path), timeout=60, env={"MASTER_ADDR": "127.0.0.1"})
    elapsed = time.monotonic() - start

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert elapsed < 40
    assert "DistributedError: Local rank 1" in proc.stderr
    assert "exited with code 3" in proc.stderr
    assert "rank 0 was not stopped" not in proc.stdout
    assert (tmp_path / "rank_1.started").is_file()  # the child did run the function
    assert (tmp_path / "rank_1.err").read_text() == ""  # it died without a word: all the text is rank 0's
