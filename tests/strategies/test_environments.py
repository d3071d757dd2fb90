"""Cluster environments read ranks and the main address from their launchers' variables."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from fulmen.strategies.environments import (
    KubeflowEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_environment,
)
from fulmen.strategies.environments.slurm import expand_hostlist
from fulmen.utilities.exceptions import MisconfigurationException


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("a[8-10],b1", ["a8", "a9", "a10", "b1"]),
        ("x[001-002],y[5]", ["x001", "x002", "y5"]),
    ],
)
def test_slurm_hostlist_expansion(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


def test_interactive_slurm_shell_is_not_a_slurm_launch(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    assert not SLURMEnvironment.detect()
    assert isinstance(detect_environment(), LightningEnvironment)


def test_slurm_array_job_id_and_requeue_defaults(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    env = SLURMEnvironment()
    assert env.job_id() == "77_3"
    assert env.auto_requeue is True


def test_torchelastic(monkeypatch):
    for name, value in {
        "RANK": "5",
        "GROUP_RANK": "1",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "WORLD_SIZE": "8",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29511",
    }.items():
        monkeypatch.setenv(name, value)
    assert TorchElasticEnvironment.detect()
    env = detect_environment()
    assert isinstance(env, TorchElasticEnvironment) and env.creates_processes_externally
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (5, 1, 1, 8)
    assert (env.main_address, env.main_port) == ("127.0.0.1", 29511)
    env.validate_settings(num_devices=4, num_nodes=2)
    with pytest.raises(MisconfigurationException, match="nproc-per-node"):
        env.validate_settings(num_devices=2, num_nodes=2)


def test_kubeflow(monkeypatch):
    for name, value in {
        "KUBERNETES_PORT": "tcp://x",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "23456",
        "WORLD_SIZE": "3",
        "RANK": "2",
    }.items():
        monkeypatch.setenv(name, value)
    assert KubeflowEnvironment.detect()
    env = KubeflowEnvironment()
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (2, 0, 2, 3)


def test_lsf(monkeypatch, tmp_path):
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("launch\nhostA\nhostA\nhostB\nhostB\n")
    for name, value in {
        "LSB_JOBID": "98765",
        "LSB_DJOB_RANKFILE": str(rankfile),
        "JSM_NAMESPACE_LOCAL_RANK": "1",
        "JSM_NAMESPACE_SIZE": "4",
        "JSM_NAMESPACE_RANK": "3",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert LSFEnvironment.detect()
    env = LSFEnvironment()
    assert env.main_address == "hostA"
    assert env.main_port == 18765
    assert (env.global_rank(), env.local_rank(), env.world_size()) == (3, 1, 4)


def test_lightning_environment_picks_a_free_port_once(monkeypatch):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    env = LightningEnvironment()
    port = env.main_port
    assert 0 < port < 65536 and env.main_port == port
    monkeypatch.setenv("MASTER_PORT", "31337")
    assert LightningEnvironment().main_port == 31337


# ------------------------------------------------------------------------------------- requeue
def _fake_scontrol(tmp_path, monkeypatch, exit_code: int = 0) -> Path:
    """An ``scontrol`` first on PATH that records its arguments (and fails when told)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "refused" >&2\nexit {exit_code}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return log


def test_slurm_requeues_the_job_on_its_requeue_signal(tmp_path, monkeypatch):
    log = _fake_scontrol(tmp_path, monkeypatch)
    env = SLURMEnvironment()
    assert env.requeue_signal == signal.SIGUSR1 and env.auto_requeue is True
    assert env.requeue(signal.SIGTERM) is False  # preemption: a checkpoint, but no requeue
    assert not log.exists()
    assert env.requeue(signal.SIGUSR1) is True
    assert log.read_text().split() == ["requeue", "4242"]


def test_slurm_requeue_signal_is_configurable_and_auto_requeue_can_be_off(tmp_path, monkeypatch):
    log = _fake_scontrol(tmp_path, monkeypatch)
    env = SLURMEnvironment(requeue_signal=signal.SIGUSR2)
    assert env.requeue_signal == signal.SIGUSR2
    assert env.requeue(signal.SIGUSR1) is False
    assert env.requeue(signal.SIGUSR2) is True
    assert SLURMEnvironment(auto_requeue=False).requeue(signal.SIGUSR1) is False
    assert log.read_text().split() == ["requeue", "4242"]  # one call in all


def test_slurm_requeue_failure_is_a_warning_not_an_error(tmp_path, monkeypatch, caplog):
    _fake_scontrol(tmp_path, monkeypatch, exit_code=1)
    with caplog.at_level(logging.WARNING, logger="fulmen"):
        assert SLURMEnvironment().requeue(signal.SIGUSR1) is False
    assert "`scontrol requeue 4242` failed (1): refused" in caplog.text


def test_slurm_requeue_without_scontrol_is_a_warning(tmp_path, monkeypatch, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with caplog.at_level(logging.WARNING, logger="fulmen"):
        assert SLURMEnvironment().requeue(signal.SIGUSR1) is False
    assert "Requeueing SLURM job 4242 failed" in caplog.text
