"""The ``Strategy`` base on one CPU process, through ``SingleDeviceStrategy``: no Trainer, no Lite.

Every step a front end asks of the strategy must do what plain torch does, and the base
properties must answer without ``getattr`` fallbacks.
"""

from __future__ import annotations

import copy
import signal

import pytest
import torch
from torch import nn

from fulmen.strategies import DDPStrategy, SingleDeviceStrategy, select_strategy
from fulmen.strategies.accelerators import CPUAccelerator
from fulmen.strategies.environments import LightningEnvironment
from fulmen.strategies.launchers import MultiprocessingLauncher, SubprocessScriptLauncher
from fulmen.utilities.exceptions import MisconfigurationException


def _strategy() -> SingleDeviceStrategy:
    return SingleDeviceStrategy("cpu", accelerator=CPUAccelerator())


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, generator=generator), torch.randn(5, 2, generator=generator)) for _ in range(4)]


# ------------------------------------------------------------------------------ training steps
def test_setup_backward_and_step_update_weights_exactly_as_plain_torch():
    reference, reference_opt = _model_and_optimizer()
    model = copy.deepcopy(reference)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = _strategy()
    strategy.setup_environment()

    model = strategy.convert_module(model)
    strategy.module_to_device(model)
    wrapped, (wrapped_opt,) = strategy.setup_module_and_optimizers(model, [optimizer])
    assert wrapped is model and wrapped_opt is optimizer  # one device: nothing to wrap

    for x, y in _batches():
        wrapped_opt.zero_grad()
        with strategy.forward_context():
            loss = nn.functional.mse_loss(wrapped(strategy.batch_to_device(x)), y)
        strategy.backward(loss, wrapped)
        strategy.optimizer_step(wrapped_opt)

        reference_opt.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        reference_opt.step()

    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)
    assert model[0].weight.device == torch.device("cpu")


def test_optimizer_step_with_a_closure_returns_the_closure_result():
    model, optimizer = _model_and_optimizer()
    strategy = _strategy()
    x, y = _batches()[0]

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        strategy.backward(loss, model)
        return loss

    before = model[0].weight.detach().clone()
    loss = strategy.optimizer_step(optimizer, closure=closure)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    assert not torch.equal(model[0].weight, before)


def test_backward_fn_replaces_tensor_backward():
    strategy = _strategy()
    weight = torch.tensor([2.0], requires_grad=True)
    calls = []

    def own_backward(tensor, *args, **kwargs):
        calls.append((args, kwargs))
        tensor.backward(*args, **kwargs)

    strategy.backward((weight * 3).sum(), None, retain_graph=True, backward_fn=own_backward)
    assert calls == [((), {"retain_graph": True})]
    assert weight.grad.tolist() == [3.0]


def test_clip_gradients_norm_returns_the_total_norm_before_clipping():
    strategy = _strategy()
    model = nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    reference = model.weight.grad.clone()

    norm = strategy.clip_gradients_norm(model, optimizer, max_norm=1.0)

    assert norm.item() == pytest.approx(5.0)
    parameter = nn.Parameter(torch.zeros(1, 2))
    parameter.grad = reference
    torch.nn.utils.clip_grad_norm_([parameter], 1.0)
    assert torch.equal(model.weight.grad, parameter.grad)
    assert model.weight.grad.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_clip_gradients_norm_can_refuse_non_finite_gradients():
    strategy = _strategy()
    model = nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.weight.grad = torch.tensor([[float("inf"), 1.0]])
    with pytest.raises(RuntimeError, match="non-finite"):
        strategy.clip_gradients_norm(model, optimizer, max_norm=1.0, error_if_nonfinite=True)


def test_clip_gradients_value_clamps_each_gradient():
    strategy = _strategy()
    model = nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.weight.grad = torch.tensor([[-3.0, 0.5, 4.0]])
    assert strategy.clip_gradients_value(model, optimizer, clip_val=1.0) is None
    assert model.weight.grad.tolist() == [[-1.0, 0.5, 1.0]]


def test_no_backward_sync_is_a_no_op_on_one_process():
    strategy = _strategy()
    weight = torch.tensor([1.0], requires_grad=True)
    with strategy.no_backward_sync(nn.Linear(1, 1)):
        (weight * 2).sum().backward()
    assert weight.grad.tolist() == [2.0]
    assert strategy.supports_no_backward_sync is False


