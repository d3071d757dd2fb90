"""Run by tests/strategies/test_launchers.py: ``SubprocessScriptLauncher`` with a child that exits with 3.

The launcher re-runs this script as local rank 1. That rank sends its own stdout/stderr to
files in OUT, so that the test sees rank 0's stderr alone, then leaves with exit code 3.
Rank 0 waits to be stopped by the launcher.
"""

import os
import sys
import time
from pathlib import Path

from fulmen.strategies.environments import LightningEnvironment
from fulmen.strategies.launchers import SubprocessScriptLauncher
from fulmen.strategies.launchers.subprocess_script import CHILD_FLAG


def train(out_dir: Path) -> str:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank == 1:
        (out_dir / "rank_1.started").touch()
        os._exit(3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print("rank 0 was not stopped")
    return "finished"


if __name__ == "__main__":
    out = Path(sys.argv[1])
    if os.environ.get(CHILD_FLAG) == "1":
        for stream, name in ((sys.stdout, "out"), (sys.stderr, "err")):
            stream.flush()
            path = out / f"rank_{os.environ['LOCAL_RANK']}.{name}"
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, stream.fileno())
            os.close(target)
    launcher = SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    print(launcher.launch(train, out))
