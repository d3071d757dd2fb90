"""The Trainer examples run end to end (shortened), as ``make demo`` runs the iris one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_iris_example_trains_and_reports_where_it_wrote(tmp_path, capsys):
    iris = load("iris")
    results = iris.main(
        ["--root-dir", str(tmp_path), "--max-epochs", "15", "--no-progress-bar", "--accelerator", "cpu"]
    )
    out = capsys.readouterr().out
    assert results["val_acc"] > 0.8
    assert "Spy Report: Epoch 14 ended. Loss: " in out
    assert "TensorBoard logs:" in out and (tmp_path / "lightning_logs" / "version_0").is_dir()
    assert (tmp_path / "iris.ckpt").is_file() and (tmp_path / "data" / "iris.npz").is_file()
    assert f"--resume {tmp_path / 'iris.ckpt'}" in out


def test_the_iris_checkpoint_resumes_training(tmp_path, capsys):
    iris = load("iris")
    common = ["--root-dir", str(tmp_path), "--no-progress-bar", "--accelerator", "cpu"]
    iris.main([*common, "--max-epochs", "3"])
    saved = torch.load(tmp_path / "iris.ckpt", weights_only=True)
    assert saved["epoch"] == 3 and saved["optimizer_states"], "the demo's checkpoint must hold what fit resumes from"
    capsys.readouterr()
    iris.main([*common, "--max-epochs", "5", "--resume", str(tmp_path / "iris.ckpt")])
    out = capsys.readouterr().out
    assert "Epoch 3 ended" in out and "Epoch 4 ended" in out and "Epoch 2 ended" not in out
    assert torch.load(tmp_path / "iris.ckpt", weights_only=True)["epoch"] == 5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_iris_example_as_make_demo_runs_it(tmp_path):
    from tests.conftest import run_python

    result = run_python(str(EXAMPLES / "iris.py"), "--root-dir", str(tmp_path), "--max-epochs", "3", timeout=110)
    assert result.returncode == 0, result.stderr
    assert "Checkpoint:" in result.stdout and "Epoch 2" in result.stderr + result.stdout


def test_gan_example_trains_both_networks(tmp_path, capsys):
    gan = load("gan_manual_optimization")
    distance = gan.main(["--root-dir", str(tmp_path), "--max-epochs", "3", "--no-progress-bar"])
    out = capsys.readouterr().out
    assert "optimizer steps: 96 (two per batch)" in out
    assert distance < 1.846  # the generator moved towards the ring