# --------------------------------------------------------------------------------- collectives
def test_collectives_on_one_process_pass_values_through():
    strategy = _strategy()
    tensor = torch.tensor([1.0, 2.0, 3.0])

    # One process: the tensor as it is, no leading world-size dimension (as Lightning documents).
    assert strategy.all_gather(tensor) is tensor
    assert strategy.all_gather(torch.tensor(5.0)).shape == ()

    for op in ("sum", "mean", "max", "min"):
        assert strategy.all_reduce(tensor, reduce_op=op) is tensor
    reduced = strategy.all_reduce(2.5)
    assert isinstance(reduced, torch.Tensor) and reduced.item() == 2.5
    with pytest.raises(ValueError, match="reduce_op='median'"):
        strategy.all_reduce(tensor, reduce_op="median")

    payload = {"a": [1, 2], "b": object()}
    assert strategy.broadcast(payload) is payload
    assert strategy.broadcast(payload, src=0) is payload
    assert strategy.all_gather_object(payload) == [payload]
    strategy.barrier("nothing to wait for")


@pytest.mark.parametrize("decision", [True, False])
def test_reduce_boolean_decision_on_one_process_is_the_decision(decision):
    strategy = _strategy()
    assert strategy.reduce_boolean_decision(decision) is decision
    assert strategy.reduce_boolean_decision(decision, all=False) is decision


# ---------------------------------------------------------------------------------- checkpoints
def test_save_and_load_checkpoint_round_trip(tmp_path):
    strategy = _strategy()
    model, optimizer = _model_and_optimizer()
    x, y = _batches()[0]
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()  # momentum buffers: optimizer state worth saving
    checkpoint = {
        "state_dict": strategy.get_module_state_dict(model),
        "optimizer": strategy.get_optimizer_state(optimizer),
        "epoch": 3,
        "nested": {"values": [1, 2.5, "three"]},
    }
    path = tmp_path / "sub" / "model.ckpt"
    strategy.save_checkpoint(checkpoint, str(path))
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))

    loaded = strategy.load_checkpoint(str(path))
    assert loaded["epoch"] == 3 and loaded["nested"] == {"values": [1, 2.5, "three"]}
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(loaded["state_dict"][key], value)
        assert loaded["state_dict"][key].device == torch.device("cpu")

    fresh, fresh_optimizer = _model_and_optimizer()
    strategy.load_module_state_dict(fresh, loaded["state_dict"])
    strategy.load_optimizer_state(fresh_optimizer, loaded["optimizer"])
    for ours, theirs in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(fresh_optimizer.state[ours]["momentum_buffer"], optimizer.state[theirs]["momentum_buffer"])


def test_a_non_zero_rank_does_not_write_the_checkpoint(tmp_path):
    environment = LightningEnvironment()
    environment.set_global_rank(1)
    strategy = SingleDeviceStrategy("cpu")
    strategy.cluster_environment = environment
    strategy.save_checkpoint({"epoch": 1}, str(tmp_path / "model.ckpt"))
    assert not (tmp_path / "model.ckpt").exists()


# ------------------------------------------------------------------------ base properties (no probes)
def test_single_device_strategy_declares_the_base_properties():
    strategy = select_strategy(accelerator="cpu", devices=1)
    assert isinstance(strategy, SingleDeviceStrategy)
    assert strategy.num_nodes == 1
    assert strategy.parallel_devices == [torch.device("cpu")]
    assert strategy.process_group_backend is None
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (1, 0, 0, 0)
    assert strategy.is_global_zero
    assert strategy.distributed_sampler_kwargs is None
    assert strategy.launcher is None


