"""``fulmen --version``; ``fulmen run`` refuses, before starting any process, what this machine cannot run."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch

import fulmen
from fulmen.cli.machine_check import check_machine
from fulmen.cli.main import main
from fulmen.utilities.exceptions import MisconfigurationException


@pytest.mark.parametrize("command", [["-m", "fulmen", "--version"], ["-m", "fulmen.cli.main", "--version"]])
def test_version_from_the_command_line(command):
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fulmen {fulmen.__version__}"


def test_the_version_is_the_installed_distributions():
    assert importlib.metadata.version("fulmen") == fulmen.__version__


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_on_a_machine_without_it_fails_once_before_launching(tmp_path, capsys):
    ran = tmp_path / "ran"
    script = tmp_path / "train.py"
    script.write_text(f"open({str(ran)!r}, 'w').close()\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--accelerator=cuda", "--devices=8", str(script)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "`fulmen run --accelerator=cuda --devices=8` cannot run here" in err
    assert "no CUDA device is available on this machine. Available here: ['cpu'" in err
    assert err.count("cannot run here") == 1 and not ran.exists()  # no process was started


def test_what_the_machine_can_run_passes_and_the_rest_is_named():
    check_machine("cpu", "8")  # CPU processes may outnumber the cores, as in Lightning
    check_machine(None, None)
    with pytest.raises(MisconfigurationException, match="--accelerator=cpu --devices=0,1` cannot run here: .*"):
        check_machine("cpu", "0,1")
    if not torch.cuda.is_available():
        with pytest.raises(MisconfigurationException, match="--accelerator=gpu --devices=2` .*no CUDA device"):
            check_machine("gpu", "2")
    else:
        count = torch.cuda.device_count()
        with pytest.raises(MisconfigurationException, match=f"but this machine has {count}"):
            check_machine("cuda", str(count + 1))
