"""The DeepSpeed examples run on two CPU processes: ZeRO-3 through the Trainer, ZeRO-2 in a Lite loop (~40 s)."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from tests.conftest import ROOT, run_python

pytestmark = [
    pytest.mark.slow,
    pytest.mark.deepspeed,
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="deepspeed is not installed (`pip install fulmen[deepspeed]`; `make test` installs it)",
    ),
]


@pytest.mark.timeout(400)
def test_zero3_trainer_example_builds_partitioned_and_consolidates(tmp_path):
    script = str(ROOT / "examples" / "deepspeed_zero3.py")
    proc = run_python(script, "--epochs", "2", "--out", str(tmp_path / "logs"), cwd=tmp_path, timeout=360)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0 holds 37634 of 75268 parameters" in proc.stdout  # half of every parameter
    accuracy = float(re.search(r"val accuracy ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.8
    merged = torch.load(tmp_path / "logs" / "best.ckpt", weights_only=True)
    assert merged["state_dict"]["net.0.weight"].shape == (256, 32)
    assert merged["state_dict"]["net.0.weight"].dtype == torch.float32  # fp32 master weights, not bf16


@pytest.mark.timeout(400)
def test_lite_zero2_example_trains_saves_and_resumes(tmp_path):
    script = str(ROOT / "examples" / "lite_deepspeed.py")
    first = run_python(script, "--epochs", "2", cwd=tmp_path, timeout=180)
    assert first.returncode == 0, first.stderr[-4000:]
    losses = [float(v) for v in re.findall(r"epoch \d: loss ([0-9.]+)", first.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert (tmp_path / "lite_deepspeed.ckpt" / "fulmen_checkpoint.pt").is_file()
    again = run_python(script, "--epochs", "3", cwd=tmp_path, timeout=180)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resumed from lite_deepspeed.ckpt at epoch 2" in again.stdout
    assert re.findall(r"epoch (\d): loss", again.stdout) == ["2"]
