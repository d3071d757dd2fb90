"""Cluster environments read ranks and the main address from their launchers' variables."""

from __future__ import annotations

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
    for name, value in {"RANK": "5", "GROUP_RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                        "WORLD_SIZE": "8", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
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
    for name, value in {"KUBERNETES_PORT": "tcp://x", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "23456",
                        "WORLD_SIZE": "3", "RANK": "2"}.items():
        monkeypatch.setenv(name, value)
    assert KubeflowEnvironment.detect()
    env = KubeflowEnvironment()
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (2, 0, 2, 3)


def test_lsf(monkeypatch, tmp_path):
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("launch\nhostA\nhostA\nhostB\nhostB\n")
    for name, value in {"LSB_JOBID": "98765", "LSB_DJOB_RANKFILE": str(rankfile), "JSM_NAMESPACE_LOCAL_RANK": "1",
                        "JSM_NAMESPACE_SIZE": "4", "JSM_NAMESPACE_RANK": "3"}.items():
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
