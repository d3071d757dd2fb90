"""The Lite migration example trains for real and saves a checkpoint Lite can load."""

from __future__ import annotations

import re

import torch

from tests.conftest import ROOT, run_python


def test_lite_migration_example_learns_and_saves(tmp_path):
    proc = run_python(str(ROOT / "examples" / "lite_migration.py"), "--epochs", "3", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"train accuracy ([0-9.]+)", proc.stdout)]
    assert len(accuracies) == 3 and accuracies[-1] > 0.95
    state = torch.load(tmp_path / "lite_migration.ckpt", weights_only=True)
    assert state["epoch"] == 3 and "0.weight" in state["model"] and "state" in state["optimizer"]
