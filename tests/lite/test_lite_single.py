"""Lite on one process: the same numbers as the raw loop, and every method's behaviour."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import LightningLite, Lite, seed_everything
from fulmen.lite.wrappers import LiteDataLoader, LiteModule, LiteOptimizer


def _data(n=64):
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 32, generator=generator), torch.randn(n, 2, generator=generator))


def _model_and_optimizer(seed=1, optimizer=torch.optim.SGD, **kwargs):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))
    return model, optimizer(model.parameters(), lr=0.05, **kwargs)


def _raw_loop(model, optimizer, loader, epochs=2):
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def _lite_loop(lite, model, optimizer, loader, epochs=2):
    model, optimizer = lite.setup(model, optimizer)
    loader = lite.setup_dataloaders(loader)
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            lite.backward(loss)
            optimizer.step()
            losses.append(loss.item())
    return losses, model


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_same_losses_and_bit_equal_weights_as_raw_pytorch(optimizer):
    raw_model, raw_opt = _model_and_optimizer(optimizer=optimizer)
    torch.manual_seed(3)
    raw_losses = _raw_loop(raw_model, raw_opt, DataLoader(_data(), batch_size=8, shuffle=True))

    lite_model, lite_opt = _model_and_optimizer(optimizer=optimizer)
    torch.manual_seed(3)
    lite_losses, wrapped = _lite_loop(
        Lite(accelerator="cpu"), lite_model, lite_opt, DataLoader(_data(), batch_size=8, shuffle=True)
    )
    assert lite_losses == raw_losses
    for raw_p, lite_p in zip(raw_model.parameters(), wrapped.parameters()):
        assert torch.equal(raw_p, lite_p)


@pytest.mark.parametrize(
    ("precision", "param_dtype"),
    [("bf16-mixed", torch.float32), ("64-true", torch.float64), ("bf16-true", torch.bfloat16)],
)
def test_precision_modes_train_on_cpu(precision, param_dtype):
    lite = Lite(accelerator="cpu", precision=precision)
    model, optimizer = _model_and_optimizer()
    losses, wrapped = _lite_loop(lite, model, optimizer, DataLoader(_data(), batch_size=8), epochs=6)
    assert all(p.dtype == param_dtype for p in wrapped.parameters())
    first_epoch, last_epoch = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last_epoch < first_epoch
    out = wrapped(torch.randn(4, 32))
    assert out.dtype == torch.float32  # outputs come back in the default dtype


def test_bf16_mixed_runs_forward_under_autocast():
    lite = Lite(accelerator="cpu", precision="bf16-mixed")
    seen = {}

    class Probe(nn.Linear):
        def forward(self, x):
            out = super().forward(x)
            seen["dtype"] = out.dtype
            return out

    model = lite.setup(Probe(4, 4))
    assert model(torch.randn(2, 4)).dtype == torch.float32
    assert seen["dtype"] == torch.bfloat16
    with lite.autocast():
        assert (torch.randn(2, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16


def test_16_mixed_skips_the_step_on_inf_and_shrinks_the_scale():
    lite = Lite(accelerator="cpu", precision="16-mixed")
    model, optimizer = lite.setup(*_model_and_optimizer())
    before = [p.detach().clone() for p in model.parameters()]
    scale = lite.strategy.precision.scaler.get_scale()
    loss = model(torch.full((2, 32), float("inf"))).sum()
    lite.backward(loss)
    optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert lite.strategy.precision.scaler.get_scale() < scale


def test_setup_forms_and_wrappers():
    lite = LightningLite(accelerator="cpu")
    model, optimizer = _model_and_optimizer()
    wrapped_model, wrapped_opt = lite.setup(model=model, optimizers=optimizer)  # the seed's keyword form
    assert isinstance(wrapped_model, LiteModule) and isinstance(wrapped_opt, LiteOptimizer)
    assert isinstance(wrapped_opt, torch.optim.SGD)
    assert wrapped_model.module is model
    assert list(wrapped_model.state_dict()) == list(model.state_dict())  # no wrapper prefix
    assert getattr(wrapped_model, "0") is model[0]  # attribute access reaches the user's module
    with pytest.raises(ValueError, match="already set up"):
        lite.setup(wrapped_model)

    scheduler = torch.optim.lr_scheduler.StepLR(wrapped_opt, step_size=1, gamma=0.5)
    wrapped_opt.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)

    module_only = lite.setup_module(nn.Linear(2, 2))
    opt_only = lite.setup_optimizers(torch.optim.SGD(module_only.parameters(), lr=0.1))
    assert isinstance(module_only, LiteModule) and isinstance(opt_only, LiteOptimizer)


def test_setup_dataloaders_moves_batches_and_accepts_the_older_keyword():
    lite = Lite(accelerator="cpu")
    loader = DataLoader(_data(16), batch_size=4)
    first, second = lite.setup_dataloaders(loader, loader, replace_sampler=False)
    assert isinstance(first, LiteDataLoader) and len(first) == 4
    x, y = next(iter(second))
    assert x.device == lite.device
    with pytest.raises(TypeError, match="Accepted: a torch DataLoader"):
        lite.setup_dataloaders([1, 2, 3])


def test_clip_gradients_by_norm_and_value():
    lite = Lite(accelerator="cpu")
    model, optimizer = lite.setup(*_model_and_optimizer())
    lite.backward(model(torch.randn(8, 32)).pow(2).sum() * 100)
    norm = lite.clip_gradients(model, optimizer, max_norm=1.0)
    assert norm > 1.0
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(1.0, rel=1e-4)
    lite.clip_gradients(model, optimizer, clip_val=0.01)
    assert all(p.grad.abs().max() <= 0.01 for p in model.parameters())
    with pytest.raises(ValueError, match="exactly one of `clip_val` and `max_norm`"):
        lite.clip_gradients(model, optimizer)


def test_single_process_collectives_and_properties(capsys):
    lite = Lite(accelerator="cpu")
    ranks = (lite.world_size, lite.global_rank, lite.local_rank, lite.node_rank, lite.is_global_zero)
    assert ranks == (1, 0, 0, 0, True)
    assert lite.device == torch.device("cpu")
    # One process: the tensor comes back as it is, without a leading world-size dimension (as Fabric).
    assert lite.all_gather(torch.tensor([1.0, 2.0])).shape == (2,)
    assert torch.equal(lite.all_reduce(torch.tensor(3.0), reduce_op="sum"), torch.tensor(3.0))
    assert lite.broadcast({"a": 1}) == {"a": 1}
    lite.barrier()
    # A list of per-batch losses stays a list; stacking it gives the mean over every batch.
    losses = [torch.tensor(1.0), torch.tensor(3.0)]
    gathered = lite.all_gather(losses)
    assert isinstance(gathered, list) and len(gathered) == 2
    assert torch.stack(gathered).mean() == 2.0
    lite.print("hello from rank zero")
    assert "hello from rank zero" in capsys.readouterr().out


def test_no_backward_sync_on_one_device_is_a_silent_no_op():
    lite = Lite(accelerator="cpu")
    model, _ = lite.setup(*_model_and_optimizer())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lite.no_backward_sync(model):
            lite.backward(model(torch.randn(2, 32)).sum())
    assert all(p.grad is not None for p in model.parameters())


def test_to_device_and_seed_everything():
    lite = Lite(accelerator="cpu")
    batch = {"x": [torch.ones(1)], "y": (torch.zeros(1),)}
    moved = lite.to_device(batch)
    assert moved["x"][0].device == lite.device and isinstance(moved["y"], tuple)
    assert lite.seed_everything(7) == 7
    first = torch.rand(1)
    seed_everything(7)
    assert torch.equal(first, torch.rand(1))


def test_save_and_load_round_trip(tmp_path):
    lite = Lite(accelerator="cpu")
    model, optimizer = lite.setup(*_model_and_optimizer(optimizer=torch.optim.Adam))
    lite.backward(model(torch.randn(4, 32)).sum())
    optimizer.step()
    path = tmp_path / "ckpt" / "state.pt"
    lite.save(path, {"model": model, "optimizer": optimizer, "step": 5})
    expected_weights = copy.deepcopy(model.state_dict())
    expected_opt = copy.deepcopy(optimizer.state_dict())

    fresh_model, fresh_opt = lite.setup(*_model_and_optimizer(seed=9, optimizer=torch.optim.Adam))
    state = {"model": fresh_model, "optimizer": fresh_opt}
    remainder = lite.load(path, state)
    assert remainder == {"step": 5}
    for key, value in expected_weights.items():
        assert torch.equal(fresh_model.state_dict()[key], value)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(expected_opt["state"][0]["exp_avg"])
    # The older argument order of the seed: save(content, path); load(path) returns the dict.
    lite.save(model.state_dict(), tmp_path / "weights.pt")
    assert set(lite.load(tmp_path / "weights.pt")) == set(expected_weights)
    with pytest.raises(KeyError, match="`missing` is in `state`"):
        lite.load(path, {"missing": fresh_model})


class _SubclassLite(Lite):
    def run(self, value):
        return value * 2, self.world_size


def test_subclass_style_runs_in_process_for_one_device():
    assert _SubclassLite(accelerator="cpu").run(21) == (42, 1)


def test_direct_launch_with_function():
    lite = Lite(accelerator="cpu")
    assert lite.launch(lambda lt, x: (lt.global_rank, x), "ok") == (0, "ok")
    with pytest.raises(RuntimeError, match="already called"):
        lite.launch()


def test_base_run_explains_itself():
    with pytest.raises(NotImplementedError, match="override `run`"):
        Lite(accelerator="cpu").run()