def test_ddp_strategies_declare_the_same_properties():
    spawn = select_strategy(strategy="ddp_spawn", devices=2, accelerator="cpu")
    assert spawn.num_nodes == 1
    assert spawn.parallel_devices == [torch.device("cpu"), torch.device("cpu")]
    assert spawn.process_group_backend is None  # not asked for: chosen from the device when joining
    assert spawn.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}

    chosen = DDPStrategy(process_group_backend="gloo", num_nodes=3, parallel_devices=[torch.device("cpu")] * 2)
    assert (chosen.process_group_backend, chosen.num_nodes, chosen.num_processes) == ("gloo", 3, 2)
    unresolved = DDPStrategy()
    assert unresolved.parallel_devices == [torch.device("cpu")]  # its root device until the flags fill it in
    assert unresolved.num_processes == 1

    resolved = select_strategy(strategy=DDPStrategy(start_method="spawn"), devices=3, accelerator="cpu")
    assert resolved.parallel_devices == [torch.device("cpu")] * 3 and resolved.num_processes == 3


def test_parallel_devices_can_be_set_on_any_strategy():
    strategy = _strategy()
    strategy.parallel_devices = [torch.device("cpu"), torch.device("cpu")]
    assert strategy.parallel_devices == [torch.device("cpu"), torch.device("cpu")]
    strategy.parallel_devices = None
    assert strategy.parallel_devices == [torch.device("cpu")]


def test_launchers_say_how_they_launch():
    spawn = select_strategy(strategy="ddp_spawn", devices=2, accelerator="cpu").launcher
    assert isinstance(spawn, MultiprocessingLauncher)
    assert spawn.pickles_function is True
    assert spawn.is_interactive_compatible is False
    with pytest.raises(MisconfigurationException, match=r"ddp_spawn.*call `lite.launch\(train_fn\)`"):
        spawn.launch_in_background()

    fork = select_strategy(strategy="ddp_fork", devices=2, accelerator="cpu").launcher
    assert fork.pickles_function is True and fork.is_interactive_compatible is True
    with pytest.raises(MisconfigurationException, match="ddp_fork"):
        fork.launch_in_background()

    script = select_strategy(strategy="ddp", devices=2, accelerator="cpu").launcher
    assert isinstance(script, SubprocessScriptLauncher)
    assert script.pickles_function is False
    assert script.is_interactive_compatible is False


def test_cluster_environments_declare_requeue_defaults():
    environment = LightningEnvironment()
    assert environment.requeue_signal == signal.SIGUSR1
    assert environment.auto_requeue is False
    assert environment.requeue(signal.SIGUSR1) is False
    assert environment.requeue(signal.SIGTERM) is False


# ------------------------------------------------------------------------------ SyncBatchNorm
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        self.norm = nn.BatchNorm1d(3)
        self.marker = "kept"


def _two_process_strategy() -> DDPStrategy:
    strategy = DDPStrategy(parallel_devices=[torch.device("cpu")] * 2, cluster_environment=LightningEnvironment())
    strategy.cluster_environment.set_world_size(2)
    return strategy


def test_convert_sync_batchnorm_leaves_one_process_alone():
    model = _Net()
    assert _strategy().convert_sync_batchnorm(model) is model
    assert type(model.norm) is nn.BatchNorm1d and type(model.body[1]) is nn.BatchNorm1d


def test_convert_sync_batchnorm_replaces_every_batchnorm_in_place():
    model = _Net()
    with torch.no_grad():
        model.norm.weight.fill_(2.0)
        model.norm.running_mean.fill_(0.5)

    converted = _two_process_strategy().convert_sync_batchnorm(model)

    assert converted is model and model.marker == "kept"
    assert isinstance(model.norm, nn.SyncBatchNorm) and isinstance(model.body[1], nn.SyncBatchNorm)
    assert model.norm.weight.tolist() == [2.0] * 3 and model.norm.running_mean.tolist() == [0.5] * 3


def test_convert_sync_batchnorm_converts_a_bare_batchnorm_layer():
    layer = nn.BatchNorm1d(4)
    converted = _two_process_strategy().convert_sync_batchnorm(layer)
    assert isinstance(converted, nn.SyncBatchNorm) and converted.num_features == 4


def test_ddp_on_the_cpu_refuses_sync_batchnorm_with_a_message_naming_the_flag():
    strategy = _two_process_strategy()
    model = strategy.convert_sync_batchnorm(_Net())
    with pytest.raises(MisconfigurationException, match=r"`sync_batchnorm=True`.*accelerator='cuda'"):
        strategy.setup_module(model)  # before torch's DDP (and its process group) is reached
