"""``fulmen run``: flag validation, defaults handed to the script, and failure propagation."""

from __future__ import annotations

import time

import pytest

from tests.conftest import run_python

SCRIPT = """
import sys
import torch
from fulmen import Lite
lite = Lite()
s = lite.strategy
print(f"CONFIG {type(s).__name__} {s.precision.precision} {lite.world_size} {sys.argv[1:]}", flush=True)
"""

FAILING = """
from fulmen import Lite
lite = Lite()
lite.barrier()
if lite.global_rank == 1:
    raise ValueError("rank one broke on purpose")
lite.barrier()
print("unreachable")
"""


def test_flags_become_defaults_of_lite(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = run_python("-m", "fulmen", "run", str(script), "--precision=64", "--", "--lr", "0.1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "CONFIG SingleDeviceStrategy 64-true 1 ['--lr', '0.1']" in proc.stdout


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--precision=8", "`--precision='8'` is not valid. Accepted: '64-true'"),
        ("--strategy=horovod", "`--strategy='horovod'` is not valid. Accepted: auto"),
        ("--accelerator=tpu", "invalid choice: 'tpu'"),
        ("--num-nodes=0", "`--num-nodes=0` is not valid"),
        ("--devices=two", "`--devices='two'` is not valid"),
    ],
)
def test_bad_flags_fail_at_once(tmp_path, flag, message):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = run_python("-m", "fulmen", "run", str(script), flag, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "CONFIG" not in proc.stdout


def test_missing_script(tmp_path):
    proc = run_python("-m", "fulmen", "run", str(tmp_path / "nope.py"), timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_processes_and_a_crashing_rank(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = run_python(
        "-m", "fulmen", "run", str(script), "--devices=2", "--strategy=ddp", "--accelerator=cpu", timeout=80
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("CONFIG DDPStrategy 32-true 2 []") == 2

    failing = tmp_path / "fail.py"
    failing.write_text(FAILING)
    start = time.monotonic()
    proc = run_python(
        "-m", "fulmen", "run", str(failing), "--devices=2", "--strategy=ddp", "--accelerator=cpu", timeout=80
    )
    assert proc.returncode == 1 and time.monotonic() - start < 60
    assert "ValueError: rank one broke on purpose" in proc.stderr
    assert "unreachable" not in proc.stdout
