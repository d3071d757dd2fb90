"""Every flag value either resolves to the right strategy pieces or fails naming flag, value and choices."""

from __future__ import annotations

import pytest
import torch

from fulmen.strategies import DDPStrategy, SingleDeviceStrategy, select_strategy
from fulmen.strategies.accelerators import CPUAccelerator
from fulmen.strategies.environments import ClusterEnvironment, LightningEnvironment, SLURMEnvironment
from fulmen.strategies.launchers import MultiprocessingLauncher, SubprocessScriptLauncher
from fulmen.strategies.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from fulmen.utilities.exceptions import MisconfigurationException

NO_CUDA = not torch.cuda.is_available()


def test_defaults_are_one_cpu_process_in_32_bit():
    strategy = select_strategy()
    assert isinstance(strategy, SingleDeviceStrategy)
    assert strategy.root_device == torch.device("cpu")
    assert isinstance(strategy.accelerator, CPUAccelerator)
    assert type(strategy.precision) is Precision and strategy.precision.precision == "32-true"
    assert strategy.launcher is None


@pytest.mark.parametrize(
    ("precision", "cls", "name"),
    [
        ("64-true", DoublePrecision, "64-true"), (64, DoublePrecision, "64-true"), ("64", DoublePrecision, "64-true"),
        ("32-true", Precision, "32-true"), (32, Precision, "32-true"), ("32", Precision, "32-true"),
        ("16-mixed", MixedPrecision, "16-mixed"), (16, MixedPrecision, "16-mixed"), ("16", MixedPrecision, "16-mixed"),
        ("bf16-mixed", MixedPrecision, "bf16-mixed"), ("bf16", MixedPrecision, "bf16-mixed"),
        ("16-true", HalfPrecision, "16-true"), ("bf16-true", HalfPrecision, "bf16-true"),
    ],
)  # fmt: skip
def test_every_precision_spelling(precision, cls, name):
    strategy = select_strategy(accelerator="cpu", precision=precision)
    assert type(strategy.precision) is cls
    assert strategy.precision.precision == name


def test_16_mixed_has_a_grad_scaler_and_bf16_has_none():
    assert select_strategy(precision="16-mixed").precision.scaler is not None
    assert select_strategy(precision="bf16-mixed").precision.scaler is None


@pytest.mark.parametrize(
    ("devices", "count"),
    [(1, 1), (2, 2), ("2", 2), ("auto", 1), (None, 1), (0, 1), ("0", 1), (-1, None), ("-1", None)],
)
def test_devices_on_cpu(devices, count):
    strategy = select_strategy(accelerator="cpu", devices=devices)
    expected = count if count is not None else CPUAccelerator.available_device_count()
    if expected == 1:
        assert isinstance(strategy, SingleDeviceStrategy)
    else:
        assert isinstance(strategy, DDPStrategy)
        assert strategy.num_processes == expected
        assert strategy.distributed_sampler_kwargs == {"num_replicas": expected, "rank": 0}


@pytest.mark.parametrize(
    ("strategy_name", "launcher", "start_method"),
    [("ddp", SubprocessScriptLauncher, "popen"), ("ddp_spawn", MultiprocessingLauncher, "spawn")],
)
def test_ddp_names_pick_their_launcher(strategy_name, launcher, start_method):
    strategy = select_strategy(accelerator="cpu", devices=2, strategy=strategy_name)
    assert isinstance(strategy, DDPStrategy)
    assert strategy.start_method == start_method
    assert isinstance(strategy.launcher, launcher)
    assert isinstance(strategy.cluster_environment, LightningEnvironment)


def test_strategy_instance_is_completed_not_replaced():
    mine = DDPStrategy(timeout=5)
    strategy = select_strategy(accelerator="cpu", devices=3, strategy=mine, precision="bf16-mixed", num_nodes=2)
    assert strategy is mine
    assert len(mine.parallel_devices) == 3 and mine.num_nodes == 2
    assert mine.precision.precision == "bf16-mixed"
    assert mine.distributed_sampler_kwargs == {"num_replicas": 6, "rank": 0}


