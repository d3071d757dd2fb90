"""SIGTERM and SLURM's requeue signal: checkpoint, stop cleanly on every rank, requeue, resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import run_python

WORKER = str(Path(__file__).parent / "scripts" / "signal_worker.py")

SLURM = {
    "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "localhost",
}  # fmt: skip


def _stopped_at(stdout: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith("STOPPED"))
    return int(line.split("global_step=")[1].split()[0])


@pytest.mark.timeout(60)
def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path):
    proc = run_python(WORKER, str(tmp_path), "TERM", "5", timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _stopped_at(proc.stdout) == 5  # stopped at the batch that got the signal, not 5 epochs later
    checkpoint = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 5 and checkpoint["loops"]["batch_idx"] == 5


@pytest.mark.timeout(90)
def test_slurm_requeue_signal_requeues_and_the_next_run_resumes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    scontrol.chmod(0o755)
    log = tmp_path / "scontrol.log"
    env = {**SLURM, "SCONTROL_LOG": str(log), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    root = tmp_path / "root"

    first = run_python(WORKER, str(root), "USR1", "6", env=env, timeout=60)
    assert first.returncode == 0, first.stderr[-2000:]
    assert _stopped_at(first.stdout) == 6
    assert log.read_text().split() == ["requeue", "4242"]
    assert (root / "hpc_ckpt_1.ckpt").exists()

    # The requeued job runs the same command; it finds the hpc checkpoint by itself.
    second = run_python(WORKER, str(root), "NONE", "0", env=env, timeout=60)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"ckpt_path={root / 'hpc_ckpt_1.ckpt'}" in second.stdout
    assert _stopped_at(second.stdout) == 40  # 5 epochs of 8 batches in all, not 6 + 40


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_batch(tmp_path):
    proc = run_python(WORKER, str(tmp_path), "TERM", "7", "--devices", "2", timeout=80)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The ranks agree at batch counts they all know (each epoch's first batch, then about every
    # second), not after every batch: they stop together at the first such batch after step 7.
    stopped = _stopped_at(proc.stdout)
    assert 7 <= stopped <= 7 + 8  # 8 batches an epoch
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == stopped