class MyCluster(ClusterEnvironment):
    """The seed's example: only main_address, main_port and world_size()."""

    @property
    def main_address(self):
        return "127.0.0.1"

    @property
    def main_port(self):
        return 12910

    def world_size(self):
        return 2


def test_user_cluster_environment_in_plugins():
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="ddp", plugins=[MyCluster()])
    assert isinstance(strategy.cluster_environment, MyCluster)
    assert strategy.cluster_environment.main_port == 12910


def test_precision_plugin_in_plugins():
    strategy = select_strategy(plugins=DoublePrecision())
    assert isinstance(strategy.precision, DoublePrecision)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"accelerator": "tpu"}, ["`accelerator='tpu'`", "'cpu'", "'cuda'", "'auto'"]),
        ({"accelerator": 3}, ["`accelerator=3`", "Accepted"]),
        ({"strategy": "horovod"}, ["`strategy='horovod'`", "'ddp'", "'ddp_spawn'"]),
        ({"precision": "8-true"}, ["`precision='8-true'`", "'bf16-mixed'", "'64-true'"]),
        ({"precision": 17}, ["`precision=17`", "Accepted"]),
        ({"devices": "two"}, ["`devices='two'`", "'1, 4'"]),
        ({"devices": -2}, ["`devices=-2`", "Accepted"]),
        ({"devices": 1.5}, ["`devices=1.5`", "Accepted"]),
        ({"devices": [0, 1], "accelerator": "cpu"}, ["`devices=[0, 1]`", "only GPUs"]),
        ({"num_nodes": 0}, ["`num_nodes=0`", "positive int"]),
        ({"plugins": ["not a plugin"]}, ["`plugins='not a plugin'`", "ClusterEnvironment"]),
        ({"plugins": [MyCluster(), MyCluster()]}, ["two ClusterEnvironments"]),
        ({"strategy": "dp", "accelerator": "cpu"}, ["strategy='dp'", "accelerator='cuda'"]),
    ],
)
def test_invalid_flags_fail_with_a_clear_message(kwargs, fragments):
    with pytest.raises(MisconfigurationException) as info:
        select_strategy(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "gpu"])
def test_cuda_requested_without_cuda(name):
    with pytest.raises(MisconfigurationException, match=rf"`accelerator='{name}'` was requested, but no CUDA device"):
        select_strategy(accelerator=name)


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
@pytest.mark.gpu
def test_more_cuda_devices_than_present():
    count = torch.cuda.device_count()
    with pytest.raises(MisconfigurationException, match=f"this machine has {count}"):
        select_strategy(accelerator="cuda", devices=count + 1)


def test_device_index_list_parsing_goes_through_the_accelerator():
    # "1, 4" is a list of indices; on the CPU the resolver says indices need a GPU.
    with pytest.raises(MisconfigurationException, match="only GPUs"):
        select_strategy(accelerator="cpu", devices="1, 4")


def test_cli_flags_fill_unset_and_auto_flags(monkeypatch):
    monkeypatch.setenv("FULMEN_PRECISION", "bf16-mixed")
    monkeypatch.setenv("FULMEN_DEVICES", "2")
    monkeypatch.setenv("FULMEN_STRATEGY", "ddp_spawn")
    strategy = select_strategy(accelerator="cpu", devices="auto")
    assert isinstance(strategy, DDPStrategy) and strategy.start_method == "spawn"
    assert strategy.precision.precision == "bf16-mixed"
    # An explicit value in code wins over the command line.
    assert select_strategy(accelerator="cpu", devices=1, strategy="auto", precision="64-true").precision.precision == (
        "64-true"
    )


def test_slurm_environment_is_detected_and_validated(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    strategy = select_strategy(accelerator="cpu", devices=2, num_nodes=2)
    env = strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and strategy.launcher is None
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (3, 1, 1, 4)
    assert env.main_address == "gpu07" and env.main_port == 13456
    with pytest.raises(MisconfigurationException, match="ntasks-per-node=2"):
        select_strategy(accelerator="cpu", devices=4, num_nodes=2)
